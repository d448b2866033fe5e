"""Reconstruction metrics over videos (B,C,T,H,W) in [-1, 1], averaged over frames."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vidlm.logging import entropy


def _frames01(x: Tensor) -> Tensor:
    # (B,C,T,H,W) in [-1,1] -> (B*T, C, H, W) in [0,1]
    return rearrange((x.float().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t) c h w")


def psnr_per_frame(recon: Tensor, target: Tensor) -> Tensor:
    """(B*T,) PSNR in dB of each frame, pixel range [0, 1] (identical frames: 100 dB)."""
    mse = (_frames01(recon) - _frames01(target)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def psnr(recon: Tensor, target: Tensor) -> Tensor:
    """Mean over frames of the per-frame PSNR (dB)."""
    return psnr_per_frame(recon, target).mean()


def _gaussian(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_frame(recon: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """(B*T,) SSIM of each frame (Wang et al. 2004: Gaussian window, C1=(0.01)^2, C2=(0.03)^2 on
    [0,1] pixels, mean over channels and valid positions). The window shrinks for tiny frames."""
    a, b = _frames01(recon), _frames01(target)
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2  # odd
    g = _gaussian(window, sigma).to(a.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(x):
        return F.conv2d(x, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def ssim(recon: Tensor, target: Tensor) -> Tensor:
    """Mean over frames of the per-frame SSIM."""
    return ssim_per_frame(recon, target).mean()


def code_stats(counts: Tensor) -> dict[str, float]:
    """Codebook usage (fraction of codes used) and perplexity (exp of the code entropy) from a
    histogram of code ids (codebook_size,)."""
    return {"usage": float((counts > 0).double().mean()), "perplexity": math.exp(entropy(counts))}
