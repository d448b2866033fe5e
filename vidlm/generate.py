"""`vidlm generate TASK`: sample a video (or image) for one task and write it to a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidlm.config import parse_size

TASKS = ("t2v", "t2i", "i2v", "extend", "connect", "loop", "edit", "long")

EXAMPLES = """\
examples:
  vidlm generate t2v --model shapes-demo --prompt "a red circle moves right" --out red.mp4
  vidlm generate t2i --model shapes-demo --prompt "a blue square" --out blue.png
  vidlm generate t2v --model shapes-demo --prompt "a red ball going right" --refine --out ball.mp4
  vidlm generate i2v --model shapes-demo --input first.png --prompt "moves down" --out i2v.mp4
  vidlm generate extend --model shapes-demo --input clip.mp4 --direction backward --out past.mp4
  vidlm generate connect --model shapes-demo --input a.mp4 b.mp4 --frames 17 --out mid.mp4
  vidlm generate loop --model shapes-demo --prompt "a green triangle bounces" --out loop.gif
  vidlm generate edit --model shapes-demo --input clip.mp4 --prompt "a yellow circle" --side-by-side --out edit.mp4
  vidlm generate long --model shapes-demo --prompt "a red circle moves right" --seconds 6 --out long.mp4

--model is a folder with tokenizer/, text/ and lm/ (or the name of shipped weights, e.g.
shapes-demo); --tokenizer / --lm override one part. The output format follows the suffix of
--out: .mp4 (H.264 yuv420p), .gif and .webp (loops), .png (t2i, or a strip of frames).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vidlm generate",
        description="Generate a video for one task with a trained tokenizer + LM.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", required=True, help="folder with tokenizer/, text/, lm/ or a shipped name")
    p.add_argument("--tokenizer", help="video tokenizer folder (overrides MODEL/tokenizer)")
    p.add_argument("--lm", help="LM folder (overrides MODEL/lm)")
    p.add_argument("--prompt", help="the caption")
    p.add_argument("--refine", action="store_true", help="rewrite a free prompt (\"a red ball going right\") "
                   "into the training captions' grammar first, and print what was used")
    p.add_argument("--input", nargs="+", default=[], metavar="FILE",
                   help="input image (i2v), video (extend, loop, edit, long) or two videos (connect)")
    p.add_argument("--input-frames", type=int, default=None,
                   help="frames read from each input video (1+4k; default: as many as fit, up to 9)")
    p.add_argument("--frames", type=int, default=17, help="frames of the output (1+4k), default 17")
    p.add_argument("--size", type=parse_size, default=None, help="WxH, default: the input's or 64x64")
    p.add_argument("--direction", choices=("forward", "backward"), default="forward", help="extend only")
    p.add_argument("--seconds", type=float, default=4.0, help="long only: duration")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of inputs and output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-text", type=float, default=1.0, help="text guidance scale (1 = none)")
    p.add_argument("--cfg-visual", type=float, default=1.0, help="visual-condition guidance scale (1 = none)")
    p.add_argument("--no-speculative", action="store_true",
                   help="plain decoding, one forward pass per code (the default drafts codes from the previous "
                        "latent frame and verifies them in one pass: the same distribution, fewer passes)")
    p.add_argument("--prior-weight", type=float, default=None,
                   help="weight of the LM folder's frame prior (a conv net that knows each frame's step from its two "
                        "neighbours) added to the LM's log-probs; default its own (2), 0 = the LM alone")
    p.add_argument("--verbose", action="store_true", help="print forward passes and the drafts' acceptance")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the LM's decode step (GPU; the first request pays the compile; on "
                        "this project's CPUs it measured slower than eager, see `vidlm bench lm --compile`)")
    p.add_argument("--side-by-side", action="store_true", help="write input | output")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, type=Path, help="FILE.mp4 / .gif / .webp / .png")
    return p


