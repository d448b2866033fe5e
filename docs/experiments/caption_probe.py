"""The caption's hold alone, faster than `vidlm eval world`: t2v with each held-out clip's
caption (the detector's colour and shape, majority over the clip; the share of frames with an
object) and t2i (the caption's object found; its colour and its shape apart), on the first --num
held-out clips with the seeds `eval world` uses, --cfg-text 3 and temperature 1 (no top-k) as its
defaults. --t2i-only skips t2v (an LM trained on images alone).

    python docs/experiments/caption_probe.py --model RUN/model --num 32 --out probe.json
"""
import argparse
import json
import time

import numpy as np
import torch

from vidlm.evaluate import heldout_clips, observe, verdict
from vidlm.pipeline import VideoGenerator

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", required=True, help="folder with tokenizer/, text/, lm/ or a shipped name")
p.add_argument("--num", type=int, default=32)
p.add_argument("--cfg-text", type=float, default=3.0)
p.add_argument("--temperature", type=float, default=1.0)
p.add_argument("--top-k", type=int)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--t2i-only", action="store_true", help="images only (no t2v)")
p.add_argument("--out", help="write the figures as JSON here")
args = p.parse_args()
torch.set_num_threads(args.threads)
gen = VideoGenerator.from_pretrained(args.model)
r = {"colour": [], "shape": [], "t2i": [], "t2i_colour": [], "t2i_shape": [], "detected": []}
started = time.time()
for i, (video, caption, world) in enumerate(heldout_clips(args.num, 0, width=64, height=64, frames=17)):
    opts = {"temperature": args.temperature, "top_k": args.top_k, "cfg_text": args.cfg_text, "seed": i}
    obj, bg = world["objects"][0], world["background"]
    if not args.t2i_only:
        clip = gen.t2v(caption, frames=17, size=(64, 64), **opts).video.cpu()
        colour_ok, shape_ok = verdict(clip, obj, bg)
        r["colour"].append(colour_ok)
        r["shape"].append(shape_ok)
        r["detected"].append(float(np.mean([o is not None for o in observe(clip, bg)])))
    image = gen.t2i(caption, size=(64, 64), **opts).video.cpu()
    colour_ok, shape_ok = verdict(image, obj, bg)  # one frame: its object, or none
    r["t2i"].append(colour_ok and shape_ok)
    r["t2i_colour"].append(colour_ok)
    r["t2i_shape"].append(shape_ok)
report = {k: float(np.mean(v)) for k, v in r.items() if v} | {"num": args.num, "seconds": round(time.time() - started)}
print(json.dumps(report))
if args.out:
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
