"""Tokenizer losses: reconstruction, quantizer aux, hinge GAN with the adaptive weight, LeCAM,
and an optional perceptual loss from a weights file the user gives (nothing is downloaded).

    losses = TokenizerLosses(cfg.loss)
    g_loss, logs = losses.generator(video, recon, aux, fake_logits, weight)
    d_loss, logs = losses.discriminator(real_logits, fake_logits, step)   # updates LeCAM anchors
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import LossConfig


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float) -> Tensor:
    """|d rec / d W| / |d gan / d W| at the decoder's last layer W (VQGAN, Esser et al. 2021),
    detached and clamped: balances the GAN gradient against the reconstruction gradient."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def last_layer_weight(losses, video: Tensor, feats: Tensor, gen, disc) -> Tensor:
    """The adaptive weight from a re-run of the decoder's last layer on its (detached) input with
    a detached copy W of its weight: the same gradients d/dW as through the whole graph, without
    a second backward through the generator (or through DeepSpeed's engine hooks)."""
    w = gen.last_layer.detach().requires_grad_()
    recon = gen.decoder.head(feats, weight=w).float()
    rec, _ = losses.reconstruction(video, recon)
    gan = hinge_g_loss(disc(recon.to(feats.dtype)).float())
    return adaptive_weight(rec, gan, w, losses.cfg.adaptive_max)


class LeCAM:
    """LeCAM regularization (Tseng et al. 2021): EMA anchors of the mean real / fake logits and
    the penalty |relu(real - ema_fake)|^2 + |relu(ema_real - fake)|^2. State goes into checkpoints."""

    def __init__(self, decay: float):
        self.decay = float(decay)
        self.ema_real = 0.0
        self.ema_fake = 0.0

    def update(self, real: Tensor, fake: Tensor) -> None:
        d = self.decay
        self.ema_real = d * self.ema_real + (1 - d) * float(real.detach().mean())
        self.ema_fake = d * self.ema_fake + (1 - d) * float(fake.detach().mean())

    def penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()

    def state_dict(self) -> dict:
        return {"ema_real": self.ema_real, "ema_fake": self.ema_fake}

    def load_state_dict(self, state: dict) -> None:
        self.ema_real, self.ema_fake = float(state["ema_real"]), float(state["ema_fake"])


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class PerceptualLoss(nn.Module):
    """LPIPS-style distance (unit-normalized VGG16 features, equal layer weights) per frame.

    Weights: a safetensors file with torchvision's VGG16 `features.{i}.weight/bias` names,
    given by the user (converted once from a checkpoint they trust). Frozen, never trained.
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        from safetensors.torch import load_file

        layers, c = [], 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"perceptual weights {path} not found (loss.perceptual_weights)")
        state = load_file(str(path))
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        missing, _ = self.features.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{path} lacks VGG16 feature weights {missing[:4]} (expected torchvision names)")
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        # (B,C,T,H,W) in [-1,1] -> ()
        x = torch.cat([rearrange(v, "b c t h w -> (b t) c h w") for v in (recon, target)])
        x = ((x + 1) / 2 - self.mean) / self.std
        loss, n = x.new_zeros(()), recon.shape[0] * recon.shape[2]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                f = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                loss = loss + (f[:n] - f[n:]).pow(2).sum(1).mean()
            if i >= _TAPS[-1]:
                break
        return loss


def pixel_errors(diff: Tensor, hard_fraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """L1, L2 and the hard-pixel L1 (the mean L1 of each clip's `hard_fraction` worst pixels; 0
    when hard_fraction is 0) of diff = recon - video (B,C,T,H,W)."""
    abs_err = diff.abs()
    hard = diff.new_zeros(())
    if hard_fraction > 0:
        err = abs_err.mean(1).flatten(1)  # (B, T*H*W) per-pixel L1
        hard = err.topk(max(1, int(hard_fraction * err.shape[1])), dim=1).values.mean()
    return abs_err.mean(), diff.pow(2).mean(), hard


class TokenizerLosses:
    """All tokenizer losses for one run (holds LeCAM state and the optional perceptual net)."""

    def __init__(self, cfg: LossConfig, log=print):
        self.cfg = cfg
        self.lecam = LeCAM(cfg.lecam_decay)
        self.perceptual = None
        if cfg.perceptual_weights and cfg.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(cfg.perceptual_weights)
            log(f"perceptual loss on (VGG16 weights from {cfg.perceptual_weights})")
        else:
            log("perceptual loss off (no loss.perceptual_weights file given; nothing is downloaded)")

    def gan_active(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and step >= self.cfg.disc_start

    def reconstruction(self, video: Tensor, recon: Tensor) -> tuple[Tensor, dict]:
        c = self.cfg
        l1, l2, hard = pixel_errors(recon - video, c.hard_fraction if c.hard_weight > 0 else 0.0)
        loss = c.l1_weight * l1 + c.l2_weight * l2
        logs = {"l1": l1.detach(), "l2": l2.detach()}
        if c.hard_weight > 0:
            loss = loss + c.hard_weight * hard
            logs["l1_hard"] = hard.detach()
        if self.perceptual is not None:
            p = self.perceptual.to(video.device)(recon, video)
            loss = loss + c.perceptual_weight * p
            logs["perceptual"] = p.detach()
        return loss, logs

    def generator(self, video: Tensor, recon: Tensor, aux: Tensor, fake_logits: Tensor | None,
                  weight: Tensor | None = None) -> tuple[Tensor, dict]:
        """Total generator loss; `fake_logits` is None before the GAN starts; `weight` is the
        adaptive GAN weight (`last_layer_weight`; None: 1)."""
        c = self.cfg
        rec, logs = self.reconstruction(video, recon)
        loss = rec + c.quantizer_weight * aux
        logs["quantizer"] = aux.detach()
        if fake_logits is not None:
            g = hinge_g_loss(fake_logits)
            w = weight if weight is not None else torch.ones((), device=g.device)
            loss = loss + c.gan_weight * w * g
            logs.update(g_adv=g.detach(), adaptive_weight=w)
        logs["g_loss"] = loss.detach()
        return loss, logs

    def discriminator(self, real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, dict]:
        """Hinge loss + LeCAM (against the current anchors; `lecam_step` moves them once the step
        is taken)."""
        loss = hinge_d_loss(real_logits, fake_logits)
        logs = {"d_hinge": loss.detach(), "logits_real": real_logits.detach().mean(),
                "logits_fake": fake_logits.detach().mean()}
        if self.cfg.lecam_weight > 0:
            reg = self.lecam.penalty(real_logits, fake_logits)
            loss = loss + self.cfg.lecam_weight * reg
            logs["lecam"] = reg.detach()
        logs["d_loss"] = loss.detach()
        return loss, logs

    def lecam_step(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        """Move the LeCAM anchors after a D step that was taken (a skipped one changes nothing)."""
        if self.cfg.lecam_weight > 0:
            self.lecam.update(real_logits, fake_logits)
