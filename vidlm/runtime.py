"""The training runtime both trainers share: distributed init, DeepSpeed engines, seeds,
the LR schedule, the non-finite guard and EMA.

One code path for one CPU process, `torchrun`, and the `deepspeed` launcher (N GPUs, a hostfile
of nodes, or N CPU ranks): gloo on CPU, NCCL on GPU.

    dist = init_distributed(args.local_rank)
    seed_all(cfg.seed, dist.rank)
    ds = deepspeed_config(args.deepspeed, micro_batch_size=..., grad_accum=..., grad_clip=...,
                          precision=..., world_size=dist.world_size)
    engine = build_engine(model, torch.optim.AdamW(model.parameters()), scheduler, ds)
    ...                                                            # vidlm.checkpoint
    finish(dist)

Checkpoints: vidlm/checkpoint.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidlm.errors import UserError
from vidlm.logging import RunLogger  # noqa: F401  (part of the runtime API)

# Keys the run config owns; a DeepSpeed JSON that sets them is refused.
_OWNED_KEYS = {
    "train_batch_size": "batch sizes come from the run config (micro_batch_size x grad_accum x ranks)",
    "train_micro_batch_size_per_gpu": "set micro_batch_size in the run config",
    "gradient_accumulation_steps": "set grad_accum in the run config",
    "gradient_clipping": "set grad_clip in the run config",
    "optimizer": "the trainer builds a torch optimizer from the run config",
    "scheduler": "the trainer builds the LR schedule from the run config",
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16() -> bool:
    """Whether this machine computes bf16 in hardware: a CUDA GPU with bf16, or a CPU with AMX or
    AVX512-BF16. Elsewhere torch emulates it: on an AVX2-only CPU the demo tokenizer's bf16 step
    is ~50x slower than its fp32 step and the demo LM's ~14x (docs/experiments.md)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def resolve_precision(precision: str) -> str:
    """A run config's precision as trained: "auto" is bf16 where `native_bf16()`, else fp32; an
    explicit bf16 on a machine without it is kept, with a warning."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    if precision == "bf16" and not native_bf16():
        warnings.warn("precision bf16 where the hardware lacks it (a CPU without AMX or AVX512-BF16, or a GPU "
                      "without bf16): torch emulates it, on a CPU tens of times slower than fp32; set "
                      "precision: auto (or fp32)", stacklevel=2)
    return precision


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _skip_cpu_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-building its shared-memory comm op on CPU.

    DeepSpeed 0.19's TorchBackend builds `deepspeed_shm_comm` with g++ at start-up (44 s cold on
    this 2-core CPU, and 66 MB files left in /dev/shm per run). It is used only by
    `inference_all_reduce` (AutoTP inference), never by training, which all-reduces over gloo.
    There is no env var or config switch for it: `build_shm_op` builds it whenever
    `deepspeed.ops.__compatible_ops__` marks it compatible. That dict is DeepSpeed's own
    per-process cache of probe results, and marking the op incompatible there is the one guard
    the library checks. This is the only place vidlm touches DeepSpeed state; it must run before
    the communication backend is created.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(local_rank: int | None = None) -> Dist:
    """Join (or create) the process group; idempotent.

    Works as one plain process (RANK/WORLD_SIZE/LOCAL_RANK filled in, and an in-memory store
    instead of a TCP port: two runs started together on one machine once raced for the same free
    port), under `torchrun`, and under the `deepspeed` launcher (pass its `--local_rank`;
    LOCAL_RANK from the environment is used otherwise).
    """
    import logging
    import warnings

    import deepspeed

    # DeepSpeed 0.19 calls these torch collectives by their deprecated names every step.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")

    if local_rank is not None and local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
    rendezvous = ("MASTER_ADDR", "MASTER_PORT") if os.environ.get("WORLD_SIZE", "1") != "1" else ()
    missing = [k for k in ("RANK", "WORLD_SIZE", *rendezvous) if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_distributed: environment sets RANK/WORLD_SIZE but not {missing}; launch with "
            "torchrun or the deepspeed launcher, or unset RANK and WORLD_SIZE for one process"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.setdefault("LOCAL_RANK", "0"))

    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        _skip_cpu_shm_comm_op()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if not torch.distributed.is_initialized():
        if world == 1 and "MASTER_PORT" not in os.environ:  # one process: no rendezvous, no port
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return Dist(rank=rank, world_size=world, local_rank=local, device=device)


def add_launcher_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --local_rank (the deepspeed launcher appends it) and --deepspeed PATH."""
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; LOCAL_RANK from the environment otherwise")
    parser.add_argument("--deepspeed", metavar="PATH", default=None,
                        help="DeepSpeed JSON with engine sections only, e.g. recipes/deepspeed/zero2.json "
                             "(default: ZeRO stage 0); batch sizes, clipping and precision come from --config")
    return parser


