"""`vidlm eval world`: does a trained model simulate the shapes world?

On held-out shapes-world clips (seeds that training never sees, see `heldout_seed`) it measures

- tokenizer PSNR / SSIM (encode -> decode);
- t2v prompt alignment: the colour and shape detected in the generated frames against the
  caption's (`color_accuracy`, `shape_accuracy`);
- extend forward / backward and connect: the mean distance (pixels) between the object centre
  detected in each generated frame and the ground-truth path, next to two baselines computed from
  the known frames: copy the last known frame, and constant-velocity extrapolation;
  `*_error_ratio` = the model's error / the copy-last baseline's (lower is better);
  `errors_px_by_frame` the same errors per generated frame, in time order (does the model follow
  the motion for a frame or two, then lose it?);
- identity: the fraction of generated frames (extend, connect) whose detected colour and shape
  equal the known object's;
- t2i: the fraction of images whose detected object has the caption's colour and shape
  (`t2i_accuracy`); i2v: the fraction of generated frames (after the given first frame) in which
  the given object is found, colour and shape (`i2v_identity`);
- loop: the seam score of `vidlm generate loop` (`vidlm.pipeline.seam_score`, 1.0 = the seam
  looks like any other frame step).

The world-model metrics use clips with one object and no occluding bar, so that "the object"
is well defined; the detector is `vidlm.data.synthetic.detect_objects`, and its accuracy on the
ground-truth frames is reported beside the model's (`detector_*_on_truth`): it bounds what the
metrics can show. So does its accuracy on the tokenizer's reconstructions of the same clips
(`detector_*_on_reconstruction`): an object the tokenizer cannot code, no LM can generate. A
generated frame with no detectable object counts as a guess at the frame centre (error) and as
a mismatch (identity); `detection_rate` is the fraction of generated frames with one, and
`detected_by_frame` that fraction per generated frame of each extend / connect task.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from vidlm.config import parse_size
from vidlm.data.encode import to_uint8
from vidlm.data.refine import free_prompt, refine_shapes

EVAL_SEED_BASE = 2**32
"""Held-out clip seeds start here. Training clips come from `synth_shards`, whose clip seeds are
`clip_seed(seed, index)`, a uint32 (< 2**32): the two ranges never meet, whatever the seeds."""

TARGETS = {  # metric: (comparison, target) of the shipped shapes-demo weights
    "tokenizer_psnr": (">=", 32.0), "detector_color_accuracy_on_reconstruction": (">=", 0.98),
    "detector_shape_accuracy_on_reconstruction": (">=", 0.95),
    "color_accuracy": (">=", 0.95), "shape_accuracy": (">=", 0.90),
    "t2i_accuracy": (">=", 0.95), "i2v_identity": (">=", 0.95),
    "forward_error_ratio": ("<=", 0.3), "backward_error_ratio": ("<=", 0.5),
    "connect_error_ratio": ("<=", 0.5), "identity": (">=", 0.98), "loop_seam": ("<=", 1.2),
    "detection_rate": (">=", 0.98),
}

EXAMPLES = """\
examples:
  vidlm eval world --model shapes-demo
  vidlm eval world --model runs/demo/model --num 32 --seed 1 --out runs/demo/eval.json

