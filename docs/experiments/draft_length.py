"""Speculative decoding: seconds per 17-frame 64x64 t2v clip (CFG 3) on the shipped weights
against the most drafts a pass may carry (`speculative=k`, the default draft order), at
temperature 0 and 1; median of 3 seeds after one warm-up (bench/lm.py's clip_seconds), one
thread.

    python docs/experiments/draft_length.py
"""
import runpy
from pathlib import Path

import torch

from vidlm.pipeline import VideoGenerator

clip_seconds = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "lm.py"))["clip_seconds"]

torch.set_num_threads(1)
gen = VideoGenerator.from_pretrained("shapes-demo")
caption = "a red circle bouncing to the right on a black background"
for temperature in (0.0, 1.0):
    for k in (0, 4, 8, 12, 16, 24):
        seconds = clip_seconds(gen, 3, caption, temperature=temperature, cfg_text=3.0, speculative=k)
        print(f"temperature {temperature:g}, speculative={k:<2}: {seconds:.2f} s", flush=True)