def add_train_parser(sub, stage: str, *, data_help: str, **kw) -> argparse.ArgumentParser:
    """The `train` subcommand both stages share: --config, --data, --run, --steps, --stop-at and
    the launcher's arguments (`run_training` runs it)."""
    t = sub.add_parser("train", help=f"train (or resume) a {stage} run", **kw)
    t.add_argument("--config", required=True, help=f"run config YAML, e.g. recipes/{stage}/demo.yaml")
    t.add_argument("--data", help=data_help)
    t.add_argument("--run", help="run folder (default: the recipe's run_dir)")
    t.add_argument("--steps", type=int, help="override the recipe's steps")
    t.add_argument("--stop-at", type=int, help="stop at this step (with a checkpoint), schedule unchanged")
    return add_launcher_args(t)


def run_training(config_cls, train, args) -> int:
    """`vidlm STAGE train`: the run config (a bad one fails here, before anything starts), --steps,
    the run (`train(cfg, run_dir=, data=, deepspeed=, local_rank=, stop_at=)` returns the last
    logged scalars), then one summary line on rank 0."""
    import dataclasses

    from vidlm.config import load_yaml

    cfg = load_yaml(config_cls, args.config)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    last = train(cfg, run_dir=args.run, data=args.data, deepspeed=args.deepspeed, local_rank=args.local_rank,
                 stop_at=args.stop_at)
    dist = init_distributed(args.local_rank)
    if dist.is_main and last:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float) and "/" not in k))
    finish(dist)
    return 0


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def warmup_cosine(warmup: int, steps: int, min_ratio: float):
    """LR multiplier per step: linear warm-up over `warmup` steps, then a cosine from 1 down to
    `min_ratio` at `steps` (LambdaLR's function; both trainers use it)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def seed_all(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (all devices) with seed + rank.

    Build models after `seed_all(seed)` (the same on every rank; DeepSpeed also broadcasts rank
    0's weights when it builds an engine), then `seed_all(seed, rank)` for per-rank randomness.
    """
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def set_deterministic(on: bool) -> None:
    """`deterministic: true` in a run config, on CUDA: cuDNN without autotuning, deterministic
    algorithms (an op that has none raises), cuBLAS with a fixed workspace. Off (the default),
    atomics in some CUDA backward kernels (the tokenizer's conv3d) vary the last bits from run to
    run. CPU kernels are deterministic already: nothing to change there."""
    if not on or not torch.cuda.is_available():
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def finish(dist: Dist) -> None:
    """End the job: barrier, flush, and with >1 rank `os._exit(0)`.

    gloo sometimes aborts at interpreter exit with 2+ processes (`terminate called without an
    active exception`); exiting right after a barrier avoids that race. Close loggers and files
    first: nothing after this runs in a multi-rank job.
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.world_size > 1:
        os._exit(0)


# ----------------------------------------------------------------------------- engines


def deepspeed_config(path: str | os.PathLike | None, *, micro_batch_size: int, grad_accum: int,
                     grad_clip: float, precision: str, world_size: int) -> dict:
    """A DeepSpeed config: engine sections from the JSON at `path`, the rest from our config.

    `path=None` means ZeRO stage 0. The JSON may not set batch sizes, clipping, optimizer or
    scheduler (they come from the run config); bf16/fp16 `enabled` follow `precision`
    (`resolve_precision`: "auto" | "fp32" | "bf16" | "fp16"); fp16 is refused on CPU (DeepSpeed supports it on GPU only).
    """
    where = str(path) if path is not None else "(default ZeRO-0 config)"
    precision = resolve_precision(precision)
    for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum),
                        ("world_size", world_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"deepspeed_config: {name} must be a positive integer, got {value!r}")
    if not grad_clip >= 0:
        raise ValueError(f"deepspeed_config: grad_clip must be >= 0 (0 = off), got {grad_clip!r}")
    if path is None:
        cfg: dict = {"zero_optimization": {"stage": 0}}
    else:
        try:
            cfg = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"DeepSpeed config {where} does not exist "
                                    "(see recipes/deepspeed/zero{0,1,2,3}.json)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"DeepSpeed config {where} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"DeepSpeed config {where} must be a JSON object, got {type(cfg).__name__}")
    bad = {k: why for k, why in _OWNED_KEYS.items() if k in cfg}
    if bad:
        lines = "\n".join(f"  {k}: {why}" for k, why in bad.items())
        raise ValueError(f"DeepSpeed config {where} sets keys the run config owns; remove them:\n{lines}")
    on_cpu = not torch.cuda.is_available()
    for section in ("bf16", "fp16"):
        sec = cfg.get(section, {})
        if not isinstance(sec, dict):
            raise TypeError(f"DeepSpeed config {where}: '{section}' must be an object")
        if "enabled" in sec and bool(sec["enabled"]) != (precision == section) and sec["enabled"] != "auto":
            raise ValueError(
                f"DeepSpeed config {where} sets {section}.enabled={sec['enabled']} but the run config "
                f"says precision={precision!r}; drop 'enabled' from the JSON (precision decides)")
    if on_cpu and (precision == "fp16" or cfg.get("fp16", {}).get("enabled") is True):
        raise ValueError(f"fp16 is not supported by DeepSpeed on CPU ({where}); use precision "
                         "'fp32' or 'bf16' on CPU, fp16 only on GPU")
    out = json.loads(json.dumps(cfg))  # deep copy; DeepSpeed mutates its config
    out["train_micro_batch_size_per_gpu"] = int(micro_batch_size)
    out["gradient_accumulation_steps"] = int(grad_accum)
    out["train_batch_size"] = int(micro_batch_size) * int(grad_accum) * int(world_size)
    out["gradient_clipping"] = float(grad_clip)
    out["bf16"] = {**out.get("bf16", {}), "enabled": precision == "bf16"}
    out["fp16"] = {**out.get("fp16", {}), "enabled": precision == "fp16"}
    out.setdefault("zero_allow_untested_optimizer", True)
    out.setdefault("steps_per_print", 2**31 - 1)  # we log ourselves
    return out


def zero_stage_of(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def partitioned_init(ds_config: dict):
    """The context to build a model in: under ZeRO-3, `deepspeed.zero.Init`, which partitions
    each module's parameters as soon as it is built, so that no rank ever holds the whole model;
    otherwise nothing. Code that reads or writes whole parameters inside it uses `gathered`."""
    import contextlib

    if zero_stage_of(ds_config) != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=ds_config)


def gathered(params):
    """Inside the block, the whole of ZeRO-3-partitioned `params` on every rank; what rank 0
    writes to them is kept (and broadcast). Unpartitioned parameters: nothing to do."""
    import contextlib

    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """torch's AdamW, fused (one kernel over all parameters; CPU and CUDA): on the demo LM's
    parameters a step took 5-6 ms against 32-36 ms for the default multi-tensor one (one thread,
    bench/lm.py prints it with the training step)."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def build_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, ds_config: dict):
    """Wrap model + a torch optimizer (+ optional LR scheduler) in a DeepSpeed engine.

    The engine steps the scheduler at each optimizer step and saves it with checkpoints.
    """
    import deepspeed

    if not torch.distributed.is_initialized():
        raise RuntimeError("build_engine: call init_distributed() first")
    cfg = json.loads(json.dumps(ds_config))
    cfg.setdefault("zero_allow_untested_optimizer", True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg)
    return engine


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


