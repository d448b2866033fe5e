"""The causal 3D VQGAN video tokenizer (MAGVIT-v2 style): video <-> integer codes.

    tok = VideoTokenizer(TokenizerConfig.from_name("demo"))
    ids = tok.encode(video)      # (B,3,T,H,W) float in [-1,1], T = 1 + f*k -> (B, 1+k, H/8, W/8) int64 (time factor f)
    rec = tok.decode(ids)        # -> (B,3,T,H,W) float (about [-1,1]; clamp for display)

Architecture: patchify, then conv blocks (causal conv -> per-frame GroupNorm -> SiLU) with
strided blocks down to the latent grid, a 1x1 conv to the quantizer; the decoder mirrors it with
nearest-neighbour upsampling in space and depth-to-time in time, and `num_res_blocks` residual
conv blocks per level in both for the bigger presets.

Causality: every temporal convolution pads (or caches) only the past, normalization is per frame
and temporal down/up-sampling keeps frame 0 alone, so latent frame k depends on frames
0..4k only. An image is a one-frame video and its codes equal the first-frame codes of every
video that starts with it. Streaming: each causal conv keeps the last `kernel - stride` frames
of its input in a cache dict, so `encode_chunked` / `decode_chunked` compute exactly what the
one-shot call computes, in pieces.

Two-level codes (`refine_rows` r > 0, `TwoLevel`): the encoder stops at half-size cells, each
frame gets a code per cell and r more rows of finer codes where its coarse codes draw worst, so
ids are (B, 1+k, H/s + r, W/s): still a plain grid to the LM and to every task.

Weights: `save_pretrained(dir)` writes model.safetensors + config.json; `from_pretrained(dir)`
reads them back without unpickling anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vidlm.data.buckets import check_frames

from .config import LossConfig, TokenizerConfig
from .losses import pixel_errors

FORMAT = "vidlm-video-tokenizer"
Cache = dict  # {module: Tensor}: the past frames each causal conv needs for the next chunk


class CausalConv3d(nn.Module):
    """3D conv that sees only the past in time: pads kt-1 copies of frame 0 on the first call,
    prepends the cached last kt-stride input frames on later (streaming) calls."""

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), stride=(1, 1, 1)):
        super().__init__()
        kt, kh, kw = kernel
        self.kt, self.st = kt, stride[0]
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=(0, kh // 2, kw // 2))

    def forward(self, x: Tensor, cache: Cache | None = None, weight: Tensor | None = None) -> Tensor:
        # x (B,C,T,H,W) -> (B,C',T',H',W'); `weight` replaces the conv's own (adaptive GAN weight)
        past = None if cache is None else cache.get(self)
        if past is None:
            past = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
        x = torch.cat([past, x], 2)
        if cache is not None:
            cache[self] = x[:, :, x.shape[2] - (self.kt - self.st):]
        if weight is not None:
            c = self.conv
            return F.conv3d(x, weight, c.bias, c.stride, c.padding)
        return self.conv(x)


class FrameNorm(nn.GroupNorm):
    """GroupNorm over (C, H, W) of each frame separately: no statistics across time."""

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[2]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=t)


class ConvBlock(nn.Module):
    """Causal conv -> per-frame GroupNorm -> SiLU; with `residual`, x + block(x) (same widths)."""

    def __init__(self, cin: int, cout: int, groups: int, stride=(1, 1, 1), residual: bool = False, kt: int = 3):
        super().__init__()
        self.conv, self.norm = CausalConv3d(cin, cout, (kt, 3, 3), stride), FrameNorm(groups, cout)
        self.residual = residual  # same widths, stride 1

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        h = F.silu(self.norm(self.conv(x, cache)))
        return x + h if self.residual else h


class Down(ConvBlock):
    """A strided ConvBlock: space /2 and/or time /2 (frame 0 stays alone: 1+2m -> 1+m)."""

    def __init__(self, cin: int, cout: int, groups: int, time: bool, space: bool, kt: int = 3):
        super().__init__(cin, cout, groups, stride=(2 if time else 1, 2 if space else 1, 2 if space else 1), kt=kt)


class Up(nn.Module):
    """Space x2 by nearest neighbour, then one causal conv -> norm -> SiLU whose conv also makes
    time x2 (depth-to-time: 2x the channels, split into two frames; latent frame 0's first copy
    is dropped: 1+m -> 1+2m). No linear layer sits between blocks: measured on the shapes world,
    a separate time conv before the spatial one learned ~5 dB slower in the first 300 steps."""

    def __init__(self, cin: int, cout: int, groups: int, time: bool, space: bool, kt: int = 3):
        super().__init__()
        self.time, self.space = time, space
        self.conv, self.norm = CausalConv3d(cin, cout * (2 if time else 1), (kt, 3, 3)), FrameNorm(groups, cout)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        if self.space:
            t = x.shape[2]
            x = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=2.0, mode="nearest")
            x = rearrange(x, "(b t) c h w -> b c t h w", t=t)
        x = self.conv(x, cache)
        if self.time:
            first = cache is None or self not in cache
            x = rearrange(x, "b (s c) t h w -> b c (t s) h w", s=2)
            if first:  # latent frame 0 is one frame, not two
                x = x[:, :, 1:]
            if cache is not None:
                cache[self] = True
        return F.silu(self.norm(x))


def _widths(cfg: TokenizerConfig) -> list[int]:
    return [cfg.channels * m for m in cfg.channel_mult]


def _down_kinds(cfg: TokenizerConfig) -> list[tuple[bool, bool]]:
    """(time, space) of each downsampling step: space first, time in the last steps."""
    steps = len(cfg.channel_mult) - 1
    return [(i >= steps - cfg.time_steps, i < cfg.space_steps) for i in range(steps)]


class Encoder(nn.Module):
    """patchify -> ConvBlock -> per level: num_res_blocks residual ConvBlocks, Down -> 1x1 conv."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        w, g, p, kt = _widths(cfg), cfg.norm_groups, cfg.patch, cfg.temporal_kernel
        self.patch = p
        self.conv_in = ConvBlock(cfg.in_channels * p * p, w[0], g, kt=kt)
        self.blocks = nn.ModuleList()
        kinds = _down_kinds(cfg)
        for i in range(len(w)):
            level = nn.ModuleList(ConvBlock(w[i], w[i], g, residual=True, kt=kt) for _ in range(cfg.num_res_blocks))
            if i < len(kinds):
                level.append(Down(w[i], w[i + 1], g, *kinds[i], kt=kt))
            self.blocks.append(level)
        self.conv_out = CausalConv3d(w[-1], cfg.latent_dim, kernel=(1, 1, 1))

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        # x (B,C,T,H,W) -> z (B,D,t,h,w)
        x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=self.patch, q=self.patch)
        h = self.conv_in(x, cache)
        for level in self.blocks:
            for block in level:
                h = block(h, cache)
        return self.conv_out(h, cache)


