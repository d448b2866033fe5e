"""Image probe: does an object's shape survive the demo preset's encoder and decoder at all?
Trains the preset's Encoder/Decoder on single 64x64 frames (batch 32, L1 + L2 + the worst 5 % of
pixels, optionally weighted towards the object as in decoder_probe.py (--obj, --edge), AdamW with fp32 weights under bf16 autocast, cosine lr) for N minutes, with the FSQ
quantizer (--quant fsq) or without any (--quant none: continuous latents, no bottleneck but the
latent's channels), then reads the shape of the object in frames 0, 8 and 16 of 48 held-out
single-object clips with the `vidlm eval world` detector, on the rendered frames (truth) and on
the reconstructions. One JSON line per run goes to OUT/image.jsonl (docs/experiments.md).

    python docs/experiments/image_probe.py --name fsq --quant fsq --minutes 7 --out exp
    python docs/experiments/image_probe.py --name d16 --quant none --model '{"latent_dim": 16}'
    python docs/experiments/image_probe.py --name patch --arch patch --width 128 --depth 1
    python docs/experiments/image_probe.py --name mask --mask 1 --minutes 30
    python docs/experiments/image_probe.py --name refine4 --refine 2 --minutes 40
    python docs/experiments/image_probe.py --name enc11 --refine 2 --minutes 40 --enc-blocks 1,1

--mask W adds a fourth decoder channel trained (BCE, weight W) to draw the object's mask, so the
codes must say where its edge runs; "shape_mask" reads the shape from that drawn mask.

--refine R codes two sizes (the tokenizer's `refine_rows`, vidlm.tokenizer.model.TwoLevel): a code
per 8x8-pixel cell, and four finer codes in 2R of them (R rows of 8), chosen from the coarse codes.
(The ninth round's rows that chose the cells by their error were made with commit 81e605d.)

--arch patch swaps the preset's strided convolutions for a patch codec of the same cell size:
each 8x8-pixel cell's 192 values go in as channels (pixel unshuffle), through 1x1 and 3x3
convolutions at the cell grid to the latent, and back out through a 1x1 convolution to the
cell's 192 values (pixel shuffle), so every output pixel is a linear read of its cell's feature.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from probe_common import median_distance, object_weights, parse, report, training_clips
from torch import nn
from vidlm.data.synthetic import classify_shape
from vidlm.tokenizer.config import TokenizerConfig
from vidlm.tokenizer.model import ConvBlock, FrameNorm, VideoTokenizer, _widths

from vidlm.evaluate import heldout_clips, observe

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--minutes", type=float, default=7)
p.add_argument("--model", default="{}", help="TokenizerConfig overrides of the demo preset (JSON)")
p.add_argument("--quant", choices=("fsq", "none"), default="fsq")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--obj", type=float, default=0.0, help="extra weight of object pixels (dilated by one)")
p.add_argument("--edge", type=float, default=0.0, help="extra weight of the object's boundary pixels")
p.add_argument("--mask", type=float, default=0.0, help="weight of a BCE loss on a fourth decoder channel that "
               "draws the object's mask (its pixels at alpha >= 0.5); the encoder sees RGB only")
p.add_argument("--arch", choices=("preset", "patch"), default="preset")
p.add_argument("--width", type=int, default=128, help="--arch patch: channels at the cell grid")
p.add_argument("--depth", type=int, default=1, help="--arch patch: residual blocks on each side")
p.add_argument("--enc-blocks", default="", help="residual blocks added to each encoder level, finest grid first "
               "(\"1,1\": one at 32x32 before the downsampling, one at 16x16 after it)")
p.add_argument("--dec-blocks", default="", help="the same for the decoder (\"0,2\": two at 16x16, before the upsampling)")
p.add_argument("--norm", choices=("frame", "pixel", "none"), default="frame", help="the coders' normalization: the "
               "preset's GroupNorm over each frame, a LayerNorm over the channels of each pixel, or none")
p.add_argument("--refine", type=int, default=0, help="two-level codes: one code per 8x8-pixel cell, and four "
               "more (one per 4x4 pixels) in 2R of them (the tokenizer's refine_rows)")
a = parse(p, batch=32)
frames = training_clips(a.out, a.clips).flatten(0, 1)  # (N*T,H,W,3) uint8
overrides = json.loads(a.model) | ({"in_channels": 4} if a.mask else {})
if a.refine:  # the preset's codec at 4x4-pixel cells, its latent widened to carry both levels
    overrides |= {"refine_rows": a.refine, "channel_mult": [1, 2], "latent_dim": 16}
m = VideoTokenizer(TokenizerConfig.from_name("demo", **overrides))
for coder, counts in ((m.encoder, a.enc_blocks), (m.decoder, a.dec_blocks)):  # levels: finest grid first
    levels = coder.blocks if coder is m.encoder else coder.blocks[::-1]
    for level, n, w in zip(levels, (int(v) for v in counts.split(",") if counts), _widths(m.cfg)):
        for _ in range(n):
            level.insert(0, ConvBlock(w, w, m.cfg.norm_groups, residual=True, kt=m.cfg.temporal_kernel))


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of (B,C,T,H,W): no statistics across space."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


if a.norm != "frame":
    for parent in list(m.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FrameNorm):
                setattr(parent, name, PixelNorm(child.num_channels) if a.norm == "pixel" else nn.Identity())


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class Patch(nn.Module):
    """encode: (B,3,1,H,W) -> (B,latent,1,H/f,W/f), pixel unshuffle first; decode: the reverse,
    pixel shuffle last. Convolutions at the cell grid in between."""

    def __init__(self, f, width, depth, cin, cout, encode):
        super().__init__()
        self.f, self.encode = f, encode
        self.net = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), *[Res(width) for _ in range(depth)],
                                 nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, cout, 1))

    def forward(self, x):
        x = x[:, :, 0]
        if self.encode:
            return self.net(F.pixel_unshuffle(x, self.f))[:, :, None]
        return F.pixel_shuffle(self.net(x), self.f)[:, :, None]


if a.arch == "patch":
    f, d = m.cfg.spatial_factor, m.cfg.latent_dim
    m.encoder, m.decoder = Patch(f, a.width, a.depth, 3 * f * f, d, True), Patch(f, a.width, a.depth, d, 3 * f * f, False)


def decode_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,3,1,H,W) -> the decoder's output (RGB, and with --mask the mask's logits after it), and
    the quantizer's aux loss (--refine: the cell scorer's, while training)."""
    if a.mask:  # the fourth input channel is always zero: the encoder is not shown the mask
        x = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
    aux = torch.zeros(())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m.encoder(x)
        if a.refine:
            z, _, aux = m.quantizer(z, x, m.decoder if m.training else None)
        elif a.quant == "fsq":
            z = m.quantizer(z)[0]
        return m.decoder(z).float(), aux


