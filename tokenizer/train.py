"""Tokenizer training: `main(cfg, ...)`, an explicit loop of small named functions.

Two DeepSpeed engines, "generator" (the VideoTokenizer) and "discriminator"; EMA of the
generator; one checkpoint holds both engines (models, optimizers, schedulers) and a client state
with the step, data position, EMA, LeCAM anchors and the non-finite count (RNG by the runtime).
Resume is from RUN/latest only, and reproduces the uninterrupted run's losses exactly.

Per step (x grad_accum micro steps), on the next clips or, every data.image_every-th step, on
random frames of them as one-frame videos (joint image-video training). Logged losses are means
over the steps since the last log, those of image steps named image_*:
    generator_step      recon = G(x); rec + aux (+ adaptive-weighted hinge GAN after disc_start),
                        D frozen; backward + step on the generator engine only
    discriminator_step  (after disc_start) hinge + LeCAM on D([x, recon.detach()]); D engine only
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from vidlm import checkpoint as ckpt
from vidlm import runtime as rt
from vidlm.runtime import derive_seed

from .config import TrainConfig
from .discriminator import PatchDiscriminator3D
from .losses import TokenizerLosses, last_layer_weight
from .metrics import code_stats, psnr
from .model import VideoTokenizer

ENGINES = ("generator", "discriminator")


def init_folder(cfg: TrainConfig) -> Path | None:
    """The folder `init_from` names, checked against this run's tokenizer config (at once)."""
    from vidlm.config import init_folder

    return init_folder(cfg.init_from, "tokenizer", cfg.tokenizer_config()) if cfg.init_from else None


