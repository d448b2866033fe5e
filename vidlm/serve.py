"""`vidlm serve`: a local web app with one tab per task, whose functions are also an API.

    pip install "vidlm[serve]"                     # Gradio (./run.sh installs it)
    vidlm serve --model shapes-demo                # http://127.0.0.1:7860

    from gradio_client import Client, handle_file  # the same functions from a script
    result, files, info = Client("http://127.0.0.1:7860/").predict(
        "a red circle moves right", 17, "64x64", 0, 1.0, 0, 1.0, 3.0, 1.0, False, api_name="/t2v")

Every tab calls `answer`, which reads the uploads and runs `vidlm.generate.run_task` on a
`VideoGenerator`, exactly as `vidlm generate` does: no second copy of the task logic. Requests
run one at a time (a CPU samples one clip at a time; the rest wait in Gradio's queue), with a
progress bar per latent frame; "Cancel" stops the running request of that page at its next code
and frees the worker. Uploads, examples and results live in one temporary folder, the only
files the server serves; it listens on 127.0.0.1 unless --host says otherwise.
"""


import argparse
import inspect
import itertools
import math
import os
import shutil
import tempfile
import threading
import time
from argparse import Namespace
from pathlib import Path

from vidlm.generate import read_input, run_task, side_by_side

EXAMPLES = """\
examples:
  vidlm serve --model shapes-demo                       # http://127.0.0.1:7860
  vidlm serve --model shapes-demo --port 8080 --examples ../clips
  vidlm serve --model runs/demo/model --host 0.0.0.0    # reachable from other machines

--host 0.0.0.0 lets anyone who can reach this machine use the model (and its CPU); nothing
else is exposed: the server reads only its model and serves only files in its own temporary
folder (uploads, examples, results), which it deletes on exit.
"""

FIELDS = {  # what each tab asks for, in order (the API's positional arguments, then ADVANCED)
    "t2v": ("prompt", "frames", "size"),
    "t2i": ("prompt", "size"),
    "i2v": ("image", "prompt", "frames", "size"),
    "extend": ("video", "direction", "input_frames", "frames", "size", "prompt"),
    "connect": ("video", "video_b", "input_frames", "frames", "size", "prompt"),
    "loop": ("prompt", "video", "input_frames", "frames", "size"),
    "edit": ("video", "prompt", "input_frames", "size"),
    "long": ("prompt", "video", "input_frames", "seconds", "size"),
}
ADVANCED = ("seed", "temperature", "top_k", "top_p", "cfg_text", "cfg_visual", "refine")
UPLOADS = ("image", "video", "video_b")
FPS = 8.0


class Cancelled(Exception):
    """Raised inside sampling when the page's Cancel was pressed."""


def sizes(gen, factor_multiples=(4, 6, 8, 12, 16)) -> list[str]:
    """Sizes "WxH" (aspect 1:2 .. 2:1) whose two-latent-frame t2v fits the model's context."""
    from vidlm.lm.sample import context_length

    s, ctx = gen.space_factor, context_length(gen.lm)
    out = set()
    for w in factor_multiples:
        for h in factor_multiples:
            if max(w, h) <= 2 * min(w, h):
                try:
                    grid = gen.latent_size((w * s, h * s))
                except ValueError:
                    continue
                if gen._need("t2v", (2, *grid), "x", []) <= ctx:
                    out.add((w * s, h * s))
    return [f"{w}x{h}" for w, h in sorted(out, key=lambda wh: (wh[0] * wh[1], wh))]


def check_upload(path: str | None, what: str, limit_mb: float) -> str:
    """The path of a usable upload, or a ValueError saying what is wrong with it."""
    if not path:
        raise ValueError(f"{what}: nothing uploaded; drop a file or pick an example")
    size = Path(path).stat().st_size
    if size == 0:
        raise ValueError(f"{what}: the file {Path(path).name} is empty (0 bytes)")
    if size > limit_mb * 2**20:
        raise ValueError(f"{what}: the file is {size / 2**20:.0f} MB; the limit is {limit_mb:g} MB")
    return path


