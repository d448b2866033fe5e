"""Tokenizer probe: train a TokenizerConfig variant for N minutes on shapes-world clips held in
memory (no loader, no DeepSpeed: the same modules and losses as `vidlm tokenizer train`, bf16
autocast over fp32 weights, AdamW, EMA 0.99, every other step on 16 single frames; until the
third round of docs/experiments.md the weights themselves were bf16), then measure on 32 held-out clips of
`vidlm eval world`: PSNR (all frames and frame 0), the detector's colour/shape on the
reconstructions (majority over frames; frame 0 alone; the share of all frames read right), code
entropy and usage. One JSON line per measurement (every --eval-every minutes, and at the end) is
appended to OUT/results.jsonl; docs/experiments.md holds the table. --save keeps the EMA weights
of each measurement, and --init continues from them.

    python docs/experiments/tokenizer_probe.py --name tf2 --model '{"time_factor": 2}' --out exp
    python docs/experiments/tokenizer_probe.py --name r4 --lr 1e-3 --minutes 45 --eval-every 15 --out exp \
        --model '{"time_factor": 1, "channel_mult": [1, 2], "latent_dim": 16, "refine_rows": 2}'

(Two-level codes, `refine_rows`, are the tokenizer's own since the ninth round; that round's rows
that chose the refined cells by their error were made with commit 81e605d.)
"""
import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from probe_common import coarse_drawing, parse, report, training_clips
from vidlm.tokenizer.config import LossConfig, TokenizerConfig
from vidlm.tokenizer.losses import TokenizerLosses
from vidlm.tokenizer.metrics import psnr_per_frame
from vidlm.tokenizer.model import VideoTokenizer

from vidlm.evaluate import heldout_clips, majority, observe
from vidlm.runtime import native_bf16

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--minutes", type=float, default=6)
p.add_argument("--preset", default="demo")
p.add_argument("--model", default="{}")
p.add_argument("--lr", type=float, default=3e-4)
p.add_argument("--image-every", type=int, default=2)
p.add_argument("--image-batch", type=int, default=16)
p.add_argument("--hard", type=float, default=1.0)
p.add_argument("--mp4", action="store_true", help="train on the shards' H.264 frames")
p.add_argument("--frames", type=int, default=17)
p.add_argument("--eval-every", type=float, default=0, help="minutes between measurements (0: at the end)")
p.add_argument("--save", help="save the EMA weights here at each measurement (save_pretrained)")
p.add_argument("--init", help="start from these saved weights (a --save folder; --preset is ignored, --model "
               "changes fields of their config)")
a = parse(p, batch=4)
data = training_clips(a.out, a.clips, a.mp4)  # N,T,H,W,3
# fp32 weights under bf16 autocast, as DeepSpeed's bf16 keeps fp32 masters
if a.init:  # --model's fields change the saved config (loss weights such as coarse_weight)
    saved = VideoTokenizer.from_pretrained(a.init)
    model = VideoTokenizer(dataclasses.replace(saved.cfg, **json.loads(a.model)))
    model.load_state_dict(saved.state_dict())
else:
    model = VideoTokenizer(TokenizerConfig.from_name(a.preset, **json.loads(a.model)))
cfg = model.cfg
forward = lambda x: model(x)[:3]  # (recon, ids, aux loss)
# bf16 autocast where the CPU computes bf16 (AMX / AVX512-BF16); an AVX2-only CPU emulates it, ~50x slower
bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16())
nparam = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99))
losses = TokenizerLosses(LossConfig(l1_weight=1, l2_weight=1, gan_weight=0, hard_weight=a.hard))
ema = {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def measure(minutes: float) -> None:
    """Score the EMA weights on the held-out clips; print and append one row; --save them."""
    live = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema)
    model.eval()
    ps, p0, col, shp, shp0, shpf, ccol, cobj = [], [], [], [], [], [], [], []
    hist = torch.zeros(cfg.vocab_size)
    with torch.no_grad():
        for video, cap, world in heldout_clips(32, 0):
            v = video[None, :, :a.frames]
            with bf16():
                rec, ids, _ = forward(v)
                rec = rec.float()[0]
            hist += torch.bincount(ids.flatten(), minlength=cfg.vocab_size)
            pf = psnr_per_frame(rec[None], v)
            ps.append(float(pf.mean())); p0.append(float(pf[0]))
            obj, found = world["objects"][0], observe(rec, world["background"])
            col.append(majority([o and o["colour"] for o in found]) == obj["colour"])
            shp.append(majority([o and o["shape"] for o in found]) == obj["shape"])
            shp0.append(bool(found[0]) and found[0]["shape"] == obj["shape"])
            shpf += [bool(o) and o["shape"] == obj["shape"] for o in found]
            if cfg.refine_rows:  # what the coarse codes draw alone: the object, or only a mark for the fine codes?
                with bf16():
                    alone = observe(coarse_drawing(model, ids).float()[0], world["background"])
                ccol.append(majority([o and o["colour"] for o in alone]) == obj["colour"])
                cobj += [bool(o) for o in alone]
    pr = hist / hist.sum().clamp(min=1)
    ent = float(-(pr[pr > 0] * pr[pr > 0].log2()).sum())
    row = {"name": a.name, "minutes": round(minutes, 1), "steps": step, "params": nparam, "psnr": round(float(np.mean(ps)), 2),
           "psnr_f0": round(float(np.mean(p0)), 2), "colour": float(np.mean(col)), "shape": float(np.mean(shp)),
           "shape_f0": float(np.mean(shp0)), "shape_frames": round(float(np.mean(shpf)), 3),
           "code_entropy_bits": round(ent, 2), "usage": float((hist > 0).float().mean())}
    if ccol:
        row.update(coarse_colour=float(np.mean(ccol)), coarse_frames=round(float(np.mean(cobj)), 3))
    report(row, a, "results.jsonl")
    if a.save:
        model.save_pretrained(a.save)
    model.load_state_dict(live)
    model.train()


g = torch.Generator().manual_seed(0)
t0, step, next_eval, measured = time.time(), 0, a.eval_every, -1
while time.time() - t0 < 60 * a.minutes:
    idx = torch.randint(0, len(data), (a.batch,), generator=g)
    x = data[idx, :a.frames].permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    if a.image_every and step % a.image_every == a.image_every - 1:
        fr = x.transpose(1, 2).flatten(0, 1)
        x = fr[torch.randperm(len(fr), generator=g)[:a.image_batch]].unsqueeze(2)
    lr = a.lr * min(1, (step + 1) / 30)
    for gr in opt.param_groups: gr["lr"] = lr
    with bf16():
        recon, _, aux = forward(x)
    loss, logs = losses.generator(x.float(), recon.float(), aux.float(), None, None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            ema[k].mul_(0.99).add_(v.float(), alpha=0.01) if v.is_floating_point() else ema[k].copy_(v)
    step += 1
    if a.eval_every and time.time() - t0 > 60 * next_eval:
        measure((time.time() - t0) / 60)
        measured, next_eval = step, next_eval + a.eval_every
if measured != step:  # not measured at this step yet
    measure((time.time() - t0) / 60)
