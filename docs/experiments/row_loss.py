"""Row loss: where in a frame does an LM find its codes hard? The t2v loss (nats a code, with the
caption) of the held-out clips of a token folder (its last 16, as `vidlm lm train` holds them
out), by row of the latent grid, by latent frame, and split into the codes that repeat the code
at their grid place in the latent frame before and those that change (where the object moves),
these by latent frame (at frame 1 only the caption says how it moves; from frame 2 the frames do).
On two-level codes (`refine_rows`) the last
rows are the fine codes, placed where the coarse codes say (the LM sees them at those places
when the token folder holds its tokenizer): the rows show whether the LM learnt them. A prediction from the unigram of each row is printed beside it.

    python docs/experiments/row_loss.py --model RUN/model/lm --tokens RUN/data/tokens [--drop-text]
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from vidlm.lm.model import VideoLM
from vidlm.lm.tasks import render_train
from vidlm.lm.tokendata import TokenStore
from vidlm.lm.vocab import Vocab

from vidlm.pretokenize import load_places

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="an exported LM folder")
p.add_argument("--tokens", required=True, help="the token folder it was trained on")
p.add_argument("--clips", type=int, default=16)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--drop-text", action="store_true", help="without the caption: does it reach the codes?")
a = p.parse_args()
torch.set_num_threads(a.threads)
model, vocab = VideoLM.from_pretrained(a.model).eval(), Vocab.from_pretrained(a.tokens)
store, places = TokenStore.open(a.tokens), load_places(a.tokens)
fine = json.loads((Path(a.tokens) / "tokenizer" / "config.json").read_text())["config"].get("refine_rows", 0) if places is not None else 0
rows, frames, hist, moved = {}, {}, {}, {}
with torch.no_grad():
    for i in range(len(store) - a.clips, len(store)):
        clip = store[i]
        seq = render_train("t2v", vocab, codes=clip.codes, text=clip.text, places=places, drop_text=a.drop_text)
        logits = model(seq.ids[None, :-1], seq.coords[None, :-1])[0].float()
        target = seq.loss_mask[1:]
        nll = F.cross_entropy(logits[target], seq.ids[1:][target], reduction="none")
        t_len, h, w = clip.codes.shape
        grid = torch.arange(t_len * h * w)  # t2v: every code, in raster order
        flat = clip.codes.reshape(t_len, h * w)
        changed = torch.cat([torch.full((1, h * w), -1), (flat[1:] != flat[:-1]).long()]).flatten()
        level = ["coarse " if y < h - fine else "fine " for y in (grid % (h * w) // w).tolist()]
        frame_of = (grid // (h * w)).tolist()
        for t, lv, k, v in zip(frame_of, level, changed.tolist(), nll.tolist()):
            kind = ("first frame", "same as before", f"changed, frame {t}" if t < 4 else "changed, frame 4+")[k + 1]
            moved.setdefault(lv + kind, []).append(v)
        for t, y, v, code in zip(frame_of, (grid % (h * w) // w).tolist(), nll.tolist(), seq.ids[1:][target].tolist()):
            rows.setdefault(y, []).append(v)
            frames.setdefault(t, []).append(v)
            hist.setdefault(y, []).append(code)
print("row  loss   unigram (nats a code)")
for y in sorted(rows):
    c = torch.bincount(torch.tensor(hist[y])).float()
    pr = c[c > 0] / c.sum()
    print(f"{y:3d}  {sum(rows[y]) / len(rows[y]):.3f}  {float(-(pr * pr.log()).sum()):.3f}")
print("frame  loss")
for t in sorted(frames):
    print(f"{t:3d}    {sum(frames[t]) / len(frames[t]):.3f}")
total = sum(sum(v) for v in moved.values())
print("codes                          share of codes  loss (nats a code)  share of the loss")
n = sum(len(v) for v in moved.values())
for k, v in sorted(moved.items()):
    print(f"{k:<30} {len(v) / n:>14.3f}  {sum(v) / len(v):>18.3f}  {sum(v) / total:>17.3f}")