def answer(gen, task: str, values: dict, out_dir: Path, *, progress=None, limit_mb: float = 200) -> dict:
    """Run one request: `values` holds FIELDS[task] + ADVANCED. Returns {"result": png/mp4,
    "compare": input | output mp4 or None, "codes": .npy of the (t,h,w) codes, "info": {...}}."""
    import numpy as np

    from vidlm.config import parse_size
    from vidlm.data.encode import write_video
    from vidlm.data.refine import refine_shapes
    from vidlm.data.video import VideoDecodeError
    from vidlm.pipeline import seam_score

    v = {k: values.get(k) for k in {*sum(FIELDS.values(), ()), *ADVANCED}}
    size = parse_size(v["size"]) if v["size"] else None
    frames = int(v["input_frames"] or 5)
    inputs = []
    for name in UPLOADS:
        if name in FIELDS[task] and (v[name] or task not in ("loop", "long")):
            what = {"image": "image", "video": "video", "video_b": "second video"}[name]
            path = check_upload(v[name], what, limit_mb)
            try:
                inputs.append(read_input(path, None if name == "image" else frames, FPS, size, gen.time_factor))
            except (VideoDecodeError, OSError) as e:  # named by the file's own name, not the server's path
                kind = "an image (png, jpg)" if name == "image" else "a video (mp4, webm, mov, avi)"
                raise ValueError(f"{what} {Path(path).name}: not readable as {kind} "
                                 f"({getattr(e, 'reason', type(e).__name__)})") from None
    args = Namespace(task=task, prompt=(v["prompt"] or "").strip() or None, size=size,
                     frames=int(v["frames"] or 17), direction=v["direction"] or "forward",
                     seconds=float(v["seconds"] or 4.0), fps=FPS, seed=int(v["seed"] or 0),
                     temperature=float(v["temperature"] if v["temperature"] is not None else 1.0),
                     top_k=int(v["top_k"]) if v["top_k"] else None,
                     top_p=float(v["top_p"]) if v["top_p"] and float(v["top_p"]) < 1 else None,
                     cfg_text=float(v["cfg_text"] or 1.0), cfg_visual=float(v["cfg_visual"] or 1.0),
                     progress=progress or False)
    gen.refine, gen.refined = (refine_shapes if v["refine"] else None), None
    start = time.perf_counter()
    out, shown = run_task(gen, args, inputs)
    seconds = time.perf_counter() - start
    video = out.video.clamp(-1, 1).cpu()
    folder = Path(tempfile.mkdtemp(prefix=f"{task}-", dir=out_dir))
    result = write_video(folder / ("image.png" if task == "t2i" else "video.mp4"), video, fps=FPS)
    compare = None
    if shown is not None:
        compare = write_video(folder / "input_output.mp4", side_by_side(shown.to(video), video), fps=FPS)
    codes = folder / "codes.npy"
    np.save(codes, out.codes.cpu().numpy())
    info = {"task": task, "frames": int(video.shape[1]), "size": f"{video.shape[3]}x{video.shape[2]}",
            "seconds": round(seconds, 2), "caption": gen.refined.caption if gen.refined else args.prompt}
    if task == "loop":
        info["seam"] = round(seam_score(video), 3)
    return {"result": str(result), "compare": compare and str(compare), "codes": str(codes), "info": info}


# ---------------------------------------------------------------------------------- the page
def example_inputs(folder: Path, extra: list[str], *, num: int = 4) -> tuple[list[str], list[str]]:
    """(captions, example clips): shapes-world clips rendered now (as mp4), plus the first
    seconds of up to `num` videos from `extra` folders (the gallery's real clips, say)."""
    from vidlm.data.encode import write_video
    from vidlm.data.synthetic import clip_seed, render_clip

    folder.mkdir(parents=True, exist_ok=True)
    captions, clips = [], []
    for i in range(num):
        video, caption, _ = render_clip(clip_seed(1234, i), width=64, height=64, frames=17)
        captions.append(caption)
        clips.append(str(write_video(folder / f"shapes-{i}.mp4", video, fps=FPS)))
    if extra:
        from vidlm.data.shards import find_videos
        from vidlm.data.video import read_clip

        for path in find_videos(extra)[:num]:
            try:
                clip = read_clip(path, 17, fps=FPS)
            except (OSError, RuntimeError, ValueError):
                continue  # an unreadable example is left out, not fatal
            clips.append(str(write_video(folder / f"{Path(path).stem}.mp4", clip, fps=FPS)))
    return captions, clips


