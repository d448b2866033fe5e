"""Where does a two-level tokenizer lose an object's shape? Decodes the 32 held-out clips of
`vidlm eval world` four ways and reads the shape of every frame with its detector:
- as `decode(encode(video))` does (the FSQ codes, the cells the scorer picks for fine codes);
- with the FSQ values left unrounded (the encoder's continuous latent, bounded as FSQ bounds it);
- with fine codes in every cell, not only the picked ones;
- both.
Then, for the plain decode, what each true shape is read as. docs/experiments.md, seventeenth round.

    python docs/experiments/shape_diag.py --tokenizer RUN/model/tokenizer
"""
import argparse
from collections import Counter

import numpy as np
import torch
import vector_quantize_pytorch.finite_scalar_quantization as fsq
from einops import rearrange
from vidlm.tokenizer.model import VideoTokenizer

from vidlm.evaluate import heldout_clips, observe

p = argparse.ArgumentParser()
p.add_argument("--tokenizer", required=True, help="an exported two-level tokenizer folder")
p.add_argument("--clips", type=int, default=32)
a = p.parse_args()
torch.set_num_threads(1)
model = VideoTokenizer.from_pretrained(a.tokenizer).eval()
q, rounded = model.quantizer, fsq.round_ste
if not model.cfg.refine_rows:
    raise SystemExit(f"{a.tokenizer} codes one level (refine_rows 0); this probe reads two-level tokenizers")


def decode(video: torch.Tensor, rounding: bool, all_cells: bool) -> torch.Tensor:
    """TwoLevel.forward's latent, with the library's rounding swapped out or every cell refined."""
    fsq.round_ste = rounded if rounding else (lambda z: z)
    z = model.encoder(video)
    t = z.shape[2]
    z = rearrange(z, "b d t h w -> (b t) d h w")
    coarse = q.coarse_q(q.coarse_in(z)[:, :, None])[0][:, :, 0]
    fine = q.fine_q(q.fine_in(z)[:, :, None])[0][:, :, 0]
    cells = q._cells(coarse)[0]
    if all_cells:
        cells = torch.arange(coarse.shape[2] * coarse.shape[3]).expand(coarse.shape[0], -1)
    fsq.round_ste = rounded
    return model.decoder(q._latent(coarse, fine, cells, t)).float()[0]


ways = {"codes": (True, False), "unrounded": (False, False), "every cell refined": (True, True),
        "unrounded, every cell refined": (False, True)}
read = {k: [] for k in ways}
confusion = Counter()
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    for video, _, world in heldout_clips(a.clips, 0):
        shape = world["objects"][0]["shape"]
        for k, way in ways.items():
            found = observe(decode(video[None], *way), world["background"])
            read[k] += [bool(o) and o["shape"] == shape for o in found]
            if k == "codes":
                confusion.update((shape, o["shape"] if o else "none") for o in found)
for k, v in read.items():
    print(f"{k:30} shape read in {np.mean(v):.3f} of {len(v)} frames")
for shape in sorted({s for s, _ in confusion}):
    n = sum(c for (s, _), c in confusion.items() if s == shape)
    print(f"{shape:9} read as " + ", ".join(f"{r} {c / n:.2f}" for (s, r), c in sorted(confusion.items()) if s == shape))
