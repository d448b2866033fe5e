"""Speculative decoding: seconds per 17-frame 64x64 t2v clip (CFG 3) against the most drafts a
pass may carry (`speculative=k`, the default draft order, 0 = plain decoding), at temperature 0
and 1; the median of --repeats seeds after one warm-up (bench/lm.py's clip_seconds), and the
drafts kept by kind.

    python docs/experiments/draft_length.py                       # the shipped weights, one thread
    python docs/experiments/draft_length.py --model RUN/model --lengths 0 16 --repeats 2 --threads 2
"""
import argparse
import runpy
from pathlib import Path

import torch

from vidlm.pipeline import VideoGenerator

bench = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "lm.py"))

p = argparse.ArgumentParser()
p.add_argument("--model", default="shapes-demo")
p.add_argument("--lengths", type=int, nargs="+", default=[0, 4, 8, 12, 16, 24])
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=1)
args = p.parse_args()

torch.set_num_threads(args.threads)
gen = VideoGenerator.from_pretrained(args.model)
caption = "a red circle bouncing to the right on a black background"
for temperature in (0.0, 1.0):
    for k in args.lengths:
        seconds = bench["clip_seconds"](gen, args.repeats, caption, temperature=temperature, cfg_text=3.0, speculative=k)
        kept = f", drafts {bench['kept_drafts'](gen.stats)}" if k else ""
        print(f"temperature {temperature:g}, speculative={k:<2}: {seconds:.2f} s{kept}", flush=True)
