"""The gallery of a model: every task once on the same clips (`generate_all`), a contact sheet
(one row per task) and an HTML page with the GIFs, prompts, inputs and timings. `vidlm demo`
writes it at the end of a run; `--pretrained` writes it for the shipped weights.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Entry:
    """One gallery item: a task, its prompt and inputs, and what the model made."""

    task: str
    prompt: str | None
    inputs: list  # [(label, (C,T,H,W) float in [-1,1])]
    output: Any  # (C,T,H,W) float in [-1,1]
    seconds: float
    note: str = ""


def edited_caption(caption: str) -> str:
    """The caption with its object's colour swapped (shapes world), for the edit task."""
    from vidlm.data.synthetic import COLOURS

    words = caption.split()
    for i, word in enumerate(words):
        if word in COLOURS:
            names = list(COLOURS)
            swap = names[(names.index(word) + 3) % len(names)]
            if swap not in words:
                words[i] = swap
                return " ".join(words)
    return caption


def generate_all(gen, cfg, sources: list[tuple], *, seed: int = 0, progress: bool = True) -> list[Entry]:
    """Every task once, conditioned on `sources` (9 clips with captions); `cfg` is a demo
    recipe (vidlm.demo.DemoConfig: sizes, known frames, sampling)."""
    from vidlm.logging import progress_bar
    from vidlm.pipeline import seam_score

    k, T, size = cfg.known_frames, cfg.frames, cfg.size
    opts = {"seed": seed, "temperature": cfg.temperature, "top_k": cfg.top_k, "cfg_text": cfg.cfg_text}
    (v0, c0), (_, c1), (v2, c2), (v3, c3), (v4, c4), (v5, c5), (_, c6), (v7, c7), (_, c8) = sources[:9]
    edit_prompt = edited_caption(c7)
    jobs = [
        ("t2v", c0, [("a held-out clip with this caption (not given)", v0)],
         lambda: gen.t2v(c0, frames=T, size=size, **opts)),
        ("t2i", c1, [], lambda: gen.t2i(c1, size=size, **opts)),
        ("i2v", c2, [("first frame", v2[:, :1])], lambda: gen.i2v(v2[:, 0], c2, frames=T, **opts)),
        ("extend-forward", c3, [(f"first {k} frames", v3[:, :k])],
         lambda: gen.extend(v3[:, :k], direction="forward", frames=T, text=c3, **opts)),
        ("extend-backward", c4, [(f"last {k} frames", v4[:, -k:])],
         lambda: gen.extend(v4[:, -k:], direction="backward", frames=T, text=c4, **opts)),
        ("connect", c5, [("head", v5[:, :k]), ("tail", v5[:, -k:])],
         lambda: gen.connect(v5[:, :k], v5[:, -k:], frames=T, text=c5, **opts)),
        ("loop", c6, [], lambda: gen.loop(c6, frames=T, size=size, **opts)),
        ("edit", edit_prompt, [(f"source: {c7}", v7)], lambda: gen.edit(v7, edit_prompt, **opts)),
        ("long", c8, [], lambda: gen.long(c8, seconds=cfg.long_seconds, fps=cfg.fps, size=size, **opts)),
    ]
    entries = []
    for task, prompt, inputs, fn in progress_bar(jobs, desc="gallery", unit="task", disable=not progress):
        t0 = time.time()
        video = fn().video.float().cpu().clamp(-1, 1)
        note = f"seam score {seam_score(video):.2f}" if task == "loop" else ""
        entries.append(Entry(task, prompt, inputs, video, time.time() - t0, note))
    return entries


def contact_sheet(entries: list[Entry], *, columns: int = 9):
    """(H, W, 3) uint8: one row per task: its name, the inputs' first frames, `columns` frames of
    the output evenly spread over time."""
    import numpy as np
    from PIL import Image, ImageDraw

    from vidlm.data.encode import to_uint8

    h, w = entries[0].output.shape[-2:]
    label_w, gap = 112, 6
    max_in = max(len(e.inputs) for e in entries)
    width = label_w + max_in * (w + 2) + gap + columns * (w + 2)
    sheet = np.full((len(entries) * (h + 4), width, 3), 200, np.uint8)
    for r, e in enumerate(entries):
        y = r * (h + 4) + 2
        x = label_w
        for _, video in e.inputs:
            sheet[y:y + h, x:x + w] = to_uint8(video)[0]
            x += w + 2
        x = label_w + max_in * (w + 2) + gap
        frames = to_uint8(e.output)
        for t in np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int):
            sheet[y:y + h, x:x + w] = frames[t]
            x += w + 2
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for r, e in enumerate(entries):
        draw.text((4, r * (h + 4) + h // 2 - 6), e.task, fill=(0, 0, 0))
    return np.asarray(img)


def write_gallery(out: Path, entries: list[Entry], fps: float, *, title: str = "vidlm demo") -> Path:
    """OUT/gallery/*.gif (+ inputs), OUT/contact_sheet.png and OUT/index.html."""
    from vidlm.data.encode import write_video

    out = Path(out)
    gal = out / "gallery"
    gal.mkdir(parents=True, exist_ok=True)
    cards = []
    for e in entries:
        still = e.output.shape[1] == 1
        name = f"{e.task}.{'png' if still else 'gif'}"
        write_video(gal / name, e.output, fps)
        ins = []
        for j, (label, video) in enumerate(e.inputs):
            iname = f"{e.task}-input{j}.{'png' if video.shape[1] == 1 else 'gif'}"
            write_video(gal / iname, video, fps)
            ins.append(f'<figure><img src="gallery/{iname}"><figcaption>{html.escape(label)}</figcaption></figure>')
        t, hh, ww = e.output.shape[1:]
        meta = f"{t} frame{'s' * (t > 1)}, {ww}x{hh}, {e.seconds:.1f} s" + (f"; {e.note}" if e.note else "")
        cards.append(
            f'<tr><td><b>{e.task}</b></td><td>{html.escape(e.prompt or "")}</td>'
            f'<td>{"".join(ins) or "&mdash;"}</td>'
            f'<td><figure><img src="gallery/{name}"><figcaption>{html.escape(meta)}</figcaption></figure></td></tr>')
    write_video(out / "contact_sheet.png", contact_sheet(entries)[None], fps)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
img {{ image-rendering: pixelated; width: 192px; }}
table {{ border-collapse: collapse; }} td {{ border-top: 1px solid #ccc; padding: 8px; vertical-align: top; }}
figure {{ display: inline-block; margin: 0 8px 0 0; }} figcaption {{ font-size: 80%; color: #555; }}
img.sheet {{ width: auto; max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Every task of one model. Inputs are held-out clips the model never saw in training.
Contact sheet: each row is a task, its inputs, then frames of its output over time.</p>
<img class="sheet" src="contact_sheet.png">
<table><tr><th>task</th><th>prompt</th><th>inputs</th><th>output</th></tr>
{chr(10).join(cards)}
</table></body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"
