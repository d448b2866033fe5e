"""Conv step: the one-frame step (frames t, t+1 -> frame t+2's coarse codes) learnt by a small
convolutional net over the code grid, as a peer of the LM's step (step_probe.py). A conv net has
the prior the step needs (the same local rule at every cell, the neighbourhood in reach) and
predicts every cell at once from the two frames alone, where the LM also reads frame t+2's codes
before each one. If it learns the step much better than the LM, the codes hold the distance
and the LM's architecture is what misses it.

Same windows as step_probe.py (every start in the token folder's clips but the last 64; the
validation windows from those 64); every `--every` steps, the validation loss a coarse code and
the sharpness probe's NLL of frame 2's coarse codes with the object moved d pixels.

    python docs/experiments/conv_step.py --tokens RUN/data/tokens --out conv.jsonl
    python docs/experiments/conv_step.py ... --width 128 --both    # one net for both directions (31st round)
    python docs/experiments/conv_step.py ... --both --context 3    # three frames read instead of two
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from motion_probe import SHIFTS, sharpness_cases
from torch import nn
from vidlm.lm.prior import Block, FramePrior, PriorConfig
from vidlm.lm.tokendata import TokenStore
from vidlm.tokenizer.model import VideoTokenizer


def ConvStep(n_codes: int, width: int, layers: int) -> FramePrior:
    """The net, since the thirty-first round `vidlm.lm.prior.FramePrior` (the same layers and names:
    nets saved before load into it)."""
    return FramePrior(PriorConfig(n_codes=n_codes, width=width, layers=layers))


class ContextStep(nn.Module):
    """--context K: FramePrior's net reading K frames (each embedded to width / 2, mixed to width
    by a 1x1 conv) instead of two."""

    def __init__(self, n_codes: int, width: int, layers: int, context: int):
        super().__init__()
        self.emb = nn.Embedding(n_codes, width // 2)
        self.mix = nn.Conv2d(context * width // 2, width, 1)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(layers)))
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, n_codes, 1))

    def forward(self, *frames):  # K x (B,h,w) ids, oldest first -> logits (B,V,h,w)
        return self.out(self.blocks(self.mix(torch.cat([self.emb(f) for f in frames], -1).permute(0, 3, 1, 2))))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", required=True, help="a token folder (with its tokenizer)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=6, help="3x3 residual conv blocks")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--save", help="write the net's weights here at the end")
    p.add_argument("--reverse", action="store_true", help="the step back in time: frames t+2, t+1 -> t "
                   "(no sharpness probe: its clips are forward)")
    p.add_argument("--both", action="store_true", help="train on both steps, forward and back in time, "
                   "half the windows each (the validation loss is the forward step's, then val/back the other's)")
    p.add_argument("--context", type=int, help="frames the net reads (default 2, FramePrior); given, the "
                   "validation windows predict frames 3, 6, 9, ... whatever K (<= 3), so runs of K 2 and 3 compare, "
                   "and the sharpness probe (two frames given) is skipped but for K 2")
    a = p.parse_args()
    k = a.context or 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    store = TokenStore.open(a.tokens)
    tok = VideoTokenizer.from_pretrained(f"{a.tokens}/tokenizer").eval()
    rows = store[0].codes.shape[1] - tok.cfg.refine_rows  # the coarse grid's rows
    codes = torch.stack([store[i].codes[:, :rows] for i in range(len(store))])  # (N,T,h,w)
    n_codes = int(codes.max()) + 1
    train = [(i, t) for i in range(len(codes) - 64) for t in range(codes.shape[1] - k)]
    val = [(i, t) for i in range(len(codes) - 64, len(codes)) for t in range(0, codes.shape[1] - 2, 3)] \
        if a.context is None else [(i, f - k) for i in range(len(codes) - 64, len(codes)) for f in range(3, codes.shape[1], 3)]
    cases = [c[:, :rows] for c in sharpness_cases(tok, a.clips)]


    def windows(ws, back=None):
        w = torch.stack([codes[i, t : t + k + 1] for i, t in ws])
        if back is None:  # the step of --reverse, or each window's own direction (--both: at random)
            back = torch.full((len(ws),), a.reverse) if not a.both else torch.rand(len(ws), generator=g) < 0.5
        back = back[:, None, None, None]
        w = torch.where(back, w.flip(1), w)
        return w.unbind(1)


    @torch.no_grad()
    def evaluate(step, seconds):
        net.eval()
        *given, target = windows(val, torch.full((len(val),), a.reverse))
        val_loss = float(F.cross_entropy(net(*given), target))
        *given, target = windows(val, torch.full((len(val),), not a.reverse))
        val_back = float(F.cross_entropy(net(*given), target))
        nll, best = {d: [] for d in SHIFTS}, 0
        for c in [] if a.reverse or k != 2 else cases:
            lp = -F.cross_entropy(net(c[:1].expand(len(SHIFTS), -1, -1), c[1:2].expand(len(SHIFTS), -1, -1)), c[2:],
                                  reduction="none").sum((1, 2))
            for d, v in zip(SHIFTS, lp):
                nll[d].append(-float(v))
            best += int(lp.argmax()) == SHIFTS.index(0)
        row = {"step": step, "minutes": round(seconds / 60, 1), "val/coarse": val_loss, "val/back": val_back,
               "nll": [round(sum(v) / len(v), 2) for v in nll.values() if v], "best": best, "args": vars(a)}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        net.train()


    net = ConvStep(n_codes, a.width, a.layers) if k == 2 else ContextStep(n_codes, a.width, a.layers, k)
    print(f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters, {len(train)} windows, {n_codes} codes")
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    t0 = time.time()
    evaluate(0, 0)
    for step in range(1, a.steps + 1):
        lr = a.lr * min(step / 100, 0.1 + 0.45 * (1 + math.cos(math.pi * step / a.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        *given, target = windows([train[int(j)] for j in torch.randint(len(train), (a.batch,), generator=g)])
        loss = F.cross_entropy(net(*given), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        if step % a.every == 0:
            evaluate(step, time.time() - t0)
    if a.save:
        torch.save({"state": net.state_dict(), "args": vars(a), "n_codes": n_codes}, a.save)
