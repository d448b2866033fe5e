"""Speculative decoding: seconds per 17-frame 64x64 t2v clip (CFG 3) on the shipped weights
against the most drafts a pass may carry (`speculative=k`, the default draft order), at
temperature 0 and 1; median of 3 seeds after one warm-up, one thread.

    python docs/experiments/draft_length.py
"""
import statistics
import time

import torch

from vidlm.pipeline import VideoGenerator

torch.set_num_threads(1)
gen = VideoGenerator.from_pretrained("shapes-demo")
caption = "a red circle bouncing to the right on a black background"
for temperature in (0.0, 1.0):
    for k in (0, 4, 8, 12, 16, 24):
        times = []
        for seed in range(4):
            t0 = time.perf_counter()
            gen.t2v(caption, temperature=temperature, cfg_text=3.0, seed=seed, speculative=k)
            times.append(time.perf_counter() - t0)
        print(f"temperature {temperature:g}, speculative={k:<2}: {statistics.median(times[1:]):.2f} s", flush=True)
