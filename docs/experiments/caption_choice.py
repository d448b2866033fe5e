"""Caption choice: does the LM read the caption's shape (or colour) at all? For the first --num
held-out single-object clips of `vidlm eval world` (its seeds), frame 0 coded alone by the model's
tokenizer: the LM's t2i loss of those codes under the true caption and under the caption with its
shape word (or its colour word) replaced by each other one. The LM as a classifier of real
images: the share whose true caption gives the lowest loss (chance 1/3 for shape, 1/7 for
colour), the mean loss gap (nats an image) from the true caption to the best wrong one, and
beside them the detector on the tokenizer's reconstruction of the same frames.

    python docs/experiments/caption_choice.py --model RUN/model --num 96
"""
import argparse
import json
import re

import torch
from vidlm.data.synthetic import COLOURS, SHAPES
from vidlm.lm.tasks import render_train
from vidlm.lm.tokendata import pack
from vidlm.lm.train import token_losses

from vidlm.evaluate import heldout_clips, verdict
from vidlm.pipeline import VideoGenerator

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", required=True, help="folder with tokenizer/, text/, lm/ or a shipped name")
p.add_argument("--num", type=int, default=96)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", help="write the figures as JSON here")
a = p.parse_args()
torch.set_num_threads(a.threads)
gen = VideoGenerator.from_pretrained(a.model)


@torch.no_grad()
def loss(codes, caption: str) -> float:
    """The codes' loss (nats) under the caption, as training's validation computes it."""
    seq = render_train("t2i", gen.vocab, codes=codes, text=gen.text_tokenizer.encode(caption), places=gen.places)
    ce, _ = token_losses(gen.lm, pack([seq], len(seq.ids)), gen.device)
    return float(ce.sum())


found = {"shape": [], "colour": [], "gap_shape": [], "gap_colour": [], "recon_shape": [], "recon_colour": []}
for video, caption, world in heldout_clips(a.num, 0, width=64, height=64, frames=17):
    obj, first = world["objects"][0], video[:, :1]
    codes = gen.encode(first).cpu()
    colour_ok, shape_ok = verdict(gen.decode(codes).cpu(), obj, world["background"])
    found["recon_colour"].append(colour_ok)
    found["recon_shape"].append(shape_ok)
    true = loss(codes, caption)
    for kind, words, said in (("shape", SHAPES, obj["shape"]), ("colour", list(COLOURS), obj["colour"])):
        assert re.search(rf"\b{said}\b", caption), caption
        wrong = min(loss(codes, re.sub(rf"\b{said}\b", w, caption)) for w in words if w != said)
        found[kind].append(true < wrong)
        found[f"gap_{kind}"].append(wrong - true)
report = {k: sum(v) / len(v) for k, v in found.items()} | {"num": a.num}
print(json.dumps(report))
if a.out:
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
