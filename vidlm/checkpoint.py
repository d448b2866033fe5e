"""Crash-safe, exactly resumable checkpoints of DeepSpeed engines (both trainers).

    client = load_checkpoint(run_dir, {"model": engine})        # None: a fresh run
    ...
    save_checkpoint(run_dir, step, {"model": engine}, {"step": step, "data": loader.state_dict()})

Checkpoint layout (all ranks call save/load; the run dir must be visible to every rank):

    run_dir/step-N/{engine name}/...     DeepSpeed files per engine (model, optimizer, scheduler)
    run_dir/step-N/rank-R.pt             rank R's RNG states (python, numpy, torch, cuda) and
                                         client_state; plain containers and tensors only
    run_dir/step-N/meta.json             step, world size, engine names
    run_dir/latest                       "step-N", written last, atomically, by rank 0

What resume guarantees:
- `load_checkpoint` reads `run_dir/latest` and nothing else decides what is loaded; a run dir
  without `latest` is a fresh run. `latest` is replaced (temp file + os.replace) only after every
  rank has finished writing step-N, so a crash in the middle of a save leaves `latest` on the
  previous complete checkpoint, and a half-written step dir is never read.
- After `load_checkpoint`, every engine's module, optimizer and scheduler state, each rank's
  python/numpy/torch(/cuda) RNG and the client_state (step, data position, EMA, guard counts,
  ...) are exactly what they were when `save_checkpoint` was called. A deterministic training
  loop that puts everything else it needs into client_state therefore reproduces the losses of
  the uninterrupted run bit for bit (tested for ZeRO 1/2/3, 1 and 2 CPU ranks).
- Same world size and ZeRO stage as the saved run are required (checked: a clear error).
- Only our own run dir is loaded. The tag in `latest` must name a `step-N` dir inside run_dir.
  Our files load with `torch.load(weights_only=True)`; DeepSpeed's own files unpickle, which is
  why nothing outside the run dir is ever loaded. Published weights are safetensors (export).

Not guaranteed: bitwise equality across different hardware, thread counts or library versions.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from vidlm.errors import UserError
from vidlm.runtime import zero_stage

_STEP_TAG = re.compile(r"^step-(\d+)$")



def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_plain(obj, where: str = "client_state") -> None:
    """client_state must load with torch.load(weights_only=True): containers, numbers, tensors."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor))):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold only dicts, lists, numbers, "
                        "strings and tensors (call .state_dict() or convert it)")


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointError(RuntimeError, UserError):
    """A run folder that cannot be resumed as asked (damaged, or saved by another job shape)."""


def latest_step_dir(run_dir: str | os.PathLike) -> Path | None:
    """The step dir `run_dir/latest` names, or None without `latest`; refuses anything else."""
    run_dir = Path(run_dir)
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    step_dir = run_dir / tag
    if not _STEP_TAG.match(tag) or step_dir.is_symlink() or not step_dir.is_dir():
        raise CheckpointError(f"{pointer} says {tag!r}, which is not a step-N dir inside {run_dir}; "
                           "the run dir is damaged (fix or delete 'latest' to start fresh)")
    return step_dir


