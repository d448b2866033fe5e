"""How sharp must a reconstruction be for the detector to read its shape? On the frames that
memorise_probe.py and image_probe.py score (frames 0, 8 and 16 of the 48 held-out clips of
`vidlm eval world`): the PSNR and the share of frames whose shape the detector reads, for the
rendered frames, the same frames under a Gaussian blur of each sigma (pixels), and under Gaussian
noise of each standard deviation (in [-1, 1] units). A tokenizer's (PSNR, shape) sits between the
two curves: blur costs shape at a PSNR where noise costs none. docs/experiments.md, twenty-first round.

    python docs/experiments/detector_floor.py
    python docs/experiments/detector_floor.py --blur 0.3 0.5 0.7 1.0 --noise 0.02 0.05 0.1
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from vidlm.evaluate import heldout_clips, observe

p = argparse.ArgumentParser()
p.add_argument("--blur", type=float, nargs="*", default=[0.3, 0.5, 0.7, 1.0])
p.add_argument("--noise", type=float, nargs="*", default=[0.02, 0.05, 0.1])
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
clips = heldout_clips(48, 0)
xs = torch.cat([v[None, :, k] for v, _, _ in clips for k in (0, 8, 16)])  # (144, 3, H, W)
worlds = [w for _, _, w in clips for _ in (0, 8, 16)]


def read(frames: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR against the rendered frames (capped at 100 dB), and the share read as their shape."""
    psnr, ok = [], []
    for r, x, w in zip(frames.clamp(-1, 1), xs, worlds):
        psnr.append(min(100.0, float(10 * torch.log10(4 / (r - x).pow(2).mean().clamp_min(1e-12)))))
        seen = observe(r[:, None], w["background"])[0]
        ok.append(bool(seen) and seen["shape"] == w["objects"][0]["shape"])
    return round(float(np.mean(psnr)), 1), round(float(np.mean(ok)), 3)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, 7): separable, per channel
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.transpose(2, 3), groups=3)


rows = [("rendered", xs)] + [(f"blur sigma {s}", blur(xs, s)) for s in a.blur]
rows += [(f"noise {n}", xs + n * torch.randn_like(xs)) for n in a.noise]
print("| frames | PSNR | shape |\n|---|---|---|")
for name, frames in rows:
    print("| {} | {} | {} |".format(name, *read(frames)))
