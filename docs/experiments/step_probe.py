"""Step probe: can an LM learn how far the object moves in one frame, from these codes, when
that is all it trains on? Windows of 3 latent frames from a token folder's clips (every start;
the folder's tokenizer codes each frame alone, so every window is a clip's own codes), t2v
without the caption, the loss on the last frame only: frames t, t+1 given, t+2 predicted. Every
`--every` steps: the loss on the windows of the folder's last 64 clips (coarse and fine codes
apart) and motion_probe.py's sharpness probe (is the truth the likeliest frame 2 among the
object moved -4 .. 4 pixels along its motion?).

    python docs/experiments/step_probe.py --lm RUN/model/lm --tokens RUN/data/tokens --out step.jsonl
    python docs/experiments/step_probe.py --lm RUN/model/lm --scratch ...   # its config, random weights
"""
import argparse
import json
import math
import time

import torch
from motion_probe import SHIFTS, load, sharpness, sharpness_cases
from vidlm.lm.model import VideoLM
from vidlm.lm.tasks import render_train
from vidlm.lm.train import token_losses

p = argparse.ArgumentParser()
p.add_argument("--lm", required=True, help="an exported LM folder: the weights to start from (or, --scratch, the config)")
p.add_argument("--tokens", required=True, help="its token folder (with its tokenizer)")
p.add_argument("--scratch", action="store_true", help="random weights of the LM's config")
p.add_argument("--frames", type=int, default=3, help="window length: frames-1 given, the last predicted")
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--warmup", type=int, default=50)
p.add_argument("--every", type=int, default=500)
p.add_argument("--clips", type=int, default=24, help="clips of the sharpness probe")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--out", required=True, help="a JSON-lines file, one line per evaluation")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
model, vocab, store, places, tok = load(a.lm, a.tokens)
if a.scratch:
    model = VideoLM(model.cfg)
fine = tok.cfg.refine_rows
codes = [store[i].codes for i in range(len(store))]
train = [(i, t) for i in range(len(codes) - 64) for t in range(len(codes[i]) - a.frames + 1)]
val = [(i, t) for i in range(len(codes) - 64, len(codes)) for t in range(0, len(codes[i]) - a.frames + 1, 3)]
cases = sharpness_cases(tok, a.clips)


def batch(windows) -> dict:
    rows = []
    for i, t in windows:
        w = codes[i][t : t + a.frames]
        s = render_train("t2v", vocab, codes=w, text=None, places=places, drop_text=True)
        mask = s.loss_mask.clone()
        mask[: int(mask.nonzero()[0]) + (a.frames - 1) * w[0].numel()] = False  # the last frame's codes only
        rows.append((s.ids, s.coords, mask))
    ids, coords, mask = (torch.stack(x) for x in zip(*rows))
    return {"ids": ids, "coords": coords, "loss_mask": mask, "doc_ids": torch.zeros_like(ids)}


@torch.no_grad()
def evaluate(step: int, seconds: float) -> None:
    model.eval()
    sums = torch.zeros(2)
    counts = torch.zeros(2)
    for j in range(0, len(val), 64):
        ce, mask = token_losses(model, batch(val[j : j + 64]), "cpu")
        ce = ce[mask].view(-1, *codes[0].shape[1:])  # (windows, h, w) of the last frame
        for k, part in enumerate((ce[:, : ce.shape[1] - fine], ce[:, ce.shape[1] - fine :])):
            sums[k] += part.sum()
            counts[k] += part.numel()
    res = sharpness(model, vocab, places, cases, fine)
    row = {"step": step, "minutes": round(seconds / 60, 1), "val/coarse": float(sums[0] / counts[0]),
           "val/fine": float(sums[1] / counts[1]), "nll": [round(res["nll"][d], 2) for d in SHIFTS],
           "nll/coarse": [round(res["coarse"][d], 2) for d in SHIFTS],
           "best": res["best"], "args": vars(a)}
    print(json.dumps(row), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    model.train()


opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
g = torch.Generator().manual_seed(a.seed)
t0 = time.time()
evaluate(0, 0)
model.train()
for step in range(1, a.steps + 1):
    lr = a.lr * min(step / a.warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * step / a.steps)))
    for group in opt.param_groups:
        group["lr"] = lr
    ce, mask = token_losses(model, batch([train[int(k)] for k in torch.randint(len(train), (a.batch,), generator=g)]), "cpu")
    loss = ce.sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 100 == 0:
        print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
    if step % a.every == 0:
        evaluate(step, time.time() - t0)