# ----------------------------------------------------------------------------- training helpers


class NonFiniteLossError(RuntimeError, UserError):
    """Too many non-finite losses: the run is diverging."""


class NonFiniteGuard:
    """Skip steps whose loss is NaN/inf; stop after `limit` skips.

    `guard(loss)` returns True when the loss is finite on every rank (do the step) and False
    when it is not on some rank (every rank takes the same decision; `guarded_step` then keeps
    DeepSpeed's accumulation window aligned).
    Up to `limit` skips are tolerated over the run; the next one raises NonFiniteLossError.
    `state_dict()` goes into client_state so the count survives a resume.
    """

    def __init__(self, limit: int = 10):
        self.limit = int(limit)
        self.skipped = 0

    def guard(self, loss: torch.Tensor, step: int | None = None) -> bool:
        ok = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if bool(ok.item()):
            return True
        self.skipped += 1
        if self.skipped > self.limit:
            at = f" at step {step}" if step is not None else ""
            raise NonFiniteLossError(
                f"non-finite loss{at}: {self.skipped} steps skipped, more than the limit of {self.limit}. "
                "The run is diverging: lower the learning rate, check the data, or use fp32/bf16 "
                "instead of fp16; resume from the last checkpoint after fixing it")
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state["skipped"])


def guarded_step(engine, loss: torch.Tensor, guard: NonFiniteGuard, step: int, neutral) -> bool:
    """One micro step of `engine`: backward + step on `loss`, or, when the loss is not finite on
    some rank (the same verdict on every rank), on `neutral() * 0`, a forward of a fixed tiny
    input: DeepSpeed still counts the micro step, so the gradient-accumulation window stays
    aligned (checkpoints save, ranks stay in lockstep) and the bad micro-batch adds exactly zero
    to the gradients. Without accumulation the whole step is skipped instead, so a bad batch never
    moves the weights. Returns whether `loss` was used (the guard counts the ones that were not)."""
    if guard.guard(loss, step):
        engine.backward(loss)
        engine.step()
        return True
    if engine.gradient_accumulation_steps() > 1:
        engine.backward(neutral().float().sum() * 0.0)
        engine.step()
    return False


