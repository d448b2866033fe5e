"""Config of the video LM (`LMConfig`) and its presets, one flat registry.

    name   dim   layers  heads/kv  context  params: blocks / + embeddings   where
    debug    64     2      4/2        512   0.1 M / 0.2 M (vocab 1k)     CPU, seconds (tests)
    demo    256     6      8/4       1280   4.4 M / 5.2 M (vocab 1.5k)   the shapes world on a 2-core CPU
    S       768    16     12/4       4096   100 M / 200 M (vocab 65k)    1 GPU
    M      1024    24     16/8       4096   280 M / 410 M                1-8 GPUs, ZeRO-1/2
    L      2048    16     32/8       8192   0.97 B / 1.24 B              8 GPUs, ZeRO-2/3
    XL     3072    28     24/8       8192   2.8 B / 3.2 B                8+ GPUs, ZeRO-3

`LMConfig.from_name("demo", vocab_size=vocab.size)`; the vocab size comes from `vidlm.lm.vocab`.
Memory per ZeRO stage and expected throughput: recipes/README.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from vidlm.lm.vocab import TASKS

from vidlm.config import RunConfig


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    """A decoder-only transformer over spacetime codes (RMSNorm, SwiGLU, GQA, 3D RoPE)."""

    name: str = "custom"
    """Preset name (informational)."""
    vocab_size: int = 2048
    """Ids of the one id space (specials | text pieces | codes): `Vocab.size`."""
    dim: int = 256
    """Width of the residual stream."""
    n_layers: int = 6
    """Transformer blocks."""
    n_heads: int = 8
    """Query heads; head_dim = dim / n_heads (even, and a multiple of 2 for RoPE)."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None = n_heads (multi-head attention)."""
    hidden_dim: int | None = None
    """SwiGLU hidden width; None = 8/3 * dim rounded up to `multiple_of`."""
    multiple_of: int = 64
    """Rounding of the default hidden_dim."""
    max_seq_len: int = 1024
    """Context: the most tokens one sequence (or packed row, or KV cache) holds."""
    rope_theta: float = 10000.0
    """RoPE base; frequencies theta^(-2i/head_dim), the same as 1D RoPE."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal init of embeddings and linear layers (output projections scaled by
    1/sqrt(2 * n_layers))."""
    next_query: bool = False
    """Queries turn with the coordinates of the token they predict (keys with their own): the
    model knows where it draws next even where the order does not say (two-level codes' fine
    codes, placed by the coarse ones; sigma-GPT / RandAR's next-position conditioning)."""
    code_places: bool = False
    """Trained on the coordinates where the codes draw (two-level codes: `vidlm lm train` reads them
    from the token folder's tokenizer), not their grid coordinates; sampling must render the same.
    Set by training from its data."""
    code_levels: tuple[int, ...] = ()
    """The FSQ levels of the video tokenizer's codes (empty: codes are plain ids). Given, the LM
    also reads each code as its FSQ values (what the tokenizer's decoder reads, through a small
    MLP) and adds to each code's logit a bump around a point in that space it predicts: codes
    that draw alike are near each other there, however unlike their ids are. Set it in a recipe
    (`model.code_levels: [8, 5, 5, 5]`); training refuses levels that are not the token folder's
    tokenizer's. docs/experiments.md, twenty-eighth round: from scratch, the validation loss at
    1000 steps fell from 2.62 to 2.27."""
    code_start: int = 0
    """The id of code 0 (`Vocab.code_range`); set by training from its data."""
    checkpointing: bool = False
    """Activation checkpointing of every block in training (less memory, ~30% more compute)."""
    attn_backend: str = "auto"
    """"auto" (flash-attn when installed and on CUDA, else SDPA), "flash", "sdpa" or "flex"
    (FlexAttention on packed training rows; GPU training, or CPU inference: lm/attention.py)."""

    def __post_init__(self):
        kv = self.kv_heads
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim {self.dim} must be divisible by n_heads {self.n_heads} into an even head_dim")
        if self.n_heads % kv:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {kv}")
        for name in ("vocab_size", "dim", "n_layers", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.code_levels and self.code_start + math.prod(self.code_levels) > self.vocab_size:
            raise ValueError(f"code_levels {list(self.code_levels)} from code_start {self.code_start} need ids past "
                             f"vocab_size {self.vocab_size}")
        if self.attn_backend not in ("auto", "flash", "sdpa", "flex"):
            raise ValueError(f"attn_backend must be 'auto', 'flash', 'sdpa' or 'flex', got {self.attn_backend!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        h = int(8 * self.dim / 3)
        return -(-h // self.multiple_of) * self.multiple_of

    def num_params(self, embeddings: bool = True) -> int:
        """Parameters of a VideoLM with this config (untied embedding and head)."""
        d, hd = self.dim, self.head_dim
        attn = d * hd * (self.n_heads * 2 + self.kv_heads * 2)
        block = attn + 3 * d * self.ffn_dim + 2 * d
        emb = 2 * self.vocab_size * d if embeddings else 0
        n = len(self.code_levels)  # the FSQ-value MLP and bump (VideoLM.digit_in / digit_out)
        codes = n * d + d * d + d * (n + 1) if n else 0
        return self.n_layers * block + d + emb + codes

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N + 12 L d T (PaLM appendix B)."""
        t = self.max_seq_len if seq_len is None else seq_len
        return 6 * self.num_params(embeddings=False) + 6 * self.vocab_size * self.dim \
            + 12 * self.n_layers * self.dim * t

    @classmethod
    def from_name(cls, name: str, **overrides) -> LMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown LM preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, LMConfig] = {
    "debug": LMConfig(name="debug", vocab_size=1024, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=512),
    "demo": LMConfig(name="demo", vocab_size=1536, dim=256, n_layers=6, n_heads=8, n_kv_heads=4,
                     max_seq_len=1280),
    "S": LMConfig(name="S", vocab_size=65536, dim=768, n_layers=16, n_heads=12, n_kv_heads=4,
                  max_seq_len=4096),
    "M": LMConfig(name="M", vocab_size=65536, dim=1024, n_layers=24, n_heads=16, n_kv_heads=8,
                  max_seq_len=4096),
    "L": LMConfig(name="L", vocab_size=65536, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                  hidden_dim=8192, max_seq_len=8192, rope_theta=500000.0),
    "XL": LMConfig(name="XL", vocab_size=65536, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8,
                   hidden_dim=8192, max_seq_len=8192, rope_theta=500000.0),
}


# ----------------------------------------------------------------------------- training runs
DEFAULT_TASKS = {"t2v": 0.25, "t2i": 0.05, "i2v": 0.1, "extend-forward": 0.15, "extend-backward": 0.1,
                 "connect": 0.1, "loop": 0.1, "edit": 0.15}

@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Token shards and the task mix."""

    tokens: str | None = None
    """Token folder (`vidlm data tokenize --out`); --data overrides."""
    tasks: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    """Probability of each task per training sequence (normalized; a clip that cannot make the
    drawn task, e.g. too short, gets t2v)."""
    p_drop_text: float = 0.1
    """Probability of dropping the caption (text guidance)."""
    p_drop_known: float = 0.1
    """Probability, independent of the text's, of dropping the known segments (visual guidance)."""
    val_clips: int = 32
    """Clips held out for validation (the last ones by key)."""
    pack_window: int = 64
    """Sequences drawn together and put in an order that packs rows tightly (first-fit
    decreasing: long sequences first, short ones into their rows' room); 1 packs them in the
    order drawn, which leaves a row's end empty whenever the next sequence is too long for it."""

    def __post_init__(self):
        bad = sorted(set(self.tasks) - set(TASKS))
        if bad or not self.tasks or min(self.tasks.values()) < 0 or sum(self.tasks.values()) <= 0:
            raise ValueError(f"data.tasks: {bad or self.tasks} — tasks are {list(TASKS)} with weights >= 0")
        for name in ("p_drop_text", "p_drop_known"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name} must be in [0, 1]")
        if self.pack_window < 1:
            raise ValueError(f"data.pack_window must be at least 1 (1: pack in draw order), got {self.pack_window}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """An LM training run (recipes/lm/*.yaml): RunConfig's fields, and these. `model` overrides
    LMConfig fields of the preset (vocab_size comes from the token folder)."""

    data: DataConfig = DataConfig()
    """Token data and tasks."""
    run_dir: str = "runs/lm"
    """Run folder (checkpoints, TensorBoard, metrics.jsonl); --run overrides."""
    seq_len: int | None = None
    """Tokens per packed row (None: the model's max_seq_len)."""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices only; not norms)."""
    peak_tflops: float | None = None
    """Accelerator peak for the MFU estimate (None: known GPUs are looked up, else no MFU)."""
    compile: bool = False
    """torch.compile each transformer block (fuses the norms', RoPE's and SwiGLU's element-wise
    work); the first steps pay the compile. Not with ZeRO-3 (its parameter hooks)."""
    init_from: str | None = None
    """Fine-tune: start from exported LM weights (a `vidlm lm export` folder, a model folder
    holding lm/, or shipped weights by name) instead of a random init. Their architecture and
    vocab must be this run's."""

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {list(PRESETS)}")
        cfg = self.lm_config(vocab_size=PRESETS[self.preset].vocab_size)
        if self.seq_len is not None and not 8 <= self.seq_len <= cfg.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} must be in 8..max_seq_len ({cfg.max_seq_len})")

    def lm_config(self, vocab_size: int) -> LMConfig:
        return self.model_config(PRESETS, LMConfig, {"vocab_size": vocab_size})

    @property
    def row_len(self) -> int:
        return self.seq_len or self.lm_config(PRESETS[self.preset].vocab_size).max_seq_len