class Decoder(nn.Module):
    """conv -> per level (reversed): num_res_blocks residual ConvBlocks, Up -> conv -> unpatchify."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        w, g, p, kt = _widths(cfg), cfg.norm_groups, cfg.patch, cfg.temporal_kernel
        self.patch, self.mixture = p, cfg.out_mixture
        self.conv_in = CausalConv3d(cfg.latent_dim, w[-1], (kt, 3, 3))
        self.blocks = nn.ModuleList()
        kinds = _down_kinds(cfg)
        for i in reversed(range(len(w))):
            level = nn.ModuleList(ConvBlock(w[i], w[i], g, residual=True, kt=kt) for _ in range(cfg.num_res_blocks))
            if i > 0:
                level.append(Up(w[i], w[i - 1], g, *kinds[i - 1], kt=kt))
            self.blocks.append(level)
        per_pixel = (cfg.in_channels + 1) * cfg.out_mixture if cfg.out_mixture else cfg.in_channels
        self.conv_out = CausalConv3d(w[0], per_pixel * p * p, (kt, 3, 3))

    def features(self, z: Tensor, cache: Cache | None = None) -> Tensor:
        # z (B,D,t,h,w) -> the last layer's input (B,C0,T,H/p,W/p)
        h = self.conv_in(z, cache)
        for level in self.blocks:
            for block in level:
                h = block(h, cache)
        return h

    def head(self, feats: Tensor, cache: Cache | None = None, weight: Tensor | None = None) -> Tensor:
        # the last layer: feats -> x (B,C,T,H,W); `weight` replaces conv_out's (adaptive GAN weight)
        x = rearrange(self.conv_out(feats, cache, weight), "b (c p q) t h w -> b c t (h p) (w q)",
                      p=self.patch, q=self.patch)
        if not self.mixture:
            return x
        x = rearrange(x, "b (k c) t h w -> b k c t h w", k=self.mixture)  # per component: C colour channels, a logit
        return (x[:, :, :-1].float() * x[:, :, -1:].float().softmax(1)).sum(1).to(x.dtype)

    def forward(self, z: Tensor, cache: Cache | None = None) -> Tensor:
        return self.head(self.features(z, cache), cache)


class Quantizer(nn.Module):
    """vector-quantize-pytorch's FSQ / LFQ / VQ behind one interface over (B,D,t,h,w) latents."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.kind = cfg.quantizer
        if cfg.quantizer == "fsq":
            from vector_quantize_pytorch import FSQ

            self.q = FSQ(levels=list(cfg.levels), dim=cfg.latent_dim)
        elif cfg.quantizer == "lfq":
            from vector_quantize_pytorch import LFQ

            self.q = LFQ(dim=cfg.latent_dim, codebook_size=cfg.codebook_size,
                         entropy_loss_weight=cfg.lfq_entropy_weight)
        else:
            from vector_quantize_pytorch import VectorQuantize

            self.q = VectorQuantize(dim=cfg.latent_dim, codebook_size=cfg.codebook_size,
                                    commitment_weight=cfg.vq_commitment_weight, decay=0.99)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # z (B,D,t,h,w) -> zq (B,D,t,h,w), ids (B,t,h,w) int64, aux loss ()
        _, _, t, h, w = z.shape
        out = self.q(rearrange(z, "b d t h w -> b (t h w) d"))
        zq, ids = out[0], out[1]
        aux = out[2] if len(out) > 2 and out[2] is not None else zq.new_zeros(())
        zq = rearrange(zq, "b (t h w) d -> b d t h w", t=t, h=h, w=w)
        return zq, rearrange(ids.long(), "b (t h w) -> b t h w", t=t, h=h, w=w), aux.sum()

    def embed(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        # ids (B,t,h,w) -> zq (B,D,t,h,w) in the model's dtype
        _, t, h, w = ids.shape
        flat = rearrange(ids, "b t h w -> b (t h w)")
        # The library computes codes in fp32 and projects them (if latent_dim != len(levels))
        # with our (maybe bf16) weights.
        with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
            zq = self.q.get_output_from_indices(flat) if self.kind == "vq" else self.q.indices_to_codes(flat)
        return rearrange(zq.to(dtype), "b (t h w) d -> b d t h w", t=t, h=h, w=w)


class TwoLevel(nn.Module):
    """Two-level codes (cfg.refine_rows = r > 0), frame by frame, over the encoder's latent at
    cells of half the spatial factor; same interface as Quantizer, ids on the grid (B,t,h+r,w).

    - coarse: one code per spatial_factor cell (2x2 strided conv -> FSQ of cfg.levels): rows 0..h-1;
    - fine: one code per half cell (1x1 conv -> the same FSQ), kept only in the K = r*w/4 coarse
      cells a small scorer reading the coarse codes predicts to be drawn worst; their 2x2 codes,
      cell by cell in raster order, fill rows h..h+r-1;
    - the decoder reads the coarse code brought back to the fine grid, plus the kept fine codes.
    The chosen cells follow from the coarse codes alone, so ids are all a decoder (or an LM's
    sampler) needs. While training, the scorer learns the log of each cell's error when the coarse
    codes are drawn alone (`forward` with the frames and the decoder): the aux loss, with, at
    cfg.coarse_weight > 0, the error of that drawing itself.
    docs/experiments.md, "Shape, ninth round": 80 codes a 64x64 frame read shapes as 256 do.
    """

    def __init__(self, cfg: TokenizerConfig, width: int = 64):
        super().__init__()
        d, n = cfg.latent_dim, len(cfg.levels)
        self.rows, self.coarse_weight = cfg.refine_rows, cfg.coarse_weight
        self.coarse_in = nn.Sequential(nn.Conv2d(d, width, 2, 2), nn.SiLU(), nn.Conv2d(width, n, 1))
        self.fine_in = nn.Conv2d(d, n, 1)
        codes = dataclasses.replace(cfg, latent_dim=n, refine_rows=0, coarse_weight=0.0,
                                    spatial_factor=cfg.spatial_factor // 2)  # FSQ alone
        self.coarse_q, self.fine_q = Quantizer(codes), Quantizer(codes)
        self.coarse_out = nn.Sequential(nn.Conv2d(n, width, 1), nn.SiLU(), nn.ConvTranspose2d(width, d, 2, 2))
        self.fine_out = nn.Conv2d(n, d, 1)
        self.scorer = nn.Sequential(nn.Conv2d(n, width, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 1, 1))

    def _cells(self, coarse: Tensor) -> tuple[Tensor, Tensor]:
        # coarse codes (N,n,h,w) -> the chosen cells (N,K) in raster order, and the scores (N,1,h,w)
        # the scorer's own dtype, never autocast's: encode and decode choose the same cells
        with torch.autocast(coarse.device.type, enabled=False):
            score = self.scorer(coarse.detach().to(self.scorer[0].weight.dtype)).float()
        k = self.rows * coarse.shape[-1] // 4
        return score.flatten(1).topk(k, dim=1).indices.sort(1).values, score

    def _latent(self, coarse: Tensor, fine: Tensor, cells: Tensor, t: int) -> Tensor:
        # codes (N,n,h,w), (N,n,2h,2w), cells (N,K) -> the decoder's input (B,d,t,2h,2w)
        keep = torch.zeros(coarse.shape[0], coarse.shape[2] * coarse.shape[3], device=coarse.device)
        keep = keep.scatter_(1, cells, 1.0).view(-1, 1, *coarse.shape[2:])
        keep = F.interpolate(keep, scale_factor=2.0).to(fine.dtype)
        zq = self.coarse_out(coarse) + keep * self.fine_out(fine)
        return rearrange(zq, "(b t) d h w -> b d t h w", t=t)

    def coarse_latent(self, coarse: Tensor, t: int) -> Tensor:
        """Coarse codes (N,n,h,w) -> the decoder's input with no fine codes (B,d,t,2h,2w): what
        the coarse codes draw alone, which the scorer's target (and coarse_weight) measures."""
        return rearrange(self.coarse_out(coarse), "(b t) d h w -> b d t h w", t=t)

    def forward(self, z: Tensor, frames: Tensor | None = None, decoder=None) -> tuple[Tensor, Tensor, Tensor]:
        # z (B,d,t,2h,2w) -> zq (B,d,t,2h,2w), ids (B,t,h+r,w), aux (given frames and decoder: the
        # scorer's loss, plus coarse_weight x what the coarse codes alone draw)
        t = z.shape[2]
        z = rearrange(z, "b d t h w -> (b t) d 1 h w")
        coarse, cids, _ = self.coarse_q(self.coarse_in(z[:, :, 0])[:, :, None])
        fine, fids, _ = self.fine_q(self.fine_in(z[:, :, 0])[:, :, None])
        coarse, fine, cids, fids = coarse[:, :, 0], fine[:, :, 0], cids[:, 0], fids[:, 0]
        cells, score = self._cells(coarse)
        aux = z.new_zeros((), dtype=torch.float32)
        if frames is not None and decoder is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.coarse_weight > 0):
                diff = decoder(self.coarse_latent(coarse, t)).float() - frames.float()
            if self.coarse_weight > 0:  # the recipes' pixel loss: L1 + L2 + the worst pixels' L1
                aux = aux + self.coarse_weight * sum(pixel_errors(diff, LossConfig.hard_fraction))
            with torch.no_grad():  # what the coarse codes alone draw: each cell's error is the scorer's target
                err = F.avg_pool2d(diff.abs().sum(1), frames.shape[-1] // coarse.shape[-1])
                # per latent frame: frame 0 alone, then the mean over the frames each later one codes
                if t > 1:
                    rest = rearrange(err[:, 1:], "b (t f) h w -> b t f h w", t=t - 1).mean(2)
                    err = torch.cat([err[:, :1], rest], 1)
                err = rearrange(err, "b t h w -> (b t) 1 h w")
            aux = aux + F.mse_loss(score, err.clamp(min=1e-3).log())
        kept = rearrange(fids, "n (h p) (w q) -> n (h w) (p q)", p=2, q=2).gather(1, cells[..., None].expand(-1, -1, 4))
        ids = torch.cat([cids, kept.reshape(cids.shape[0], self.rows, -1)], 1)
        return self._latent(coarse, fine, cells, t), rearrange(ids, "(b t) h w -> b t h w", t=t), aux

    def _coarse_cells(self, flat: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # ids (N,h+r,w) -> the coarse codes (N,n,h,w) and the chosen cells (N,K)
        coarse = self.coarse_q.embed(flat[:, None, : flat.shape[1] - self.rows], dtype)[:, :, 0]
        return coarse, self._cells(coarse)[0]

    def places(self, ids: Tensor) -> Tensor:
        """ids (N,h+r,w) -> where each code draws, (N,h+r,w,2) (y, x) in quarter cells: a coarse
        code at its cell's centre (4y+2, 4x+2), a fine code at its half cell's (4y+2p+1, 4x+2q+1)."""
        h, w = ids.shape[1] - self.rows, ids.shape[2]
        _, cells = self._coarse_cells(ids, self.coarse_out[0].weight.dtype)
        y, x = torch.meshgrid(torch.arange(h, device=ids.device), torch.arange(w, device=ids.device), indexing="ij")
        coarse = torch.stack([4 * y + 2, 4 * x + 2], -1).expand(ids.shape[0], h, w, 2)
        p, q = torch.tensor([1, 1, 3, 3], device=ids.device), torch.tensor([1, 3, 1, 3], device=ids.device)
        fine = torch.stack([4 * (cells // w)[..., None] + p, 4 * (cells % w)[..., None] + q], -1)  # (N,K,4,2)
        return torch.cat([coarse, fine.reshape(ids.shape[0], self.rows, w, 2)], 1)

    def embed(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        # ids (B,t,h+r,w) -> zq (B,d,t,2h,2w) in the model's dtype
        t, h, w = ids.shape[1], ids.shape[2] - self.rows, ids.shape[3]
        flat = rearrange(ids, "b t h w -> (b t) h w")
        coarse, cells = self._coarse_cells(flat, dtype)
        fids = torch.zeros(flat.shape[0], h * w, 4, dtype=flat.dtype, device=flat.device)
        fids.scatter_(1, cells[..., None].expand(-1, -1, 4), flat[:, h:].reshape(flat.shape[0], -1, 4))
        fids = rearrange(fids, "n (h w) (p q) -> n 1 (h p) (w q)", h=h, p=2)
        return self._latent(coarse, self.fine_q.embed(fids, dtype)[:, :, 0], cells, t)


class VideoTokenizer(nn.Module):
    """Causal 3D VQGAN: `encode` video -> ids, `decode` ids -> video (see the module doc)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = TwoLevel(cfg) if cfg.refine_rows else Quantizer(cfg)

    @property
    def codebook_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def factors(self) -> tuple[int, int]:
        """(time, space): 1 + time*k frames -> 1 + k latent frames; space pixels per code."""
        return self.cfg.time_factor, self.cfg.spatial_factor

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output weight (the adaptive GAN weight compares gradients there)."""
        return self.decoder.conv_out.conv.weight

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) pixels -> (t, h, w) codes (h counts the fine rows of two-level codes); a clear
        error for sizes the model can't code."""
        tf, sf = self.factors
        check_frames(frames, tf, "the video's frame count")
        if height % sf or width % sf or height < sf or width < sf:
            raise ValueError(f"video is {width}x{height}; width and height must be positive multiples "
                             f"of {sf} (resize or crop it, e.g. with vidlm.data.buckets.resize_crop)")
        self._check_cells(width // sf, f"video is {width}x{height}")
        return 1 + (frames - 1) // tf, height // sf + self.cfg.refine_rows, width // sf

    def _check_cells(self, w: int, what: str) -> None:
        r, sf = self.cfg.refine_rows, self.cfg.spatial_factor
        if r * w % 4:
            raise ValueError(f"{what}: with refine_rows={r}, rows of {w} codes do not hold whole cells of 4 fine "
                             f"codes; the width must be a multiple of {sf * 4 // math.gcd(r, 4)} pixels")

    @torch.no_grad()
    def code_places(self, ids: Tensor) -> Tensor:
        """Where each code of ids (..., h, w) draws: (..., h, w, 2) (y, x). Plain codes: their grid
        place; two-level codes: quarter cells (`TwoLevel.places`), the fine codes at the cells the
        coarse codes choose. The LM gives every code these coordinates (vidlm.lm.tasks)."""
        self._check_ids(ids.reshape(-1, 1, *ids.shape[-2:]))
        if not self.cfg.refine_rows:
            h, w = ids.shape[-2:]
            y, x = torch.meshgrid(torch.arange(h, device=ids.device), torch.arange(w, device=ids.device), indexing="ij")
            return torch.stack([y, x], -1).expand(*ids.shape, 2)
        flat = ids.reshape(-1, *ids.shape[-2:])
        return self.quantizer.places(flat).reshape(*ids.shape, 2)

    def frame_size(self, h: int, w: int) -> tuple[int, int]:
        """The inverse of latent_shape in space: a grid (h, w) -> (H, W) pixels."""
        return (h - self.cfg.refine_rows) * self.cfg.spatial_factor, w * self.cfg.spatial_factor

    def _check_video(self, video: Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected video (B,{self.cfg.in_channels},T,H,W), got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])

    def _check_ids(self, ids: Tensor) -> None:
        if ids.dim() != 4 or ids.dtype.is_floating_point or ids.shape[2] <= self.cfg.refine_rows:
            raise ValueError(f"expected integer ids (B,t,h,w), got {ids.dtype} {tuple(ids.shape)}")
        self._check_cells(ids.shape[3], f"ids {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"ids must be in [0, {self.codebook_size}), got [{int(ids.min())}, {int(ids.max())}]")

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training: video (B,C,T,H,W) in [-1,1] -> recon (B,C,T,H,W), ids (B,t,h,w), aux loss (),
        and the decoder's last-layer input, detached (for the adaptive GAN weight)."""
        self._check_video(video)
        z = self.encoder(video)
        if self.cfg.refine_rows:  # the cell scorer's target needs the frames and the decoder (training only)
            zq, ids, aux = self.quantizer(z, video, self.decoder if self.training else None)
        else:
            zq, ids, aux = self.quantizer(z)
        feats = self.decoder.features(zq)
        return self.decoder.head(feats), ids, aux, feats.detach()

    def encode(self, video: Tensor, cache: Cache | None = None) -> Tensor:
        """video (B,C,T,H,W) float in [-1,1], T = 1 + f*k -> ids (B, 1+k, H/s (+ refine_rows), W/s) int64.
        With `cache` (streaming), calls after the first take 4k frames and return k latent frames."""
        if cache is None or not cache:
            self._check_video(video)
        return self.quantizer(self.encoder(video, cache))[1]

    def decode(self, ids: Tensor, cache: Cache | None = None) -> Tensor:
        """ids (B,t,h,w) int64 -> video (B,C,1+4(t-1),h*s,w*s) float, about [-1,1] (not clamped).
        With `cache` (streaming), calls after the first return 4 frames per latent frame."""
        self._check_ids(ids)
        return self.decoder(self.quantizer.embed(ids, self.last_layer.dtype), cache)

    @torch.no_grad()
    def encode_chunked(self, video: Tensor, chunk_latents: int = 4) -> Tensor:
        """encode() of a long video in pieces of `chunk_latents` latent frames; equal codes."""
        self._check_video(video)
        tf, cache, out = self.cfg.time_factor, {}, []
        out.append(self.encode(video[:, :, : 1 + tf * chunk_latents], cache))
        for s in range(1 + tf * chunk_latents, video.shape[2], tf * chunk_latents):
            out.append(self.encode(video[:, :, s: s + tf * chunk_latents], cache))
        return torch.cat(out, 1)

    @torch.no_grad()
    def decode_chunked(self, ids: Tensor, chunk_latents: int = 4) -> Tensor:
        """decode() of a long code grid in pieces of `chunk_latents` latent frames, written into
        one output tensor: memory beyond the video is one chunk's, whatever the length."""
        cache: Cache = {}
        out, at = None, 0
        for s in range(0, ids.shape[1], chunk_latents):
            piece = self.decode(ids[:, s: s + chunk_latents], cache)
            if out is None:
                b, c, _, h, w = piece.shape
                out = piece.new_empty(b, c, 1 + self.cfg.time_factor * (ids.shape[1] - 1), h, w)
            out[:, :, at: at + piece.shape[2]] = piece
            at += piece.shape[2]
        return out

    # ------------------------------------------------------------------------- weights
    def save_pretrained(self, out_dir) -> Path:
        """Write out_dir/model.safetensors and out_dir/config.json."""
        from safetensors.torch import save_file

        from vidlm.config import to_dict

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": FORMAT})
        meta = {"format": FORMAT, "version": 1, "config": to_dict(self.cfg)}
        (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path, map_location: str | torch.device = "cpu") -> VideoTokenizer:
        """Load what save_pretrained wrote (never unpickles); clear errors for anything else."""
        from vidlm.config import from_dict, load_weights, read_json

        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found: a tokenizer folder holds config.json and "
                                        "model.safetensors (written by save_pretrained / `vidlm tokenizer export`)")
        meta = read_json(cfg_file)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{cfg_file} is not a vidlm video tokenizer config (expected \"format\": "
                             f"\"{FORMAT}\")")
        model = cls(from_dict(TokenizerConfig, meta["config"], where=str(cfg_file)))
        load_weights(model, weights, cfg_file, "vidlm tokenizer export", map_location)
        return model.eval()