def build_engines(cfg: TrainConfig, dist, deepspeed_json: str | None, init: Path | None = None):
    from vidlm.config import load_weights

    rt.set_deterministic(cfg.deterministic)
    rt.seed_all(cfg.seed)  # identical initial weights on every rank
    gen = VideoTokenizer(cfg.tokenizer_config())
    if init is not None:
        load_weights(gen, init / "model.safetensors", init / "config.json", "vidlm tokenizer export --run RUN --out DIR")
    disc = PatchDiscriminator3D(cfg.disc, gen.cfg.in_channels)
    ds = rt.deepspeed_config(deepspeed_json, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                             grad_clip=cfg.grad_clip, precision=cfg.precision, world_size=dist.world_size)
    if ds.get("zero_optimization", {}).get("stage", 0) >= 3:
        raise ValueError("the tokenizer trainer keeps an EMA of whole generator weights: use ZeRO stage 0-2 "
                         "(recipes/deepspeed/zero2.json); the models are small enough not to need ZeRO-3")
    opt_g = rt.adamw(gen.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_g, rt.warmup_cosine(cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    opt_d = rt.adamw(disc.parameters(), lr=cfg.disc_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rt.seed_all(cfg.seed, dist.rank)
    return {"generator": rt.build_engine(gen, opt_g, sched, ds), "discriminator": rt.build_engine(disc, opt_d, None, ds)}


def resolve_shards(cfg: TrainConfig, data: str | None, run_dir: Path, dist) -> str:
    """--data, else the recipe's data.shards, else shapes-world clips synthesized into RUN/data."""
    if data or cfg.data.shards:
        return data or cfg.data.shards
    out = run_dir / "data"
    if dist.is_main and not list(out.glob("*.tar")):
        from vidlm.data.synthetic import synth_shards

        tmp = run_dir / ".data-tmp"
        w, h = cfg.data.size
        synth_shards(tmp, cfg.data.synth_clips, seed=cfg.seed, width=w, height=h, frames=cfg.data.frames,
                     fps=cfg.data.fps)
        tmp.rename(out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return str(out)


def build_loaders(cfg: TrainConfig, shards: str, dist, factors: tuple[int, int]):
    from vidlm.data.loader import LoaderConfig, VideoLoader

    d = cfg.data
    base = LoaderConfig(batch_size=cfg.micro_batch_size, areas=(d.size[0] * d.size[1],), frames=(d.frames,),
                        time_factor=factors[0], factor=factors[1], fps=d.fps, seed=cfg.seed, epoch_batches=d.epoch_batches,
                        num_workers=d.num_workers, require_caption=False)
    train = VideoLoader(shards, base, rank=dist.rank, world_size=dist.world_size)
    # The same clips on every rank: rank 0's resampled stream (a one-pass loader splits shards by
    # the process group's rank, whatever rank= says).
    val = VideoLoader(shards, base, rank=0, world_size=1, batch_size=d.val_clips, train=False, shuffle_buffer=1,
                      epoch_batches=1, num_workers=0)
    return train, next(iter(val))["video"]


def endless(loader):
    while True:
        yield from loader


def is_image_step(cfg: TrainConfig, step: int) -> bool:
    return cfg.data.image_every > 0 and step % cfg.data.image_every == cfg.data.image_every - 1


def image_batch(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n distinct random frames of the clips x (B,C,T,H,W) as one-frame videos (n,C,1,H,W)."""
    frames = x.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
    pick = torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return frames[pick].unsqueeze(2)


def set_trainable(module: torch.nn.Module, on: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(on)


def coarse_weight(cfg: TrainConfig, step: int) -> float:
    """The two-level coarse loss's weight at `step`: model.coarse_weight until `coarse_until` of
    the steps, then 0 (a function of the step: a resumed run switches where the straight one does)."""
    return cfg.tokenizer_config().coarse_weight if step < cfg.coarse_until * cfg.steps else 0.0


def generator_step(engines, losses: TokenizerLosses, guard, x, step: int):
    g, d = engines["generator"], engines["discriminator"]
    set_trainable(d.module, False)
    recon, ids, aux, feats = g(x)
    recon, fake, weight = recon.float(), None, None
    if losses.gan_active(step):
        fake = d.module(recon.to(x.dtype)).float()
        if losses.cfg.adaptive_weight:
            weight = last_layer_weight(losses, x.float(), feats, g.module, d.module)
    loss, logs = losses.generator(x.float(), recon, aux.float(), fake, weight)
    rt.guarded_step(g, loss, guard, step, lambda: g(x[:1, :, :1])[0])
    set_trainable(d.module, True)
    return recon.detach(), ids, logs


def discriminator_step(engines, losses: TokenizerLosses, guard, x, recon, step: int):
    d = engines["discriminator"]
    logits = d(torch.cat([x, recon.to(x.dtype)])).float()
    real, fake = logits.chunk(2)
    loss, logs = losses.discriminator(real, fake)
    if rt.guarded_step(d, loss, guard, step, lambda: d(x[:1])):
        losses.lecam_step(real, fake)
    return logs


@torch.no_grad()
def validate(gen: VideoTokenizer, val: torch.Tensor, logger, step: int) -> float:
    was = gen.training
    gen.eval()
    dtype = next(gen.parameters()).dtype
    recon = gen.decode(gen.encode(val.to(gen.last_layer.device, dtype))).float().clamp(-1, 1).cpu()
    gen.train(was)
    value = float(psnr(recon, val))
    logger.video("recon/original|reconstruction", step, torch.cat([val[0], recon[0]], dim=-1))
    return value


def client_state(step, loader, ema, losses, guard) -> dict:
    return {"step": step, "data": loader.state_dict(), "ema": ema.state_dict(),
            "lecam": losses.lecam.state_dict(), "guard": guard.state_dict()}


def restore(client: dict, loader, ema, losses, guard) -> int:
    loader.load_state_dict(client["data"])
    ema.load_state_dict(client["ema"])
    losses.lecam.load_state_dict(client["lecam"])
    guard.load_state_dict(client["guard"])
    return int(client["step"])


def write_run_info(run_dir: Path, cfg: TrainConfig) -> None:
    from vidlm.config import to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")
    (run_dir / "tokenizer.json").write_text(json.dumps(to_dict(cfg.tokenizer_config()), indent=1) + "\n")


def main(cfg: TrainConfig, *, run_dir: str | None = None, data: str | None = None, deepspeed: str | None = None,
         local_rank: int | None = None, stop_at: int | None = None) -> dict:
    """Train (or resume) a tokenizer run; returns the last logged scalars. `stop_at` ends the run
    early at that step (with a checkpoint) without changing the schedule (for resume tests)."""
    dist = rt.init_distributed(local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(run_dir or cfg.run_dir)
    init = init_folder(cfg)
    if dist.is_main:
        write_run_info(run, cfg)
    engines = build_engines(cfg, dist, deepspeed, init)
    gen = engines["generator"].module
    dtype = next(gen.parameters()).dtype
    ema = rt.EMA(gen, cfg.ema_decay)
    guard = rt.NonFiniteGuard(cfg.nonfinite_limit)
    losses = TokenizerLosses(cfg.loss, log=print if dist.is_main else (lambda *_: None))
    loader, val = build_loaders(cfg, resolve_shards(cfg, data, run, dist), dist, gen.factors)
    client = ckpt.load_checkpoint(run, engines)
    step = restore(client, loader, ema, losses, guard) if client else 0
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    logger = rt.RunLogger(run, cfg.steps, dist, start_step=step, desc="tokenizer",
                          postfix_keys=("l1", "psnr_val", "usage", "d_loss"))
    batches = endless(loader)
    hist = torch.zeros(gen.codebook_size, dtype=torch.long)
    last: dict = {}
    sums: dict = defaultdict(float)  # logged values summed since the last log, and their counts
    counts: dict = defaultdict(int)
    tick, frames, started = time.time(), 0, time.time()
    while step < end:
        if gen.cfg.coarse_weight and gen.quantizer.coarse_weight != (weight := coarse_weight(cfg, step)):
            gen.quantizer.coarse_weight = weight
            logger.info(f"step {step}: the two-level coarse loss's weight is now {weight}")
        logs: dict = defaultdict(float)
        kind = "image" if is_image_step(cfg, step) else "video"
        for micro in range(cfg.grad_accum):
            x = next(batches)["video"].to(dist.device, dtype)
            if kind == "image":  # seeded by (seed, step, rank, micro): resumes exactly
                x = image_batch(x, cfg.data.image_batch_size, derive_seed(cfg.seed, step, dist.rank, micro))
            recon, ids, g_logs = generator_step(engines, losses, guard, x, step)
            d_logs = discriminator_step(engines, losses, guard, x, recon, step) if losses.gan_active(step) else {}
            for k, v in {**g_logs, **d_logs}.items():
                logs[k] += float(v) / cfg.grad_accum
            hist += torch.bincount(ids.flatten().cpu(), minlength=gen.codebook_size)
            frames += x.shape[0] * x.shape[2] * dist.world_size
        ema.update(gen)
        step += 1
        for k, v in logs.items():
            name = f"image_{k}" if kind == "image" else k
            sums[name], counts[name] = sums[name] + v, counts[name] + 1
        if cfg.max_minutes is not None and time.time() - started > 60 * cfg.max_minutes and step < end:
            logger.info(f"max_minutes={cfg.max_minutes} spent: stopping at step {step} of {cfg.steps}")
            end = step
        if step % cfg.log_every == 0 or step in (1, end):
            dt = time.time() - tick
            row = {k: v / counts[k] for k, v in sums.items()}
            row.update(code_stats(hist), lr=engines["generator"].get_lr()[0], frames_per_s=frames / dt,
                       skipped_samples=sum(loader.counts.values()), skipped_steps=guard.skipped)
            if step % cfg.val_every == 0 or step in (1, end):
                row["psnr_val"] = validate(gen, val, logger, step)
            logger.log(step, row)
            last = {"step": step, **row}
            hist.zero_()
            sums.clear()
            counts.clear()
            tick, frames = time.time(), 0
        if step % cfg.ckpt_every == 0 or step == end:
            ckpt.save_checkpoint(run, step, engines, client_state(step, loader, ema, losses, guard),
                               keep_last=cfg.keep_last)
    logger.close()
    return last


def export(run_dir, out_dir, *, raw: bool = False) -> Path:
    """Write the EMA (default) or raw generator weights of RUN/latest with save_pretrained.

    Reads only our own files: RUN/tokenizer.json and the checkpoint's rank-0 state (EMA) or
    DeepSpeed's model file (raw), both with torch.load(weights_only=True)."""
    from vidlm.config import from_dict

    from .config import TokenizerConfig

    run = Path(run_dir)
    step_dir = ckpt.latest_step_dir(run)
    if step_dir is None:
        raise FileNotFoundError(f"{run} has no checkpoint (no 'latest'); train first with `vidlm tokenizer train`")
    cfg = from_dict(TokenizerConfig, json.loads((run / "tokenizer.json").read_text()), where=str(run / "tokenizer.json"))
    model = VideoTokenizer(cfg)
    if raw:
        model.load_state_dict({k: v.float() for k, v in ckpt.saved_weights(step_dir, "generator").items()})
    else:
        ema = rt.EMA(model)
        ema.load_state_dict(torch.load(step_dir / "rank-0.pt", map_location="cpu", weights_only=True)["client_state"]["ema"])
        ema.copy_to(model)
    return model.save_pretrained(out_dir)