--model is a folder holding tokenizer/, text/ and lm/ (as `vidlm demo` writes in OUT/model),
or the name of shipped weights. Clips are synthesized from held-out seeds (>= 2**32), never
the seeds of training shards. Targets are those of the demo preset.
"""


# ----------------------------------------------------------------------------- held-out clips
def heldout_seed(seed: int, index: int) -> int:
    """The render seed of held-out clip `index` of evaluation seed `seed` (always >= 2**32)."""
    from vidlm.data.synthetic import clip_seed

    return EVAL_SEED_BASE + clip_seed(seed, index)


def heldout_clips(num: int, seed: int = 0, *, single: bool = True, width: int = 64, height: int = 64,
                  frames: int = 17, fps: float = 8.0) -> list[tuple]:
    """`num` held-out clips [(video (C,T,H,W) float in [-1,1], caption, world)]; `single` keeps
    only clips with one object and no bar."""
    from vidlm.data.synthetic import render_clip

    out, index = [], 0
    while len(out) < num:
        video, caption, world = render_clip(heldout_seed(seed, index), width=width, height=height,
                                            frames=frames, fps=fps)
        index += 1
        if single and (len(world["objects"]) != 1 or world["bar"] is not None):
            continue
        out.append((to_tensor(video), caption, world))
    return out


def to_tensor(video_u8: np.ndarray):
    """(T,H,W,3) uint8 -> (C,T,H,W) float in [-1,1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(video_u8)).permute(3, 0, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------------------- detection
def observe(video, background: str | None = None) -> list[dict | None]:
    """Per frame of (C,T,H,W), the largest detected object (colour, shape, centre) or None."""
    from vidlm.data.synthetic import detect_objects

    out = []
    for frame in to_uint8(video):
        objs = detect_objects(frame, background=background)
        out.append(max(objs, key=lambda o: o["pixels"]) if objs else None)
    return out


def majority(values: list) -> object:
    values = [v for v in values if v is not None]
    return max(set(values), key=values.count) if values else None


def centre_errors(seen: list[dict | None], truth: list, size: tuple[int, int]) -> list[float]:
    """Distance from each detected centre to the true one; a missing object guesses the centre."""
    w, h = size
    guess = ((w - 1) / 2, (h - 1) / 2)
    return [math.dist(o["centre"] if o else guess, t) for o, t in zip(seen, truth)]


def baseline_errors(path: list, known: list[int], targets: list[int]) -> tuple[list[float], list[float]]:
    """Errors of the two baselines on frames `targets`, from the true centres of frames `known`:
    copy the known frame nearest in time, or extrapolate it with the constant velocity of the
    two known frames nearest to it (forward or backward in time, whichever way the target lies)."""
    copy, const = [], []
    for j in targets:
        near = min(known, key=lambda k: abs(k - j))
        step = 1 if j > near else -1
        prev = near - step if near - step in known else near
        c, v = np.asarray(path[near], float), np.asarray(path[near], float) - np.asarray(path[prev], float)
        copy.append(math.dist(c, path[j]))
        const.append(math.dist(c + abs(j - near) * v, path[j]))
    return copy, const


def latent_frames_span(k0: int, k1: int, f: int) -> range:
    """Frames decoded from latent frames [k0, k1) of a causal tokenizer with time factor f:
    latent 0 is frame 0, latent k >= 1 is frames f(k-1)+1 .. fk."""
    start = 0 if k0 == 0 else f * (k0 - 1) + 1
    return range(start, f * (k1 - 1) + 1)


def verdict(video, obj: dict, background: str | None) -> tuple[bool, bool]:
    """Whether the colour and the shape the detector reads most often in the frames of video
    (C,T,H,W) are the object's (background None: read from the frames)."""
    found = observe(video, background)
    return (majority([o and o["colour"] for o in found]) == obj["colour"],
            majority([o and o["shape"] for o in found]) == obj["shape"])


def identity_matches(seen: list[dict | None], colour: str, shape: str) -> list[bool]:
    return [bool(o and o["colour"] == colour and o["shape"] == shape) for o in seen]


# ----------------------------------------------------------------------------- metrics
def psnr_ssim(original, recon) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over the frames of two (C,T,H,W) videos in [-1,1]."""
    from vidlm.tokenizer.metrics import psnr, ssim

    return float(psnr(recon[None], original[None])), float(ssim(recon[None], original[None]))


def clip_metrics(gen, video, caption: str, world: dict, *, known: int, frames: int, size: tuple[int, int],
                 opts: dict) -> dict[str, list]:
    """Every measurement on one held-out clip: {name: [values]} (errors per generated frame)."""
    import torch

    from vidlm.pipeline import seam_score

    obj, bg = world["objects"][0], world["background"]
    path = [tuple(c) for c in obj["centres"]]
    r: dict[str, list] = {}
    add = lambda key, values: r.setdefault(key, []).extend(values)

    with torch.inference_mode():
        recon = gen.decode(gen.encode(video)).cpu()
    p, s = psnr_ssim(video, recon)
    add("psnr", [p])
    add("ssim", [s])
    # The detector on the truth checks the detector; on the tokenizer's reconstruction it bounds
    # what any LM sampling through this tokenizer can score; on t2v it is prompt alignment.
    t2v = gen.t2v(caption, frames=frames, size=size, **opts).video.cpu()
    for prefix, clip in (("det_", video), ("rec_", recon), ("", t2v)):
        colour_ok, shape_ok = verdict(clip, obj, bg)
        add(prefix + "colour_ok", [colour_ok])
        add(prefix + "shape_ok", [shape_ok])

    # free prompts ("a pink ball heading up and left"), as given and refined into the grammar
    free = free_prompt(obj, opts.get("seed", 0))
    for key, text in (("free_", free), ("refined_", refine_shapes(free, opts.get("seed", 0)).caption)):
        colour_ok, shape_ok = verdict(gen.t2v(text, frames=frames, size=size, **opts).video.cpu(), obj, None)
        add(key + "colour_ok", [colour_ok])
        add(key + "shape_ok", [shape_ok])

    image = gen.t2i(caption, size=size, **opts).video.cpu()
    add("t2i", identity_matches(observe(image, bg), obj["colour"], obj["shape"]))
    i2v = gen.i2v(video[:, 0], caption, frames=frames, **opts).video.cpu()
    add("i2v", identity_matches(observe(i2v[:, 1:], bg), obj["colour"], obj["shape"]))

    # Known segments are stand-alone clips of `known` frames (tk latent frames each) at the start
    # and/or the end of a t-latent grid; the generated latent frames decode to the frames `span`.
    f = gen.time_factor
    t, tk = 1 + (frames - 1) // f, 1 + (known - 1) // f
    head, tail = video[:, :known], video[:, -known:]
    cases = {
        "fwd": (lambda: gen.extend(head, direction="forward", frames=frames, text=caption, **opts),
                latent_frames_span(tk, t, f), range(known)),
        "bwd": (lambda: gen.extend(tail, direction="backward", frames=frames, text=caption, **opts),
                latent_frames_span(0, t - tk, f), range(frames - known, frames)),
        "con": (lambda: gen.connect(head, tail, frames=frames, text=caption, **opts),
                latent_frames_span(tk, t - tk, f), [*range(known), *range(frames - known, frames)]),
    }
    for key, (run, span, given) in cases.items():
        seen = observe(run().video.cpu()[:, span.start:span.stop], bg)
        add(key, centre_errors(seen, [path[j] for j in span], size))
        add(key + "_detected", [o is not None for o in seen])
        copy, const = baseline_errors(path, list(given), list(span))
        add(key + "_copy", copy)
        add(key + "_const", const)
        add("identity", identity_matches(seen, obj["colour"], obj["shape"]))
    # a stronger reference for connect: linear interpolation between head and tail
    a, b = np.asarray(path[known - 1]), np.asarray(path[frames - known])
    gap = frames - 2 * known + 1
    add("con_lerp", [math.dist(a + (b - a) * (j - known + 1) / gap, path[j]) for j in cases["con"][1]])

    add("seam", [seam_score(gen.loop(caption, frames=frames, size=size, **opts).video.cpu())])
    return r


def evaluate(gen, *, num: int = 16, seed: int = 0, known: int = 5, frames: int = 17,
             size: tuple[int, int] = (64, 64), sampling: dict | None = None, progress: bool = True) -> dict:
    """Every metric of the module doc on `num` held-out clips, for a `VideoGenerator`."""
    from vidlm.lm.prior import effective_weight
    from vidlm.logging import progress_bar

    sampling = dict(sampling or {})
    w, h = size
    started = time.time()
    r: dict[str, list] = {}
    clips = heldout_clips(num, seed, width=w, height=h, frames=frames)
    for i, (video, caption, world) in enumerate(progress_bar(clips, desc="eval world", unit="clip", disable=not progress)):
        opts = dict(sampling, seed=seed * 100_003 + i)
        for key, values in clip_metrics(gen, video, caption, world, known=known, frames=frames, size=size,
                                        opts=opts).items():
            r.setdefault(key, []).extend(values)

    mean = lambda k: float(np.mean(r[k])) if r.get(k) else float("nan")
    extends = (("forward", "fwd"), ("backward", "bwd"), ("connect", "con"))  # (report name, clip_metrics key)
    by_frame = lambda k: np.asarray(r[k]).reshape(num, -1).mean(0).round(2).tolist()  # every clip: the same frames
    report = {
        "tokenizer_psnr": mean("psnr"), "tokenizer_ssim": mean("ssim"),
        "color_accuracy": mean("colour_ok"), "shape_accuracy": mean("shape_ok"),
        "t2i_accuracy": mean("t2i"), "i2v_identity": mean("i2v"),
        "forward_error_ratio": mean("fwd") / mean("fwd_copy"),
        "backward_error_ratio": mean("bwd") / mean("bwd_copy"),
        "connect_error_ratio": mean("con") / mean("con_copy"),
        "identity": mean("identity"), "loop_seam": mean("seam"),
        "loop_seam_median": float(np.median(r["seam"])),
        "errors_px": {
            "forward": {"model": mean("fwd"), "copy_last": mean("fwd_copy"), "const_velocity": mean("fwd_const")},
            "backward": {"model": mean("bwd"), "copy_last": mean("bwd_copy"), "const_velocity": mean("bwd_const")},
            "connect": {"model": mean("con"), "copy_last": mean("con_copy"), "const_velocity": mean("con_const"),
                        "linear_interpolation": mean("con_lerp")},
        },
        "errors_px_by_frame": {task: {"model": by_frame(k), "copy_last": by_frame(k + "_copy"),
                                      "const_velocity": by_frame(k + "_const")}
                               for task, k in extends},
        "detection_rate": float(np.mean([d for _, k in extends for d in r[k + "_detected"]])),
        "detected_by_frame": {task: by_frame(k + "_detected") for task, k in extends},
        "detector_color_accuracy_on_truth": mean("det_colour_ok"),
        "detector_shape_accuracy_on_truth": mean("det_shape_ok"),
        "detector_color_accuracy_on_reconstruction": mean("rec_colour_ok"),
        "detector_shape_accuracy_on_reconstruction": mean("rec_shape_ok"),
        "free_prompt": {"color_accuracy": mean("free_colour_ok"), "shape_accuracy": mean("free_shape_ok"),
                        "refined_color_accuracy": mean("refined_colour_ok"),
                        "refined_shape_accuracy": mean("refined_shape_ok")},
        "settings": {"num": num, "seed": seed, "frames": frames, "known_frames": known,
                     "size": list(size), "sampling": sampling, "seconds": round(time.time() - started, 1),
                     "prior_weight": effective_weight(getattr(gen, "prior", None), sampling.get("prior_weight"))},
    }
    report["targets"] = {k: {"target": f"{op} {v}", "pass": bool(report[k] >= v if op == ">=" else report[k] <= v)}
                         for k, (op, v) in TARGETS.items()}
    return report


def format_table(report: dict) -> str:
    rows = []
    names = {"tokenizer_psnr": "tokenizer PSNR (dB)",
             "detector_color_accuracy_on_reconstruction": "detector colour on reconstructions",
             "detector_shape_accuracy_on_reconstruction": "detector shape on reconstructions",
             "color_accuracy": "t2v colour accuracy", "shape_accuracy": "t2v shape accuracy",
             "t2i_accuracy": "t2i prompted object found", "i2v_identity": "i2v given object kept",
             "forward_error_ratio": "extend-forward error / copy-last",
             "backward_error_ratio": "extend-backward error / copy-last",
             "connect_error_ratio": "connect error / copy-last", "identity": "identity",
             "loop_seam": "loop seam score", "detection_rate": "generated frames with an object"}
    for key, name in names.items():
        t = report["targets"][key]
        rows.append((name, report[key], f"{t['target']:<7} {'ok' if t['pass'] else 'MISSED'}"))
    rows.insert(1, ("tokenizer SSIM", report["tokenizer_ssim"], ""))
    lines = [f"{'metric':<36} {'value':>8}  target", "-" * 60]
    lines += [f"{n:<36} {v:>8.3f}  {t}" for n, v, t in rows]
    lines.append("")
    lines.append(f"{'centre error (px)':<20} {'model':>8} {'copy-last':>10} {'const-vel':>10}")
    for task, e in report["errors_px"].items():
        lines.append(f"{task:<20} {e['model']:>8.2f} {e['copy_last']:>10.2f} {e['const_velocity']:>10.2f}")
    lines.append(f"generated frames with a detected object (extend, connect): {report['detection_rate']:.3f} "
                 "(a frame without one counts the canvas centre as its guess)")
    f = report["free_prompt"]
    lines.append(f"t2v on free prompts (\"a pink ball heading left\"): colour {f['color_accuracy']:.3f}, shape "
                 f"{f['shape_accuracy']:.3f}; refined (--refine): colour {f['refined_color_accuracy']:.3f}, "
                 f"shape {f['refined_shape_accuracy']:.3f}")
    lines.append(f"detector on the ground truth: colour {report['detector_color_accuracy_on_truth']:.3f}, "
                 f"shape {report['detector_shape_accuracy_on_truth']:.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidlm eval", description="World-simulation evaluation.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="evaluate a model on held-out shapes-world clips", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--model", required=True, help="folder with tokenizer/, text/, lm/ or a shipped name")
    w.add_argument("--num", type=int, default=16, help="held-out clips (default 16)")
    w.add_argument("--seed", type=int, default=0, help="which held-out clips and sampling seeds")
    w.add_argument("--out", type=Path, help="write the report as JSON here")
    w.add_argument("--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT of the clips (default 64x64)")
    w.add_argument("--frames", type=int, default=17, help="frames per clip, 1+4k (default 17)")
    w.add_argument("--known", type=int, default=5, help="frames given to extend/connect, 1+4k (default 5)")
    w.add_argument("--temperature", type=float, default=1.0)
    w.add_argument("--top-k", type=int, default=None)
    w.add_argument("--cfg-text", type=float, default=1.0)
    w.add_argument("--cfg-visual", type=float, default=1.0)
    w.add_argument("--prior-weight", type=float, default=None,
                   help="weight of the model's frame prior (default its own; 0 = the LM alone)")
    w.add_argument("--device", default="cpu")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.num < 1:
        raise SystemExit("vidlm eval world: --num must be at least 1")
    from vidlm.pipeline import VideoGenerator

    gen = VideoGenerator.from_pretrained(args.model, device=args.device)
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "cfg_text": args.cfg_text,
                "cfg_visual": args.cfg_visual, "prior_weight": args.prior_weight}
    f = gen.time_factor
    if (args.frames - 1) % f or (args.known - 1) % f or 1 + 2 * ((args.known - 1) // f + 1) > 1 + (args.frames - 1) // f:
        raise SystemExit(f"vidlm eval world: --frames and --known must be 1+{f}k, with room for a generated "
                         f"latent frame between a head and a tail of --known frames (e.g. --frames 17 --known 5)")
    report = evaluate(gen, num=args.num, seed=args.seed, known=args.known, frames=args.frames,
                      size=args.size, sampling=sampling)
    report["settings"]["model"] = str(args.model)
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm eval"))