def build_app(gen, *, work_dir: Path | None = None, extra_examples: list[str] = (), limit_mb: float = 200):
    """The Gradio Blocks: one tab per task; each tab's Run is the API endpoint /TASK. Examples
    and results go to `work_dir` (default: a new temporary folder)."""
    import gradio as gr

    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="vidlm-serve-"))

    size_choices = sizes(gen)
    tf = gen.time_factor
    default_frames = 1 + 16 // tf * tf
    default_size = "64x64" if "64x64" in size_choices else max(  # else the largest square 17 frames fit in
        (s for s in size_choices if _square(s) and _fits(gen, s, default_frames)), key=_square, default=size_choices[0])
    captions, clips = example_inputs(work_dir / "examples", list(extra_examples))
    images = [str(p) for p in _first_frames(clips, work_dir / "examples")]
    free = ["a red ball going right", "blue box", "a small green triangle falling on white"]
    lock, flags = threading.Lock(), {}

    def field(name: str, task: str):
        frames_kw = {"minimum": 1 + tf, "maximum": 1 + 16 * tf, "step": tf}
        return {
            "prompt": lambda: gr.Textbox(label="prompt", placeholder=captions[0],
                                         info="optional" if task in ("i2v", "extend", "connect") else None),
            "image": lambda: gr.Image(label="first frame", type="filepath", sources=["upload"], height=240),
            "video": lambda: gr.Video(label="video" if task != "connect" else "first clip", sources=["upload"],
                                      height=240),
            "video_b": lambda: gr.Video(label="second clip", sources=["upload"], height=240),
            "direction": lambda: gr.Radio(["forward", "backward"], value="forward", label="direction"),
            "input_frames": lambda: gr.Slider(1, 1 + 8 * tf, value=1 + tf * (4 // tf or 1), step=tf,
                                              label="frames kept from each input"),
            "frames": lambda: gr.Slider(value=default_frames, label="frames of the output", **frames_kw),
            "seconds": lambda: gr.Slider(1, 120, value=4, step=0.5, label="seconds"),
            "size": lambda: gr.Dropdown(size_choices, value=default_size, label="size (W x H)", allow_custom_value=True),
        }[name]()

    def advanced():
        with gr.Accordion("advanced", open=False):
            return [gr.Number(0, label="seed", precision=0),
                    gr.Slider(0, 2, value=1.0, step=0.05, label="temperature (0 = greedy)"),
                    gr.Number(0, label="top-k (0 = off)", precision=0),
                    gr.Slider(0.05, 1, value=1.0, step=0.05, label="top-p (1 = off)"),
                    gr.Slider(1, 8, value=3.0, step=0.5, label="CFG text"),
                    gr.Slider(1, 8, value=1.0, step=0.5, label="CFG visual"),
                    gr.Checkbox(False, label="refine the prompt into the training captions' style")]

    def handler(task: str):
        def run(request: gr.Request, *args):  # Gradio passes (request, *FIELDS[task], *ADVANCED, progress)
            *values, progress = args
            flag = flags.setdefault(request.session_hash if request else "", threading.Event())
            flag.clear()
            per = None

            def report(done: int, total: int):
                if flag.is_set():
                    raise Cancelled
                nonlocal per
                if per is None:  # codes per latent frame: the grid of the output size
                    w, h = (int(x) for x in (values[FIELDS[task].index("size")] or default_size).split("x"))
                    per = math.prod(gen.latent_size((w, h)))
                if done % per == 0 or done == total:
                    progress((done // per, -(-total // per)), desc="latent frames", unit="latent frames")

            with lock:
                try:
                    out = answer(gen, task, dict(zip(FIELDS[task] + ADVANCED, values)), work_dir,
                                 progress=report, limit_mb=limit_mb)
                except Cancelled:
                    raise gr.Error("cancelled; the worker is free") from None
                except (ValueError, FileNotFoundError, RuntimeError) as e:  # bad input: said in the page
                    raise gr.Error(f"{task}: {e}") from None
            files = [out["result"], out["codes"]]
            return (out["result"], *([out["compare"]] if has_input(task) else []), files, out["info"])
        run.__name__ = task  # the API's names: /TASK(prompt=..., frames=..., ...)
        named = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in FIELDS[task] + ADVANCED]
        run.__signature__ = inspect.Signature([inspect.signature(run).parameters["request"], *named, inspect.Parameter(
            "progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())])
        return run

    def cancel(request: gr.Request):
        flags.setdefault(request.session_hash if request else "", threading.Event()).set()

    with gr.Blocks(title="vidlm") as app:
        gr.Markdown("# vidlm\nAutoregressive video generation: every task is *some frames are known, "
                    "generate the rest*. Requests run one at a time on this machine.")
        for task, names in FIELDS.items():
            with gr.Tab(task):
                with gr.Row():
                    with gr.Column():
                        inputs = [field(name, task) for name in names]
                        inputs += advanced()
                        with gr.Row():
                            go = gr.Button("Run", variant="primary", elem_id=f"run-{task}")
                            stop = gr.Button("Cancel", elem_id=f"cancel-{task}")
                    with gr.Column():
                        result = (gr.Image(label="result", type="filepath", elem_id=f"result-{task}", height=320)
                                  if task == "t2i" else
                                  gr.Video(label="result", elem_id=f"result-{task}", loop=task == "loop", height=320))
                        outputs = [result]
                        if has_input(task):
                            outputs.append(gr.Video(label="input | output", elem_id=f"compare-{task}", height=240))
                        outputs += [gr.File(label="download (result, codes)", file_count="multiple"),
                                    gr.JSON(label="info", elem_id=f"info-{task}")]
                _examples(gr, task, inputs, captions, free, clips, images)
                event = go.click(handler(task), inputs, outputs, api_name=task, concurrency_id="sampler",
                                 concurrency_limit=1)
                stop.click(cancel, None, None, cancels=[event], queue=False, api_name=f"cancel_{task}",
                           api_visibility="undocumented")
    return app


def _square(size: str) -> int:
    w, h = size.split("x")
    return int(w) if w == h else 0


def _fits(gen, size: str, frames: int) -> bool:
    from vidlm.lm.sample import context_length

    h, w = gen.latent_size(tuple(int(x) for x in size.split("x")))
    return gen._need("t2v", (gen.latent_frames(frames), h, w), "x", []) <= context_length(gen.lm)


def has_input(task: str) -> bool:
    return any(name in FIELDS[task] for name in UPLOADS)


def _first_frames(clips: list[str], folder: Path) -> list[Path]:
    from vidlm.data.encode import write_video
    from vidlm.data.video import read_clip

    return [write_video(folder / f"{Path(c).stem}.png", read_clip(c, 1), fps=FPS) for c in clips]


def _examples(gr, task: str, inputs, captions: list[str], free: list[str], clips: list[str], images: list[str]):
    """One-click examples for a tab: captions of the world (and free prompts) for text tasks,
    rendered and real clips for video tasks."""
    names = FIELDS[task]
    if names[0] == "prompt":
        rows = [[c] for c in captions + free]
        gr.Examples(rows, inputs[:1], label="example prompts")
    elif names[0] == "image":
        gr.Examples([[img] for img in images], inputs[:1], label="example first frames")
    elif names[0] == "video":
        if "video_b" in names:
            gr.Examples([list(pair) for pair in itertools.pairwise(clips)], inputs[:2], label="example clips")
        else:
            gr.Examples([[c] for c in clips], inputs[:1], label="example clips")
    if "video" in names and names[0] != "video":
        gr.Examples([[c] for c in clips], [inputs[names.index("video")]], label="example clips")


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidlm serve", description="A local web app (Gradio) for every task.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-demo", help="folder with tokenizer/, text/, lm/ or a shipped name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--examples", nargs="*", default=[], metavar="DIR", help="folders of example videos")
    p.add_argument("--max-upload-mb", type=float, default=200, help="largest accepted upload (MB)")
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="vidlm-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "gradio")  # uploads and served copies live here too
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('vidlm serve: needs Gradio: pip install "vidlm[serve]"') from None
    from vidlm.pipeline import VideoGenerator

    try:
        gen = VideoGenerator.from_pretrained(args.model, device=args.device)
        app = build_app(gen, work_dir=work_dir, extra_examples=args.examples, limit_mb=args.max_upload_mb)
        app.queue(default_concurrency_limit=1)
        print(f"vidlm serve: {args.model} on http://{args.host}:{args.port}/", flush=True)
        app.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb:g}mb",
                   show_error=True, ssr_mode=False, quiet=True, allowed_paths=[])
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    import sys

    from vidlm.errors import run as run_main

    sys.exit(run_main(main, "vidlm serve"))
