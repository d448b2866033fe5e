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

import torch
import torch.nn.functional as F
from probe_common import psnr_and_shape, scored_frames

p = argparse.ArgumentParser()
p.add_argument("--blur", type=float, nargs="*", default=[0.3, 0.5, 0.7, 1.0])
p.add_argument("--noise", type=float, nargs="*", default=[0.02, 0.05, 0.1])
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
xs, worlds = scored_frames()  # (144, 3, 1, H, W)


def read(frames: torch.Tensor) -> tuple[float, float]:
    psnr, shape = psnr_and_shape(frames, xs, worlds)
    return round(psnr, 1), round(shape, 3)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, 7): separable, per channel
    x = F.conv2d(F.pad(x[:, :, 0], (3, 3, 0, 0), mode="replicate"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.transpose(2, 3), groups=3)[:, :, None]


rows = [("rendered", xs)] + [(f"blur sigma {s}", blur(xs, s)) for s in a.blur]
rows += [(f"noise {n}", xs + n * torch.randn_like(xs)) for n in a.noise]
print("| frames | PSNR | shape |\n|---|---|---|")
for name, frames in rows:
    print("| {} | {} | {} |".format(name, *read(frames)))