def object_mask(x: torch.Tensor) -> torch.Tensor:
    """(B,3,1,H,W) -> (B,1,H,W) float: the pixels at least half-way from the frame's median colour
    to its most distant pixel (one object on a plain background: alpha >= 0.5)."""
    d = median_distance(x)[:, :, 0]  # (B,1,H,W)
    return (d > 0.5 * d.flatten(1).amax(1)[:, None, None, None].clamp(min=0.1)).float()


opt = torch.optim.AdamW(m.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
g = torch.Generator().manual_seed(0)
t0, step, total = time.time(), 0, 60 * a.minutes
while time.time() - t0 < total:
    x = frames[torch.randint(0, len(frames), (a.batch,), generator=g)].permute(0, 3, 1, 2)[:, :, None].float() / 127.5 - 1
    lr = a.lr * min(1, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * (time.time() - t0) / total))
    for group in opt.param_groups:
        group["lr"] = lr
    out, aux = decode_all(x)
    err = (out[:, :3] - x).abs()
    weight = object_weights(x, a.obj, a.edge)
    loss = ((err + err.pow(2)) * weight).mean() / weight.mean()
    loss = loss + err.flatten(1).topk(err[0].numel() // 20, dim=1).values.mean() + aux
    if a.mask:
        loss = loss + a.mask * F.binary_cross_entropy_with_logits(out[:, 3], object_mask(x))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    step += 1
m.eval()
truth, rec, psnr, drawn = [], [], [], []
with torch.no_grad():
    for video, _, world in heldout_clips(48, 0):
        for k in (0, 8, 16):
            x = video[None, :, k : k + 1]
            out = decode_all(x)[0]
            r = out[:, :3].clamp(-1, 1)
            psnr.append(float(10 * torch.log10(4 / (r - x).pow(2).mean())))
            shape, bg = world["objects"][0]["shape"], world["background"]
            seen_t, seen_r = observe(x[0], bg)[0], observe(r[0], bg)[0]
            truth.append(bool(seen_t) and seen_t["shape"] == shape)
            rec.append(bool(seen_r) and seen_r["shape"] == shape)
            if a.mask:  # the shape of the mask the decoder drew, read as the detector reads fill
                ys, xs = torch.nonzero(out[0, 3, 0] > 0, as_tuple=True)
                fill = len(ys) / int((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)) if len(ys) else 0.0
                drawn.append(classify_shape(float(fill)) == shape)
row = {"name": a.name, "steps": step, "psnr": round(float(np.mean(psnr)), 2), "shape_truth": round(float(np.mean(truth)), 3),
       "shape_rec": round(float(np.mean(rec)), 3), **({"shape_mask": round(float(np.mean(drawn)), 3)} if drawn else {})}
report(row, a, "image.jsonl")
