"""A toy two-engine training run for the runtime tests (also launched with N ranks).

The toy has what the real trainers have: two engines (a "gen" MLP with dropout, an LR schedule
and EMA; a "disc" linear head), gradient accumulation, per-rank data, and every RNG in play
(torch for noise and dropout, numpy and python for data jitter), so an exact resume needs all of
them restored.

    deepspeed --num_gpus 2 tests/runtime_worker.py --config job.json
    job.json: {"out": "result.json", "run_root": "DIR", "stages": [1, 2, 3], "steps": 6, "resume_at": 3}

Rank 0 writes {"stage": {"straight": [...], "resumed": [...]}} to `out` (losses after resume_at).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidlm import checkpoint as ckpt
from vidlm import runtime as rt

REPO = Path(__file__).resolve().parents[1]
MICRO, ACCUM = 4, 2


def build(stage: int, dist: rt.Dist, seed: int = 0, precision: str = "fp32"):
    """Fresh engines for `stage` (same weights on every rank); EMA only where params are whole."""
    rt.set_deterministic(True)  # CUDA: bitwise-equal losses after a resume need it
    rt.seed_all(seed)
    gen = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.GELU(),
                              torch.nn.Linear(16, 8))
    disc = torch.nn.Linear(8, 1)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-2, weight_decay=0.01)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lambda s: min(1.0, (s + 1) / 3))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=5e-3)
    cfg = rt.deepspeed_config(REPO / f"recipes/deepspeed/zero{stage}.json", micro_batch_size=MICRO,
                              grad_accum=ACCUM, grad_clip=1.0, precision=precision,
                              world_size=dist.world_size)
    engines = {"gen": rt.build_engine(gen, opt_g, sched_g, cfg), "disc": rt.build_engine(disc, opt_d, None, cfg)}
    ema = rt.EMA(engines["gen"].module, decay=0.9) if stage < 3 else None
    return engines, ema


def train_step(engines: dict, ema, step: int, rank: int) -> list[float]:
    """One optimizer step (ACCUM micro steps) on both engines: [summed loss, EMA checksum]."""
    total = 0.0
    for micro in range(ACCUM):
        g = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)  # the data stream
        x = torch.randn(MICRO, 8, generator=g)
        x = x.to(engines["gen"].module[0].weight)  # the engine's device; bf16 engines hold bf16 weights
        x = x + 0.05 * torch.randn_like(x) + 0.1 * float(np.random.rand()) + 0.1 * random.random()
        fake = engines["gen"](x)
        loss_g = F.mse_loss(fake.float(), x.flip(-1).float())
        engines["gen"].backward(loss_g)
        engines["gen"].step()
        loss_d = engines["disc"](fake.detach()).float().pow(2).mean()
        engines["disc"].backward(loss_d)
        engines["disc"].step()
        total += loss_g.item() + loss_d.item()
    if ema is not None:
        ema.update()
        return [total, sum(t.double().sum().item() for t in ema.shadow.values())]
    return [total]


def client_state(step: int, ema) -> dict:
    return {"step": step, "ema": ema.state_dict() if ema is not None else None}


def run_straight(stage, dist, run_dir, steps, save_at, precision="fp32") -> list[list[float]]:
    """`steps` steps from scratch, saving a checkpoint after `save_at` of them."""
    engines, ema = build(stage, dist, precision=precision)
    rt.seed_all(1, dist.rank)
    losses = []
    for step in range(steps):
        if step == save_at:
            ckpt.save_checkpoint(run_dir, step, engines, client_state(step, ema))
        losses.append(train_step(engines, ema, step, dist.rank))
    return losses


def run_resumed(stage, dist, run_dir, steps, precision="fp32") -> tuple[int, list[list[float]]]:
    """Fresh engines, load from `latest`, continue to `steps`; returns (resumed step, losses)."""
    engines, ema = build(stage, dist, seed=123, precision=precision)  # different init: everything must come from disk
    rt.seed_all(456, dist.rank)
    state = ckpt.load_checkpoint(run_dir, engines)
    assert state is not None, f"no checkpoint in {run_dir}"
    if ema is not None:
        ema.load_state_dict(state["ema"])
    losses = [train_step(engines, ema, step, dist.rank) for step in range(state["step"], steps)]
    return state["step"], losses


def main(argv=None) -> int:
    parser = rt.add_launcher_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--config", required=True, help="job JSON (see the module docstring)")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.config).read_text())
    torch.set_num_threads(1)
    dist = rt.init_distributed(args.local_rank)
    result = {"world_size": dist.world_size}
    for stage in job["stages"]:
        run_dir = Path(job["run_root"]) / f"zero{stage}"
        straight = run_straight(stage, dist, run_dir, job["steps"], job["resume_at"])
        at, resumed = run_resumed(stage, dist, run_dir, job["steps"])
        result[str(stage)] = {"straight": straight[at:], "resumed": resumed, "resumed_at": at,
                              "rank_losses_differ": None}
        # ranks see different data: check the run really is distributed
        mine = torch.tensor(straight)
        others = [torch.zeros_like(mine) for _ in range(dist.world_size)]
        torch.distributed.all_gather(others, mine)
        result[str(stage)]["rank_losses_differ"] = any(not torch.equal(others[0], o) for o in others[1:])
    if dist.is_main:
        Path(job["out"]).write_text(json.dumps(result))
    rt.finish(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
