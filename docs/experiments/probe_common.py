"""What the probe scripts share: their common arguments, the training clips (the clips of
`vidlm data synth --seed 0`, rendered once and cached as OUT/clipsN.npy), the weights that
favour an object's pixels, and the ninth round's two-level codes (TwoLevel)."""
import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from vidlm.data.synthetic import clip_seed, render_clip
from vidlm.tokenizer.config import TokenizerConfig
from vidlm.tokenizer.model import Quantizer


def parse(p: argparse.ArgumentParser, batch: int) -> argparse.Namespace:
    """Add --batch, --clips, --threads, --out; parse; one seed, `threads` threads, OUT made."""
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("exp"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    a.out.mkdir(parents=True, exist_ok=True)
    return a


def training_clips(out: Path, num: int, mp4: bool = False) -> torch.Tensor:
    """(num, T, H, W, 3) uint8; mp4: through the shards' H.264 round trip."""
    cache = out / f"clips{num}{'_mp4' if mp4 else ''}.npy"
    if not cache.exists():
        vids = []
        for i in range(num):
            v, _, _ = render_clip(clip_seed(0, i))
            if mp4:
                import io

                import av
                from vidlm.data.encode import encode_mp4
                with av.open(io.BytesIO(encode_mp4(v, 8.0))) as c:
                    v = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
            vids.append(v)
        np.save(str(cache) + ".tmp.npy", np.stack(vids))
        Path(str(cache) + ".tmp.npy").rename(cache)
    return torch.from_numpy(np.load(cache))


def report(row: dict, a: argparse.Namespace, file: str) -> None:
    """Print one result row (with the run's arguments) and append it to OUT/file as a JSON line."""
    row = {**row, "args": {k: str(v) for k, v in vars(a).items()}}
    print(json.dumps(row), flush=True)
    with open(a.out / file, "a") as f:
        f.write(json.dumps(row) + "\n")


def median_distance(x: torch.Tensor) -> torch.Tensor:
    """x (B,C,T,H,W) -> (B,1,T,H,W): each pixel's largest channel difference from the clip's
    median colour (its background, where one object is drawn on a plain one)."""
    return (x - x.flatten(2).median(-1).values[..., None, None, None]).abs().amax(1, keepdim=True)


def object_weights(x: torch.Tensor, obj: float, edge: float) -> torch.Tensor:
    """x (B,C,T,H,W) in [-1,1] -> per-pixel loss weights (B,1,T,H,W): 1, plus `obj` on pixels that
    differ from the clip's median colour (dilated by one pixel), plus `edge` on the object's
    boundary (dilated minus eroded)."""
    mask = (median_distance(x) > 0.05).float()
    grown = F.max_pool3d(mask, (1, 3, 3), 1, (0, 1, 1))
    return 1 + obj * grown + edge * (grown + F.max_pool3d(-mask, (1, 3, 3), 1, (0, 1, 1)))


class TwoLevel(nn.Module):
    """Codes of two sizes, from an encoder's latent (cfg.latent_dim channels) at 4x4-pixel cells,
    frame by frame: a coarse code per 8x8-pixel cell (a 2x2 strided convolution, FSQ of
    cfg.levels) and a fine code per 4x4 cell (1x1, the same FSQ). The decoder's input is the
    coarse code brought back to the fine grid, plus the fine codes only in the `k` 8x8 cells of
    each frame chosen: those the coarse codes alone draw worst (select "error", which needs the
    frame), or those a small network reading the coarse codes alone predicts to be worst (select
    "codes": a sampler that has made a frame's coarse codes knows where its fine ones go, so the
    LM needs no position tokens; while training, the network's loss is left in `aux`)."""

    def __init__(self, cfg: TokenizerConfig, k: int, select: str = "error", width: int = 64):
        super().__init__()
        d, n = cfg.latent_dim, len(cfg.levels)
        self.k, self.select = k, select
        self.coarse_in = nn.Sequential(nn.Conv2d(d, width, 2, 2), nn.SiLU(), nn.Conv2d(width, n, 1))
        self.fine_in = nn.Conv2d(d, n, 1)
        codes = dataclasses.replace(cfg, latent_dim=n)  # the FSQ alone, no projections
        self.coarse_q, self.fine_q = Quantizer(codes), Quantizer(codes)
        self.coarse_out = nn.Sequential(nn.Conv2d(n, width, 1), nn.SiLU(), nn.ConvTranspose2d(width, d, 2, 2))
        self.fine_out = nn.Conv2d(n, d, 1)
        if select == "codes":
            self.scorer = nn.Sequential(nn.Conv2d(n, width, 3, padding=1), nn.SiLU(),
                                        nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 1, 1))
        self.aux = torch.zeros(())

    def forward(self, z: torch.Tensor, x: torch.Tensor, decoder) -> torch.Tensor:
        # z (B,d,T,H,W) at 4x4 cells, x (B,3,T,4H,4W) the frames -> the decoder's input (B,d,T,H,W)
        t = z.shape[2]
        frames = rearrange(z, "b d t h w -> (b t) d h w")
        codes = self.coarse_q(self.coarse_in(frames)[:, :, None])[0][:, :, 0]
        coarse = self.coarse_out(codes)
        fine = self.fine_out(self.fine_q(self.fine_in(frames)[:, :, None])[0][:, :, 0])
        if self.select == "error" or self.training:
            with torch.no_grad():  # the coarse codes' own error, per 8x8-pixel cell of each frame
                drawn = decoder(rearrange(coarse, "(b t) d h w -> b d t h w", t=t)).float()[:, :3]
                err = F.avg_pool2d(rearrange((drawn - x[:, :3]).abs().sum(1), "b t h w -> (b t) h w")[:, None], 8)
        if self.select == "codes":
            rank = self.scorer(codes.detach()).float()
            if self.training:
                self.aux = F.mse_loss(rank, err.clamp(min=1e-3).log())
            rank = rank.detach()
        else:
            rank = err
        keep = torch.zeros_like(rank).flatten(1)
        keep.scatter_(1, rank.flatten(1).topk(self.k, dim=1).indices, 1.0)
        keep = F.interpolate(keep.view_as(rank).to(fine.dtype), scale_factor=2)
        return rearrange(coarse + keep * fine, "(b t) d h w -> b d t h w", t=t)