class EMA:
    """Exponential moving average of a module's parameters (fp32 shadow copies), plus buffers.

    `update()` after each optimizer step: shadow = decay * shadow + (1 - decay) * param.
    Needs whole parameters, so ZeRO 0-2 only: under ZeRO-3 each rank holds a shard and EMA
    refuses with an error (gathering the full model every step would undo ZeRO-3's saving).
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        _refuse_zero3(module)
        self.module, self.decay, self.num_updates = module, float(decay), 0
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in module.named_buffers()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module | None = None) -> None:
        module = self.module if module is None else module
        for n, p in module.named_parameters():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)
        for n, b in module.named_buffers():
            self.buffers[n].copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Load the averaged weights into `module` (same architecture)."""
        _refuse_zero3(module)
        for n, p in module.named_parameters():
            p.copy_(self.shadow[n].to(p.dtype))
        for n, b in module.named_buffers():
            b.copy_(self.buffers[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": dict(self.shadow), "buffers": dict(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the module's parameters")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)
        for n, t in state["buffers"].items():
            self.buffers[n].copy_(t)


def _refuse_zero3(module: torch.nn.Module) -> None:
    if any(hasattr(p, "ds_id") for p in module.parameters()):  # partitioned (see `gathered`)
        raise RuntimeError("EMA needs whole parameters but this module is partitioned by ZeRO-3; "
                           "use ZeRO stage 0-2 (recipes/deepspeed/zero2.json) for runs with EMA")