def read_input(path: str, frames: int | None, fps: float, size: tuple[int, int] | None, time_factor: int):
    """An image (C,H,W) or a video (C,T,H,W) in [-1,1], resized/cropped to `size` if given;
    without `frames`, the most the tokenizer codes (1 + time_factor*k) up to 9."""
    import torch

    from vidlm.data.buckets import Bucket, resize_crop
    from vidlm.data.video import probe, read_clip

    if not Path(path).is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp") and frames is None:
        import imageio.v3 as iio

        img = torch.as_tensor(iio.imread(path))[..., :3]
        video = img.permute(2, 0, 1)[:, None].float() / 127.5 - 1  # (C,1,H,W)
    else:
        if frames is None:
            available = probe(path).frames
            frames = 1 + time_factor * max(0, min(available - 1, 8) // time_factor)
        video = read_clip(path, frames, fps=fps)
    if size is not None and (video.shape[-1], video.shape[-2]) != tuple(size):
        video = resize_crop(video, Bucket(width=size[0], height=size[1], frames=video.shape[1]), None)
    return video


def run_task(gen, args, inputs):
    """Call the generator method for args.task (the fields of build_parser; `progress` as
    VideoGenerator takes it, default True); (Generated, the input to show beside it or None).
    `vidlm generate` and `vidlm serve` both run tasks through here."""
    from vidlm.pipeline import SPECULATIVE

    opts = {"seed": args.seed, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "cfg_text": args.cfg_text, "cfg_visual": args.cfg_visual,
            "progress": getattr(args, "progress", True),
            "speculative": 0 if getattr(args, "no_speculative", False) else SPECULATIVE,
            "prior_weight": getattr(args, "prior_weight", None)}
    size = args.size or (tuple(inputs[0].shape[-1:-3:-1]) if inputs else (64, 64))
    if args.task in ("t2v", "t2i", "long", "loop", "edit") and not (args.prompt or "").strip() and not (
            inputs and args.task != "edit"):
        raise ValueError(f"{args.task} needs a prompt" + (" or an input video" if args.task in ("long", "loop") else ""))
    t = args.task
    if t == "t2v":
        out = gen.t2v(args.prompt, frames=args.frames, size=size, **opts)
    elif t == "t2i":
        out = gen.t2i(args.prompt, size=size, **opts)
    elif t == "i2v":
        image = inputs[0][:, 0] if inputs[0].dim() == 4 else inputs[0]
        out = gen.i2v(image, args.prompt, frames=args.frames, **opts)
    elif t == "extend":
        out = gen.extend(inputs[0], direction=args.direction, frames=args.frames, text=args.prompt, **opts)
    elif t == "connect":
        out = gen.connect(inputs[0], inputs[1], frames=args.frames, text=args.prompt, **opts)
    elif t == "loop":
        if inputs:
            out = gen.loop(inputs[0], frames=args.frames, text=args.prompt, **opts)
        else:
            out = gen.loop(args.prompt, frames=args.frames, size=size, **opts)
    elif t == "edit":
        out = gen.edit(inputs[0], args.prompt, **opts)
    else:
        source = inputs[0] if inputs else args.prompt
        out = gen.long(source, seconds=args.seconds, fps=args.fps, size=size, text=args.prompt if inputs else None, **opts)
    return out, (inputs[0] if inputs else None)


def speculation_report(stats: dict) -> str:
    """One line from VideoGenerator.stats: passes per code and the drafts kept, per kind."""
    if "forwards" not in stats:
        return f"plain decoding: {stats.get('tokens', 0)} codes, one forward pass each"
    kinds = ", ".join(f"{kind} {stats['accepted'][kind]}/{n} kept" for kind, n in stats["proposed"].items() if n)
    return (f"speculative decoding: {stats['tokens']} codes in {stats['forwards'] + 1} forward passes "
            f"({stats['tokens'] / (stats['forwards'] + 1):.2f} codes per pass); drafts: {kinds or 'none'}")


def side_by_side(left, right):
    """input | output as one video (C,T,H,W1+W2); the shorter one holds its last frame."""
    import torch

    if left.dim() == 3:
        left = left[:, None]
    frames = max(left.shape[1], right.shape[1])
    pad = lambda v: torch.cat([v, v[:, -1:].expand(-1, frames - v.shape[1], -1, -1)], 1)
    if left.shape[2] != right.shape[2]:
        left = torch.nn.functional.interpolate(left, size=(right.shape[2], right.shape[3]), mode="bilinear")
    return torch.cat([pad(left), pad(right)], 3)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix.lower() not in (".mp4", ".gif", ".webp", ".png"):
        raise SystemExit(f"vidlm generate: --out must end in .mp4, .gif, .webp or .png, got {args.out}")
    need = {"i2v": 1, "extend": 1, "connect": 2, "edit": 1}.get(args.task)
    if len(args.input) != (need if need is not None else min(len(args.input), 1)):
        wanted = need if need is not None else "at most 1"
        raise SystemExit(f"vidlm generate {args.task}: takes {wanted} --input file(s), got {len(args.input)}")
    from vidlm.data.encode import write_video
    from vidlm.pipeline import VideoGenerator, seam_score

    try:
        gen = VideoGenerator.from_pretrained(args.model, tokenizer=args.tokenizer, lm=args.lm, device=args.device,
                                             refine=args.refine, compile=args.compile)
        inputs = [read_input(p, args.input_frames, args.fps, args.size, gen.time_factor) for p in args.input]
        out, shown = run_task(gen, args, inputs)
        video = out.video
    except (FileNotFoundError, ValueError) as e:  # bad paths, sizes, lengths, too long for the context
        print(f"vidlm generate {args.task}: {e}", file=sys.stderr)
        return 2
    if args.task == "loop":
        print(f"loop seam score: {seam_score(video):.3f} (1.0 = the seam looks like any other frame step)")
    if args.side_by_side and shown is not None:
        video = side_by_side(shown.to(video), video)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_video(args.out, video.clamp(-1, 1).cpu(), fps=args.fps)
    if gen.refined is not None:
        filled = ", ".join(f"{k}: {v}" for k, v in gen.refined.filled.items())
        print(f"caption: {gen.refined.caption}" + (f" (not in the prompt, chosen: {filled})" if filled else ""))
    if args.verbose:
        print(speculation_report(gen.stats))
    print(f"wrote {args.out} ({video.shape[1]} frames, {video.shape[3]}x{video.shape[2]})")
    return 0


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm generate"))
