"""Aspect-ratio buckets: every batch holds clips of one (width, height, frames).

Frame counts are 1 + f*k for the tokenizer's time factor f (the causal tokenizer codes the
first frame alone, then groups of f): `check_frames` is that rule, for every caller.
Sizes are multiples of `factor` (the tokenizer's spatial factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16))


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


def check_frames(frames: int, time_factor: int, what: str = "frames") -> int:
    """`frames` if a tokenizer with this time factor can code that many frames (1 + f*k)."""
    f = time_factor
    if frames < 1 or (frames - 1) % f:
        raise ValueError(f"{what} is {frames}; the tokenizer (time factor {f}) needs 1 + {f}k frames "
                         f"(1, {1 + f}, {1 + 2 * f}, {1 + 3 * f}, ...)")
    return frames


def make_buckets(areas=(64 * 64,), frames=(17,), factor: int = 8, aspects=ASPECTS, time_factor: int = 4) -> list[Bucket]:
    """One bucket per (area, aspect, frames): width * height ~= area, width / height ~= aspect,
    both multiples of `factor`, frames 1 + time_factor*k. E.g. area 64*64 -> 64x64, 72x56 (4:3),
    56x72, 80x56 (3:2)..."""
    for f in frames:
        check_frames(f, time_factor, "a bucket's frame count")
    out = set()
    for area in areas:
        for a, b in aspects:
            w = max(factor, round(math.sqrt(area * a / b) / factor) * factor)
            h = max(factor, round(math.sqrt(area * b / a) / factor) * factor)
            out.update(Bucket(w, h, f) for f in frames)
    return sorted(out)


def nearest_bucket(width: int, height: int, buckets, *, max_frames: int | None = None) -> Bucket:
    """The bucket closest in aspect ratio (log scale), then in area; among its frame counts the
    longest that fits `max_frames` (the smallest when none fits)."""
    if not buckets:
        raise ValueError("no buckets given")

    def shape_cost(b: Bucket):
        return (round(abs(math.log(b.width / b.height) - math.log(width / height)), 6),
                abs(math.log(b.width * b.height / (width * height))))

    best = min(buckets, key=shape_cost)
    same = sorted(b.frames for b in buckets if (b.width, b.height) == (best.width, best.height))
    fits = [f for f in same if max_frames is None or f <= max_frames]
    return Bucket(best.width, best.height, fits[-1] if fits else same[0])


def crop_box(width: int, height: int, bucket: Bucket, generator: torch.Generator | None):
    """(x0, y0, w, h): the source region that, scaled, covers the bucket exactly (aspect kept).
    Random position with a generator (training), centred without (evaluation)."""
    scale = max(bucket.width / width, bucket.height / height)
    cw = min(width, round(bucket.width / scale))
    ch = min(height, round(bucket.height / scale))
    if generator is None:
        return (width - cw) // 2, (height - ch) // 2, cw, ch
    u = torch.rand(2, generator=generator)
    return int(u[0] * (width - cw + 1)), int(u[1] * (height - ch + 1)), cw, ch


def resize_crop(video: torch.Tensor, bucket: Bucket, generator: torch.Generator | None = None) -> torch.Tensor:
    """(C, T, H, W) -> (C, T, bucket.height, bucket.width): crop to the bucket's aspect (random
    with a generator, centred without), then resize (bilinear, antialiased). Float in, float out;
    uint8 in, uint8 out."""
    h, w = video.shape[-2:]
    x0, y0, cw, ch = crop_box(w, h, bucket, generator)
    crop = video[:, :, y0:y0 + ch, x0:x0 + cw]
    if (ch, cw) == (bucket.height, bucket.width):
        return crop.contiguous()
    frames = rearrange(crop, "c t h w -> t c h w")
    is_u8 = frames.dtype == torch.uint8
    out = F.interpolate(frames.float(), size=(bucket.height, bucket.width), mode="bilinear",
                        antialias=True, align_corners=False)
    if is_u8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return rearrange(out, "t c h w -> c t h w").contiguous()
