"""A 3D patch discriminator: video (B,C,T,H,W) -> a map of real/fake logits."""

from __future__ import annotations

from torch import Tensor, nn

from .config import DiscConfig


class PatchDiscriminator3D(nn.Module):
    """Strided 3D convs (space /2 each layer, time /2 in the last two) with LeakyReLU and per-layer
    GroupNorm; one logit per spacetime patch. Not causal: it judges whole clips."""

    def __init__(self, cfg: DiscConfig, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, cfg.channels, 3, padding=1), nn.LeakyReLU(0.2)]
        c = cfg.channels
        for i in range(cfg.layers):
            out = cfg.channels * min(2 ** (i + 1), 8)
            st = 2 if i >= cfg.layers - 2 else 1
            layers += [nn.Conv3d(c, out, 3, stride=(st, 2, 2), padding=1), nn.GroupNorm(min(8, out), out),
                       nn.LeakyReLU(0.2)]
            c = out
        layers.append(nn.Conv3d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, video: Tensor) -> Tensor:
        # video (B,C,T,H,W) -> logits (B,1,t',h',w')
        return self.net(video)
