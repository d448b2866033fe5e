"""Fine-tune probe: fine-tune the decoder of a trained tokenizer (encoder and quantizer frozen,
so its codes, and any LM trained on them, stay valid), or with --all the whole tokenizer, on an
object-weighted L1+L2 (pixels that differ from the clip's median colour, dilated by one pixel,
weigh 1 + --obj; pixels on the object's boundary a further --edge), optionally with a hinge GAN
(fp32 weights under bf16 autocast: probes before the third round held the weights themselves
in bf16, where most AdamW updates at lr 1e-4 round away);
then the held-out measurement of tokenizer_probe.py plus the median bounding-box fill ratio the
detector sees, every --eval-every minutes. One JSON line per measurement goes to
OUT/decoder.jsonl (docs/experiments.md).

    python docs/experiments/decoder_probe.py --name obj8 --obj 8 --minutes 8 --out exp
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from probe_common import object_weights, parse, report, training_clips
from vidlm.tokenizer.config import DiscConfig
from vidlm.tokenizer.discriminator import PatchDiscriminator3D
from vidlm.tokenizer.losses import hinge_d_loss, hinge_g_loss
from vidlm.tokenizer.metrics import psnr_per_frame
from vidlm.tokenizer.model import VideoTokenizer

from vidlm.evaluate import heldout_clips, majority, observe

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--model", default="vidlm/weights/shapes-demo/tokenizer")
p.add_argument("--minutes", type=float, default=8)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--obj", type=float, default=8.0)
p.add_argument("--gan", type=float, default=0.0)
p.add_argument("--edge", type=float, default=0.0)
p.add_argument("--all", action="store_true", help="train encoder and quantizer too (new codes)")
p.add_argument("--save", type=Path, help="write the EMA tokenizer here at each measurement")
p.add_argument("--eval-every", type=float, default=0, help="minutes between measurements (0: at the end)")
a = parse(p, batch=4)
data = training_clips(a.out, a.clips)  # N,T,H,W,3

model = VideoTokenizer.from_pretrained(a.model)  # fp32 weights, bf16 autocast (as DeepSpeed's fp32 master weights)
model.requires_grad_(a.all)
model.decoder.requires_grad_(True)
trained = model if a.all else model.decoder
opt = torch.optim.AdamW(trained.parameters(), lr=a.lr, betas=(0.9, 0.99))
disc = PatchDiscriminator3D(DiscConfig()) if a.gan > 0 else None
d_opt = torch.optim.AdamW(disc.parameters(), lr=a.lr, betas=(0.5, 0.99)) if disc else None
ema = {k: v.detach().float().clone() for k, v in trained.state_dict().items()}
bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def measure(minutes: float) -> None:
    live = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.load_state_dict(ema)
    model.eval()
    ps, col, shp, fills = [], [], [], []
    with torch.no_grad(), bf16():
        for video, _, world in heldout_clips(32, 0):
            rec = model.decode(model.encode(video[None])).float()[0]
            ps.append(float(psnr_per_frame(rec[None], video[None]).mean()))
            obj, found = world["objects"][0], observe(rec, world["background"])
            fills += [f["fill"] for f in found if f]
            col.append(majority([o and o["colour"] for o in found]) == obj["colour"])
            shp.append(majority([o and o["shape"] for o in found]) == obj["shape"])
    row = {"name": a.name, "steps": step, "minutes": round(minutes, 1), "psnr": round(float(np.mean(ps)), 2),
           "colour": float(np.mean(col)), "shape": float(np.mean(shp)), "fill_median": round(float(np.median(fills)), 3)}
    report(row, a, "decoder.jsonl")
    if a.save:
        model.save_pretrained(a.save)
    trained.load_state_dict(live)
    model.train()



g = torch.Generator().manual_seed(1)
t0, step, next_eval = time.time(), 0, a.eval_every
while time.time() - t0 < 60 * a.minutes:
    x = data[torch.randint(0, len(data), (a.batch,), generator=g)].permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    weight = object_weights(x, a.obj, a.edge)
    with bf16():
        if a.all:
            rec = model(x)[0].float()
        else:
            with torch.no_grad():
                ids = model.encode(x)
            rec = model.decode(ids).float()
    d = rec - x
    loss = ((d.abs() + d.pow(2)) * weight).mean() / weight.mean()
    if disc is not None and step > 50:
        with bf16():
            loss = loss + a.gan * hinge_g_loss(disc(rec).float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
    opt.step()
    if disc is not None:
        with bf16():
            d_loss = hinge_d_loss(disc(x).float(), disc(rec.detach()).float())
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
    with torch.no_grad():
        for k, v in trained.state_dict().items():
            ema[k].mul_(0.99).add_(v.float(), alpha=0.01) if v.is_floating_point() else ema[k].copy_(v)
    step += 1
    if a.eval_every and time.time() - t0 > 60 * next_eval:
        measure((time.time() - t0) / 60)
        next_eval += a.eval_every
measure((time.time() - t0) / 60)
