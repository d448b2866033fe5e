"""Fine-tune probe: fine-tune the decoder of a trained tokenizer (encoder and quantizer frozen,
so its codes, and any LM trained on them, stay valid), or with --all the whole tokenizer, on an
object-weighted L1+L2 (pixels that differ from the clip's median colour, dilated by one pixel,
weigh 1 + --obj; pixels on the object's boundary a further --edge), optionally with a hinge GAN;
then the held-out measurement of tokenizer_probe.py plus the median bounding-box fill ratio the
detector sees, every --eval-every minutes. One JSON line per measurement goes to
OUT/decoder.jsonl (docs/experiments.md).

    python docs/experiments/decoder_probe.py --name obj8 --obj 8 --minutes 8 --out exp
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from vidlm.data.synthetic import clip_seed, render_clip
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
p.add_argument("--batch", type=int, default=4)
p.add_argument("--clips", type=int, default=2000)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", type=Path, default=Path("exp"))
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
a.out.mkdir(parents=True, exist_ok=True)
cache = a.out / f"clips{a.clips}.npy"  # the clips of `vidlm data synth --seed 0`
if not cache.exists():
    np.save(str(cache) + ".tmp.npy", np.stack([render_clip(clip_seed(0, i))[0] for i in range(a.clips)]))
    Path(str(cache) + ".tmp.npy").rename(cache)
data = torch.from_numpy(np.load(cache))  # N,T,H,W,3

model = VideoTokenizer.from_pretrained(a.model).to(torch.bfloat16)
model.requires_grad_(a.all)
model.decoder.requires_grad_(True)
trained = model if a.all else model.decoder
opt = torch.optim.AdamW(trained.parameters(), lr=a.lr, betas=(0.9, 0.99))
disc = PatchDiscriminator3D(DiscConfig()).to(torch.bfloat16) if a.gan > 0 else None
d_opt = torch.optim.AdamW(disc.parameters(), lr=a.lr, betas=(0.5, 0.99)) if disc else None
ema = {k: v.detach().float().clone() for k, v in trained.state_dict().items()}


def measure(minutes: float) -> None:
    live = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.load_state_dict({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ema.items()})
    model.eval()
    ps, col, shp, fills = [], [], [], []
    with torch.no_grad():
        for video, _, world in heldout_clips(32, 0):
            rec = model.decode(model.encode(video[None].to(torch.bfloat16))).float()[0]
            ps.append(float(psnr_per_frame(rec[None], video[None]).mean()))
            obj, found = world["objects"][0], observe(rec, world["background"])
            fills += [f["fill"] for f in found if f]
            col.append(majority([o and o["colour"] for o in found]) == obj["colour"])
            shp.append(majority([o and o["shape"] for o in found]) == obj["shape"])
    row = {"name": a.name, "steps": step, "minutes": round(minutes, 1), "psnr": round(float(np.mean(ps)), 2),
           "colour": float(np.mean(col)), "shape": float(np.mean(shp)), "fill_median": round(float(np.median(fills)), 3),
           "args": {k: str(v) for k, v in vars(a).items()}}
    print(json.dumps(row), flush=True)
    with open(a.out / "decoder.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if a.save:
        model.save_pretrained(a.save)
    trained.load_state_dict(live)
    model.train()



g = torch.Generator().manual_seed(1)
t0, step, next_eval = time.time(), 0, a.eval_every
while time.time() - t0 < 60 * a.minutes:
    x = data[torch.randint(0, len(data), (a.batch,), generator=g)].permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    background = x.flatten(2).median(-1).values[..., None, None, None]
    mask = ((x - background).abs().amax(1, keepdim=True) > 0.05).float()
    grown = F.max_pool3d(mask, (1, 3, 3), 1, (0, 1, 1))
    edge = grown + F.max_pool3d(-mask, (1, 3, 3), 1, (0, 1, 1))  # dilated minus eroded
    weight = 1 + a.obj * grown + a.edge * edge
    if a.all:
        rec = model(x.to(torch.bfloat16))[0].float()
    else:
        with torch.no_grad():
            ids = model.encode(x.to(torch.bfloat16))
        rec = model.decode(ids).float()
    d = rec - x
    loss = ((d.abs() + d.pow(2)) * weight).mean() / weight.mean()
    if disc is not None and step > 50:
        loss = loss + a.gan * hinge_g_loss(disc(rec.to(torch.bfloat16)).float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
    opt.step()
    if disc is not None:
        d_loss = hinge_d_loss(disc(x.to(torch.bfloat16)).float(), disc(rec.detach().to(torch.bfloat16)).float())
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
