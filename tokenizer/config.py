"""Configs of the video tokenizer: the model (`TokenizerConfig`, presets) and a training run
(`TrainConfig`, loaded strictly from recipes/tokenizer/*.yaml).

Presets (grid = latent frames x h x w at the training size; params = encoder + decoder):

    name      train px     factors (t, s)  grid            codebook                 params
    debug     32x32x9      4, 4            3 x 8 x 8       FSQ 5^3 = 125            0.07 M   CPU, seconds
    demo      64x64x17     2, 8            9 x 8 x 8 = 576 FSQ 8*5*5*5 = 1000       0.47 M   CPU
    real-cpu  64x64x17     4, 8            5 x 8 x 8 = 320 FSQ 8^3*5^2 = 12800      3.4 M    CPU
    base      128x128x17   4, 8            5 x 16 x 16     FSQ 8^3*5^3 = 64000      25 M     GPU
    large     256x256x17   4, 8            5 x 32 x 32     FSQ 8^3*5^3 = 64000      99 M     GPU

The demo preset codes time by 2, not 4: on the shapes world, in equal CPU time (6 minutes, one
thread), it reached 26.2 dB with the detector reading 81 % of the colours in its reconstructions,
against 24.9 dB and 75 % at 4 (docs/experiments.md). A 4-frame, 8x8-pixel cell with one code
has to say where a moving object is in each of its frames; two frames are learnt much sooner.

GPU memory of base / large (recipes/tokenizer/{base,large}.yaml) is an estimate from activation
sizes (about 10-14 GB at micro batch 8 for base at 128 px, 40-60 GB at micro batch 4 for large at
256 px, bf16), not a measurement: no GPU was available when they were written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from vidlm.data.buckets import check_frames

from vidlm.config import RunConfig


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """The causal 3D VQGAN: encoder/decoder widths, factors and the quantizer."""

    name: str = "custom"
    """Preset name (informational)."""
    in_channels: int = 3
    """Video channels (RGB)."""
    channels: int = 32
    """Width of the first level (after the input patchify)."""
    channel_mult: tuple[int, ...] = (1, 2, 4)
    """Width multiplier per level; level i+1 follows a downsampling step (len = steps + 1)."""
    num_res_blocks: int = 1
    """Residual conv blocks per level (encoder; the decoder uses the same); 0 for the CPU demo."""
    patch: int = 1
    """Spatial patchify of the input (space-to-depth) before the first conv: cheap high-res."""
    spatial_factor: int = 8
    """Pixels per code along H and W (patch x 2^spatial downsampling steps)."""
    time_factor: int = 4
    """Frames per latent frame after the first (1 + 4k frames -> 1 + k latent frames)."""
    quantizer: Literal["fsq", "lfq", "vq"] = "fsq"
    """FSQ (default, no aux loss), LFQ (entropy loss) or VQ (EMA codebook, commitment loss)."""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels per latent dimension (codebook = their product)."""
    codebook_size: int = 1024
    """LFQ / VQ codebook size (LFQ: a power of 2)."""
    latent_dim: int = 8
    """Channels of the encoder output fed to the quantizer (projected to the code dim inside).
    For FSQ, latent_dim = len(levels) leaves out the projections: on the shapes world, 300 image
    steps gave 26.2 dB without them against 24.4 dB with an 8 -> 4 projection."""
    lfq_entropy_weight: float = 0.1
    """LFQ entropy loss weight."""
    vq_commitment_weight: float = 0.25
    """VQ commitment loss weight."""
    norm_groups: int = 8
    """GroupNorm groups (applied per frame: causal in time)."""
    temporal_kernel: int = 3
    """Frames each convolution sees (the current one and kt - 1 before it). 1 with time_factor 1
    codes every frame as an image, and leaves all of time to the LM."""
    refine_rows: int = 0
    """Two-level codes (model.TwoLevel); 0 = off. With r > 0 the encoder stops at cells of
    spatial_factor/2 pixels; each latent frame gets a coarse code per spatial_factor cell (its h
    rows of the grid) and r more rows: the 2x2 fine codes of the r*w/4 coarse cells that a small
    scorer, reading the coarse codes alone, predicts to be drawn worst (an object's edges). The
    grid is (t, h + r, w): the LM sees plain rows, and the chosen cells follow from the codes."""
    out_mixture: int = 0
    """The decoder's last layer draws each pixel as a mixture of K colours: K colours and K logits
    a pixel, the pixel = the colours weighted by the logits' softmax; 0 = one colour a pixel. The
    softmax draws a sharp edge between two colours wherever the logits cross, where one linear layer
    blurs it; on the shapes world a mixture of 4 at channels 64 learns the objects' corners that
    no width, depth or code size did alone (docs/experiments.md, "Shape, twenty-first round")."""
    coarse_weight: float = 0.0
    """Two-level codes: the weight of a pixel loss on what the coarse codes draw alone (L1 + L2 +
    the hard-pixel L1 of the worst 5 %, inside the quantizer's aux), so that they draw the object
    (its blob and colour) and the fine codes only its edges; 0 = the coarse codes are trained only
    through the full reconstruction, and leave the object to the fine codes (docs/experiments.md,
    "Shape, thirteenth round")."""

    def __post_init__(self):
        steps = len(self.channel_mult) - 1
        if self.coarse_weight < 0 or (self.coarse_weight and not self.refine_rows):
            raise ValueError(f"coarse_weight must be >= 0 and needs refine_rows > 0, got {self.coarse_weight} "
                             f"with refine_rows {self.refine_rows}")
        if self.out_mixture < 0 or self.out_mixture == 1:
            raise ValueError(f"out_mixture must be 0 (off) or the number of colours a pixel mixes (>= 2), "
                             f"got {self.out_mixture}")
        if self.refine_rows < 0 or (self.refine_rows and self.quantizer != "fsq"):
            raise ValueError(f"refine_rows must be >= 0 and needs the fsq quantizer, got {self.refine_rows} "
                             f"with {self.quantizer}")
        sp = self.spatial_factor // self.patch
        if self.spatial_factor % self.patch or sp & (sp - 1) or sp < 1:
            raise ValueError(f"spatial_factor/patch must be a power of 2, got {self.spatial_factor}/{self.patch}")
        if self.refine_rows and sp < 2:
            raise ValueError(f"refine_rows needs spatial_factor/patch >= 2 (fine cells are half a coarse one), "
                             f"got {self.spatial_factor}/{self.patch}")
        tf = self.time_factor
        if tf < 1 or tf & (tf - 1):
            raise ValueError(f"time_factor must be a power of 2, got {tf}")
        if self.temporal_kernel < 1 or (tf > 1 and self.temporal_kernel < 2):
            raise ValueError(f"temporal_kernel must be >= 1, and >= 2 to downsample time (time_factor {tf}), "
                             f"got {self.temporal_kernel}")
        need = max(self.space_steps, int(math.log2(tf)))
        if steps != need:
            raise ValueError(f"channel_mult needs {need + 1} entries (one per level; {need} downsampling "
                             f"steps for spatial {sp}x after patch {self.patch}{', halved by refine_rows,' if self.refine_rows else ''} "
                             f"and time {tf}x), got {steps + 1}")
        for c in (self.channels * m for m in self.channel_mult):
            if c % self.norm_groups:
                raise ValueError(f"channel width {c} is not divisible by norm_groups={self.norm_groups}")
        if self.quantizer == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"LFQ codebook_size must be a power of 2, got {self.codebook_size}")

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def space_steps(self) -> int:
        """The encoder's spatial downsampling steps (one fewer with two-level codes)."""
        return int(math.log2(self.spatial_factor // self.patch)) - (self.refine_rows > 0)

    @property
    def time_steps(self) -> int:
        return int(math.log2(self.time_factor))

    @property
    def frames_alone(self) -> bool:
        """Every frame coded as an image (time factor 1, temporal kernel 1): the codes of any
        stretch of a clip are the slice of the clip's codes, tails included."""
        return self.time_factor == 1 and self.temporal_kernel == 1

    @classmethod
    def from_name(cls, name: str, **overrides) -> TokenizerConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, TokenizerConfig] = {
    "debug": TokenizerConfig(name="debug", channels=8, channel_mult=(1, 2, 2), patch=1, spatial_factor=4,
                             levels=(5, 5, 5), latent_dim=4, norm_groups=4),
    "demo": TokenizerConfig(name="demo", channels=32, channel_mult=(1, 2, 2), num_res_blocks=0, patch=2,
                            spatial_factor=8, time_factor=2, levels=(8, 5, 5, 5), latent_dim=4),
    "real-cpu": TokenizerConfig(name="real-cpu", channels=48, channel_mult=(1, 2, 2), num_res_blocks=2, patch=2,
                                spatial_factor=8, levels=(8, 8, 8, 5, 5), latent_dim=8),
    "base": TokenizerConfig(name="base", channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2, patch=1,
                            spatial_factor=8, levels=(8, 8, 8, 5, 5, 5), latent_dim=16, norm_groups=32),
    "large": TokenizerConfig(name="large", channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2, patch=1,
                             spatial_factor=8, levels=(8, 8, 8, 5, 5, 5), latent_dim=16, norm_groups=32),
}


# ----------------------------------------------------------------------------- training run


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Generator and discriminator losses (tokenizer/losses.py)."""

    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    l2_weight: float = 0.0
    """Weight of the L2 (MSE) reconstruction loss (PSNR is MSE-based)."""
    hard_weight: float = 0.0
    """Weight of the hard-pixel L1: the mean L1 of the `hard_fraction` worst-reconstructed pixels.
    Small objects on flat backgrounds are a few % of the pixels, so the plain means learn the
    background first and the objects late; this term puts their error up front."""
    hard_fraction: float = 0.05
    """Fraction of pixels (of each clip) the hard-pixel L1 averages over."""
    quantizer_weight: float = 1.0
    """Weight of the quantizer's aux loss (LFQ entropy / VQ commitment; FSQ has none)."""
    gan_weight: float = 0.1
    """Weight of the adversarial loss (x the adaptive weight); 0 turns the GAN off."""
    disc_start: int = 1000
    """First step with the GAN (generator and discriminator); before it, reconstruction only."""
    adaptive_weight: bool = True
    """Scale the GAN loss by |grad rec| / |grad gan| at the decoder's last layer (VQGAN)."""
    adaptive_max: float = 1e4
    """Clamp of the adaptive weight."""
    lecam_weight: float = 0.001
    """LeCAM regularization of the discriminator (0 = off)."""
    lecam_decay: float = 0.999
    """EMA decay of the LeCAM anchors (mean real / fake logits)."""
    perceptual_weights: str | None = None
    """A local file of perceptual-network weights (safetensors); None: no perceptual loss."""
    perceptual_weight: float = 0.1
    """Weight of the perceptual loss when weights are given."""


@dataclass(frozen=True, kw_only=True)
class DiscConfig:
    """The 3D patch discriminator (tokenizer/discriminator.py)."""

    channels: int = 32
    """Width of the first layer."""
    layers: int = 3
    """Strided (spatial) layers."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The training clips (vidlm.data.loader)."""

    shards: str | None = None
    """Shard glob/dir; None: synthesize `synth_clips` shapes-world clips into RUN/data."""
    synth_clips: int = 64
    """Clips synthesized when `shards` is None (and --data is not given)."""
    size: tuple[int, ...] = (64, 64)
    """Width, height of the synthesized clips; the bucket area is width*height."""
    frames: int = 17
    """Frames per training clip (1 + time_factor*k)."""
    fps: float = 8.0
    """Sampling rate of the clips."""
    epoch_batches: int = 100
    """Batches per rank per epoch (shards are resampled)."""
    num_workers: int = 0
    """DataLoader workers."""
    val_clips: int = 4
    """Clips of the fixed validation batch (the same on every rank and run, centre crop)."""
    image_every: int = 0
    """Joint image-video training (as MAGVIT-v2): every `image_every`-th step trains on images,
    `image_batch_size` random frames of that step's clips coded as one-frame videos; 0 = video
    only. Images are ~T times cheaper than clips and teach the spatial path (and frame 0, which
    is coded alone) the objects that video steps learn late."""
    image_batch_size: int = 16
    """Frames per image step (at most micro_batch_size x frames)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """A tokenizer training run (recipes/tokenizer/*.yaml): RunConfig's fields, and these.
    `model` overrides TokenizerConfig fields of the preset."""

    loss: LossConfig = LossConfig()
    """Losses."""
    disc: DiscConfig = DiscConfig()
    """Discriminator."""
    data: DataConfig = DataConfig()
    """Data."""
    run_dir: str = "runs/tokenizer"
    """Run folder (checkpoints, TensorBoard, metrics.jsonl); --run overrides."""
    disc_lr: float = 3e-4
    """Discriminator learning rate (`lr` is the generator's)."""
    betas: tuple[float, ...] = (0.5, 0.9)
    """AdamW betas (both optimizers)."""
    warmup: int = 50
    """Linear warm-up steps."""
    ema_decay: float = 0.999
    """EMA of the generator weights (exported by default)."""
    coarse_until: float = 1.0
    """Two-level codes: the fraction of `steps` trained with model.coarse_weight; the steps after
    it train with the coarse loss off. First the coarse codes learn to draw the object alone, then
    the whole tokenizer learns its shape, which a coarse loss held throughout keeps back
    (docs/experiments.md, "Shape, fourteenth round"). 1.0 = the coarse loss throughout."""
    init_from: str | None = None
    """Fine-tune: start the generator from exported tokenizer weights (a `vidlm tokenizer export`
    folder, a model folder holding tokenizer/, or shipped weights by name) instead of a random
    init; their config must be this run's tokenizer config. The discriminator starts afresh (a GAN
    phase on a trained tokenizer: loss.gan_weight > 0, loss.disc_start: 0)."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.data.size) != 2:
            raise ValueError(f"data.size takes 2 values, got {list(self.data.size)}")
        d = self.data
        if d.image_every < 0 or (d.image_every and not 1 <= d.image_batch_size <= self.micro_batch_size * d.frames):
            raise ValueError(f"data.image_every must be >= 0 and data.image_batch_size in [1, micro_batch_size x "
                             f"frames = {self.micro_batch_size * d.frames}], got {d.image_every}, {d.image_batch_size}")
        model = self.tokenizer_config()
        check_frames(d.frames, model.time_factor, "data.frames")  # before training
        if not 0 <= self.coarse_until <= 1 or (self.coarse_until < 1 and not model.coarse_weight):
            raise ValueError(f"coarse_until is a fraction of the steps in [0, 1] and below 1 needs model.coarse_weight "
                             f"> 0 (two-level codes), got {self.coarse_until} with coarse_weight {model.coarse_weight}")

    def tokenizer_config(self) -> TokenizerConfig:
        return self.model_config(PRESETS, TokenizerConfig)