def step_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, run_dir/step-N)] of the step dirs a run holds, oldest first."""
    run_dir = Path(run_dir)
    return sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_TAG.match(p.name)) and p.is_dir())


def step_dir_at(run_dir: str | os.PathLike, step: int) -> Path:
    """The checkpoint of `step`, if it is complete: `latest` has reached it (a save writes its
    step dir whole before `latest` moves, and a crashed save is redone whole)."""
    latest = latest_step_dir(run_dir)
    if latest is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint (no 'latest')")
    kept = dict(step_dirs(run_dir))
    last = int(_STEP_TAG.match(latest.name).group(1))
    if step > last or step not in kept:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint of step {step} (kept: {sorted(kept)}, "
                                f"latest {last}); keep more with keep_last / ckpt_every")
    return kept[step]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, step: int, engines: dict, client_state: dict,
                    *, keep_last: int = 0) -> Path:
    """Save every engine, each rank's RNG and client_state as run_dir/step-{step}; then `latest`.

    Collective: every rank calls it. `keep_last > 0` deletes older step dirs beyond that many,
    after `latest` moved. Saving the step `latest` already names is a no-op.
    """
    run_dir = Path(run_dir)
    rank, world = _rank_world()
    tag = f"step-{int(step)}"
    step_dir = run_dir / tag
    _check_plain(client_state)
    for name, engine in engines.items():
        if engine.micro_steps % engine.gradient_accumulation_steps() != 0:
            raise RuntimeError(
                f"save_checkpoint at step {step}: engine {name!r} is in the middle of a gradient "
                f"accumulation window ({engine.micro_steps} micro steps, accumulating "
                f"{engine.gradient_accumulation_steps()}); DeepSpeed does not save partial gradients, "
                "so save only right after an optimizer step")
    rng = _rng_state()  # before DeepSpeed runs anything
    current = latest_step_dir(run_dir)
    if current is not None and current.name == tag:
        return step_dir
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if step_dir.exists():  # left by a crashed save: never referenced, replace it whole
            shutil.rmtree(step_dir)
        step_dir.mkdir()
    _barrier()
    try:
        for name, engine in engines.items():
            engine.save_checkpoint(str(step_dir), tag=name, client_state={}, save_latest=False)
        torch.save({"rng": rng, "client_state": client_state}, step_dir / f"rank-{rank}.pt")
        if rank == 0:
            meta = {"step": int(step), "world_size": world, "engines": sorted(engines),
                    "zero_stages": {n: zero_stage(e) for n, e in engines.items()}}
            (step_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    except (OSError, RuntimeError) as e:  # a full disk is an OSError from Python, a RuntimeError from torch.save
        kept = f"'latest' still names {current.name}" if current is not None else "no checkpoint was complete yet"
        raise CheckpointError(f"could not write the checkpoint {step_dir} ({e}); {kept}: free space (or fix "
                              "the folder) and rerun with the same --run to resume from it") from e
    _barrier()  # every rank has written everything for this step
    if rank == 0:
        _write_atomic(run_dir / "latest", tag + "\n")
        if keep_last > 0:
            for s, p in step_dirs(run_dir)[:-keep_last]:
                if s < step:
                    shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return step_dir


def load_checkpoint(run_dir: str | os.PathLike, engines: dict) -> dict | None:
    """Resume from run_dir/latest: engines, this rank's RNG; returns client_state (None: fresh).

    Collective: every rank calls it, with engines built exactly as in the saved run.
    """
    run_dir = Path(run_dir)
    step_dir = latest_step_dir(run_dir)
    if step_dir is None:
        return None
    rank, world = _rank_world()
    meta = json.loads((step_dir / "meta.json").read_text())
    if meta["world_size"] != world:
        raise CheckpointError(f"{step_dir} was saved by {meta['world_size']} ranks, this job has {world}; "
                           "resume with the same number of ranks")
    if sorted(engines) != meta["engines"]:
        raise CheckpointError(f"{step_dir} holds engines {meta['engines']}, asked to load {sorted(engines)}")
    for name, engine in engines.items():
        saved = meta.get("zero_stages", {}).get(name)
        if saved is not None and saved != zero_stage(engine):
            raise CheckpointError(f"{step_dir}: engine {name!r} was saved with ZeRO stage {saved}, "
                               f"this run uses stage {zero_stage(engine)}; use the same DeepSpeed JSON")
        path, _ = engine.load_checkpoint(str(step_dir), tag=name, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load engine {name!r} from {step_dir / name}")
    mine = torch.load(step_dir / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
    _set_rng_state(mine["rng"])
    _barrier()
    return mine["client_state"]


def saved_weights(step_dir: Path, engine: str) -> dict:
    """The module weights engine `engine` saved in `step_dir` (a checkpoint `latest` has reached):
    DeepSpeed's model file without ZeRO (read with weights_only=True), the fp32 master weights
    gathered from every rank's optimizer partition under ZeRO 1-3. What both trainers' `export`
    write from."""
    meta = json.loads((step_dir / "meta.json").read_text())
    if meta.get("zero_stages", {}).get(engine, 0) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=engine)
    files = sorted((step_dir / engine).glob("*model_states.pt"))
    if not files:
        raise CheckpointError(f"no {engine} weights in {step_dir / engine}: the checkpoint is damaged")
    return torch.load(files[0], map_location="cpu", weights_only=True)["module"]
