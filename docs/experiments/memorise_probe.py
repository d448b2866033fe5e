"""Memorise probe: can the two-level demo codec draw corners at all, on frames it has seen?
Trains the codec of `recipes/demo/shapes-two-level.yaml`, without its coarse loss (image_probe.py's
loss: L1 + L2 + the worst 5 % of pixel values, where the trainer's `pixel_errors` takes each pixel's
mean over its channels; the scorer's aux loss; AdamW, cosine over the steps, bf16 autocast) on the
very frames it is scored on, frames 0, 8 and 16 of the 48 held-out clips of `vidlm eval world`
(144 frames, batch 32; `--clips` fewer), and reads their shape with the detector at each quarter
of the steps. Corners that come back here would put the trainer's gap in generalisation or
compute; corners still lost put it in the codec, and `--quant free` (no encoder: each frame's
latent learnt as a parameter) in its decoder. docs/experiments.md, twentieth and twenty-first rounds.

    python docs/experiments/memorise_probe.py                       # the recipe's codec
    python docs/experiments/memorise_probe.py --quant none          # no quantizer: 16 floats a 4x4 cell
    python docs/experiments/memorise_probe.py --model '{"temporal_kernel": 3, "time_factor": 2}'
    python docs/experiments/memorise_probe.py --up shuffle          # sub-pixel upsampling
    python docs/experiments/memorise_probe.py --lr 3e-3
    python docs/experiments/memorise_probe.py --quant none --clips 11 --steps 1000 --model '{"out_mixture": 4, "channels": 64}'
    python docs/experiments/memorise_probe.py --quant free --clips 11 --steps 1000   # the decoder alone
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from probe_common import psnr_and_shape, scored_frames
from vidlm.tokenizer.config import TokenizerConfig
from vidlm.tokenizer.model import CausalConv3d, Up, VideoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--clips", type=int, default=48, help="held-out clips whose frames 0, 8 and 16 are learnt")
p.add_argument("--quant", choices=("two", "none", "free"), default="two",
               help="two: the recipe's two-level FSQ codes; none: the encoder's latent goes to the decoder as is; "
               "free: no encoder, each frame's latent is a free parameter learnt beside the decoder (at 30x the lr)")
p.add_argument("--model", default="{}", help="TokenizerConfig overrides of the recipe's codec (JSON)")
p.add_argument("--up", choices=("nearest", "shuffle"), default="nearest",
               help="shuffle: the decoder's spatial upsampling convolves at the coarse grid to 4x the channels and "
               "pixel-shuffles, so each of a cell's four children has its own weights (nearest: they share a kernel)")
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
xs, worlds = scored_frames(a.clips)  # (144,3,1,H,W)
recipe = {"refine_rows": 2, "channel_mult": [1, 2], "latent_dim": 16, "time_factor": 1, "temporal_kernel": 1}
m = VideoTokenizer(TokenizerConfig.from_name("demo", **recipe | json.loads(a.model)))


def shuffle_up(self, x, cache=None):
    t = x.shape[2]
    x = rearrange(self.conv(x, cache), "b c t h w -> (b t) c h w")
    return F.silu(self.norm(rearrange(F.pixel_shuffle(x, 2), "(b t) c h w -> b c t h w", t=t)))


if a.up == "shuffle":
    for up in [mod for mod in m.modules() if isinstance(mod, Up)]:
        if up.time or not up.space:
            raise SystemExit("--up shuffle replaces space-only upsampling (time_factor 1)")
        c = up.conv.conv
        up.conv = CausalConv3d(c.in_channels, 4 * c.out_channels, c.kernel_size)
        up.forward = shuffle_up.__get__(up)
print(sum(p.numel() for p in m.parameters()), "parameters", flush=True)


latents = torch.nn.Parameter(torch.randn(len(xs), *m.encoder(xs[:1]).shape[1:])) if a.quant == "free" else None


def run(idx):
    """Reconstructions of the frames xs[idx], and the quantizer's aux loss."""
    x, aux = xs[idx], torch.zeros(())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = latents[idx] if a.quant == "free" else m.encoder(x)
        if a.quant == "two":
            z, _, aux = m.quantizer(z, x, m.decoder if m.training else None)
        return m.decoder(z).float(), aux


def score() -> tuple[float, float]:
    """Mean PSNR and the share of the frames whose shape the detector reads."""
    m.eval()
    with torch.no_grad():
        recs = torch.cat([run(slice(i, i + 48))[0] for i in range(0, len(xs), 48)])
    m.train()
    psnr, shape = psnr_and_shape(recs, xs, worlds)
    return round(psnr, 2), round(shape, 3)


groups = [{"params": list(m.parameters()), "scale": 1.0}] + ([{"params": [latents], "scale": 30.0}] if a.quant == "free" else [])
opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
g = torch.Generator().manual_seed(0)
t0 = time.time()
for step in range(a.steps):
    idx = torch.randint(0, len(xs), (32,), generator=g)
    x = xs[idx]
    lr = a.lr * min(1, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
    for group in opt.param_groups:
        group["lr"] = lr * group["scale"]
    out, aux = run(idx)
    err = (out - x).abs()
    loss = (err + err.pow(2)).mean() + err.flatten(1).topk(err[0].numel() // 20, dim=1).values.mean() + aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    if (step + 1) % (a.steps // 4) == 0:
        psnr, shape = score()
        print(json.dumps({"step": step + 1, "minutes": round((time.time() - t0) / 60, 1), "psnr": psnr,
                          "shape": shape}), flush=True)
