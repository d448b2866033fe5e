"""Training of the video LM on token shards with DeepSpeed ZeRO (`vidlm lm train`).

Per optimizer step, on every rank, grad_accum micro steps of:
  micro batch: `micro_batch_size` rows of `seq_len` tokens, packed from the rank's stream of
      task sequences (doc ids 0,1,2.. per row, -1 for the padding at a row's end)
  forward -> cross entropy on the generated codes only -> backward (engine) -> engine step
The engine clips gradients, steps AdamW and the warm-up + cosine LR schedule.

The data (the task stream, packed micro batches, validation sequences): vidlm.lm.stream; the
run config: vidlm.lm.config.TrainConfig. Validation: per-task loss next to the unigram entropy of the training codes (a model that only learned code
frequencies scores the entropy; below it, the model uses context).
Logs (rank 0): tqdm, TensorBoard + metrics.jsonl: loss, loss/<task>, lr, tokens_per_s, mfu
(when the accelerator's peak is known), skipped_steps, val/<task>.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from vidlm.lm.config import LMConfig, TrainConfig
from vidlm.lm.stream import TaskStream, load_data, micro_batch, unigram_entropy, val_sequences
from vidlm.lm.tasks import TASKS
from vidlm.lm.vocab import Vocab

from vidlm import checkpoint as ckpt
from vidlm import runtime as rt

COMPILE_BACKEND = "inductor"  # of `compile: true` (the tests trace with "aot_eager": no C++ build)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # bf16 dense


def token_losses(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross entropy: (losses (R,L-1) zero off-target, mask (R,L-1)). The model
    computes logits only where there is a target (`VideoLM.target_losses`)."""
    ids = batch["ids"].to(device)
    mask = batch["loss_mask"][:, 1:].to(device)
    targets = torch.full_like(ids, -1)
    targets[:, :-1] = torch.where(mask, ids[:, 1:], -1)  # position p predicts p + 1
    losses = model(ids, batch["coords"].to(device), doc_ids=batch["doc_ids"].to(device), targets=targets)
    ce = torch.zeros(mask.shape, dtype=losses.dtype, device=device)
    ce[mask] = losses
    return ce, mask


@torch.no_grad()
def validate(engine, val_batches: list[dict], device) -> dict[str, float]:
    was = engine.module.training
    engine.module.eval()
    sums, counts = torch.zeros(len(TASKS), dtype=torch.float64), torch.zeros(len(TASKS), dtype=torch.float64)
    for batch in val_batches:
        ce, mask = token_losses(engine, batch, device)
        task = batch["task"][:, 1:].to(device)
        for t in range(len(TASKS)):
            sel = mask & (task == t)
            sums[t] += float(ce[sel].sum())
            counts[t] += float(sel.sum())
    engine.module.train(was)
    out = {f"val/{TASKS[t]}": float(sums[t] / counts[t]) for t in range(len(TASKS)) if counts[t] > 0}
    out["val/loss"] = float(sums.sum() / counts.sum().clamp(min=1))
    return out


# ----------------------------------------------------------------------------- engine
def init_folder(cfg: TrainConfig, lm_cfg: LMConfig, vocab: Vocab) -> Path | None:
    """The folder `init_from` names, checked against this run's architecture and vocab (before
    anything is built: a wrong one is refused at once)."""
    from vidlm.config import ConfigError, init_folder

    if cfg.init_from is None:
        return None
    path = init_folder(cfg.init_from, "lm", lm_cfg)
    if Vocab.from_pretrained(path).to_dict() != vocab.to_dict():
        raise ConfigError(f"init_from: {path} was trained on another vocab than the token data's; tokenize the "
                          "data with the same video tokenizer and text model")
    return path


def build_engine(cfg: TrainConfig, lm_cfg: LMConfig, dist, deepspeed_json: str | None, init: Path | None = None):
    from vidlm.lm.model import VideoLM

    from vidlm.config import ConfigError, load_weights

    if lm_cfg.attn_backend == "flex" and dist.device.type == "cpu":
        raise ConfigError("attn_backend: flex trains on a GPU only (PyTorch has no FlexAttention backward on a "
                          "CPU); use 'auto' or 'sdpa' here")
    ds = rt.deepspeed_config(deepspeed_json, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                             grad_clip=cfg.grad_clip, precision=cfg.precision, world_size=dist.world_size)
    rt.set_deterministic(cfg.deterministic)
    rt.seed_all(cfg.seed)  # the same initial weights on every rank
    with rt.partitioned_init(ds):  # ZeRO-3: each rank only ever holds its partition
        model = VideoLM(lm_cfg)
    if init is not None:
        with rt.gathered(model.parameters()):
            load_weights(model, init / "model.safetensors", init / "config.json", "vidlm lm export --run RUN --out DIR")
    if cfg.compile:
        if rt.zero_stage_of(ds) == 3:
            raise ConfigError("compile: true does not work with ZeRO-3 (its parameter hooks); use ZeRO 0-2 "
                              "or turn compile off")
        for layer in model.layers:
            layer.compile(backend=COMPILE_BACKEND)
    decay = [p for p in model.parameters() if len(getattr(p, "ds_shape", p.shape)) >= 2]
    other = [p for p in model.parameters() if len(getattr(p, "ds_shape", p.shape)) < 2]
    opt = rt.adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                    {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rt.warmup_cosine(cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    return rt.build_engine(model, opt, sched, ds)


def peak_flops(cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


def check_code_levels(levels: tuple[int, ...], tokens: Path) -> None:
    """model.code_levels must be the FSQ levels of the token folder's tokenizer (before anything is
    built: a wrong one is refused at once)."""
    from vidlm.config import ConfigError, read_json

    if not levels:
        return
    path = tokens / "tokenizer" / "config.json"
    tok = read_json(path).get("config", {}) if path.is_file() else {}
    if tok.get("quantizer") != "fsq" or list(tok.get("levels", ())) != list(levels):
        found = f"its tokenizer codes with {tok.get('quantizer')} levels {tok.get('levels')}" if tok else "it holds no tokenizer"
        raise ConfigError(f"model.code_levels {list(levels)} must be the FSQ levels of the codes in {tokens}, but "
                          f"{found}; set model.code_levels to its FSQ levels, or leave it out")


def write_run_info(run: Path, cfg: TrainConfig, lm_cfg: LMConfig, vocab: Vocab) -> None:
    from vidlm.config import to_dict

    run.mkdir(parents=True, exist_ok=True)
    (run / "train.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")
    (run / "lm.json").write_text(json.dumps(to_dict(lm_cfg), indent=1) + "\n")
    vocab.save(run)


# ----------------------------------------------------------------------------- the loop
def main(cfg: TrainConfig, *, run_dir: str | None = None, data: str | None = None, deepspeed: str | None = None,
         local_rank: int | None = None, stop_at: int | None = None, places=None) -> dict:
    """Train (or resume) an LM run; `places` as in vidlm.lm.tasks (two-level codes: `vidlm lm train`
    reads them from the token folder). Returns {"losses": [per-step mean training loss on this rank],
    "first_step": step the run (re)started at, "last": last logged scalars, "params_held":
    parameter elements this rank holds (all of them but under ZeRO-3)}."""
    dist = rt.init_distributed(local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(run_dir or cfg.run_dir)
    train_clips, val_clips, vocab = load_data(cfg, data)
    lm_cfg = cfg.lm_config(vocab.size)
    check_code_levels(lm_cfg.code_levels, Path(data or cfg.data.tokens))
    lm_cfg = dataclasses.replace(lm_cfg, code_places=places is not None,
                                 code_start=vocab.code_range[0] if lm_cfg.code_levels else 0)
    init = init_folder(cfg, lm_cfg, vocab)
    if dist.is_main:
        write_run_info(run, cfg, lm_cfg, vocab)
    engine = build_engine(cfg, lm_cfg, dist, deepspeed, init)
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in engine.module.parameters())
    guard = rt.NonFiniteGuard(cfg.nonfinite_limit)
    client = ckpt.load_checkpoint(run, {"model": engine})
    step, cursor = (int(client["step"]), int(client["cursor"])) if client else (0, 0)
    if client:
        guard.load_state_dict(client["guard"])
    first_step = step
    stream = TaskStream(train_clips, vocab, cfg.data, seed=cfg.seed, rank=dist.rank, world=dist.world_size,
                        row_len=cfg.row_len, places=places)
    val_batches = val_sequences(val_clips, vocab, cfg, places)
    entropy = unigram_entropy(train_clips, vocab.code_size)
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    logger = rt.RunLogger(run, cfg.steps, dist, start_step=step, desc="lm", postfix_keys=("loss", "val/loss", "tokens_per_s"))
    logger.info(f"lm: {lm_cfg.num_params() / 1e6:.1f}M params in {'bf16' if engine.bfloat16_enabled() else 'fp16' if engine.fp16_enabled() else 'fp32'}, {len(train_clips)} train / {len(val_clips)} val clips, "
                f"rows {cfg.micro_batch_size}x{cfg.row_len}, unigram entropy of the codes {entropy:.3f} nats; "
                f"this rank holds {held / lm_cfg.num_params():.0%} of the parameters")
    peak = peak_flops(cfg)
    flops_tok = lm_cfg.flops_per_token(cfg.row_len)
    losses: list[float] = []
    window = defaultdict(float)
    tick, tokens, started, last = time.time(), 0, time.time(), {}
    while step < end:
        used = []  # the losses of the micro-batches the guard let through
        for _ in range(cfg.grad_accum):
            batch, cursor = micro_batch(stream, cursor, cfg.micro_batch_size, cfg.row_len)
            ce, mask = token_losses(engine, batch, dist.device)
            loss = ce.sum() / mask.sum().clamp(min=1)
            first = batch["ids"][:1, :1].to(dist.device), batch["coords"][:1, :1].to(dist.device)
            if not rt.guarded_step(engine, loss, guard, step, lambda first=first: engine(*first)):
                continue
            used.append(float(loss.detach()))
            task = batch["task"][:, 1:].to(dist.device)
            for t in task[mask].unique().tolist():
                sel = mask & (task == t)
                window[f"sum/{TASKS[t]}"] += float(ce[sel].detach().sum())
                window[f"n/{TASKS[t]}"] += float(sel.sum())
            tokens += int((batch["doc_ids"] >= 0).sum()) * dist.world_size
        step_loss = sum(used) / len(used) if used else float("nan")
        losses.append(step_loss)
        if used:
            window["loss"] += step_loss
            window["steps"] += 1
        step += 1
        if cfg.max_minutes is not None and time.time() - started > 60 * cfg.max_minutes and step < end:
            logger.info(f"max_minutes={cfg.max_minutes} spent: stopping at step {step} of {cfg.steps}")
            end = step
        if step % cfg.log_every == 0 or step == end:
            dt = max(time.time() - tick, 1e-9)
            logs = {"loss": window["loss"] / window["steps"] if window["steps"] else float("nan"), "lr": engine.get_lr()[0], "tokens_per_s": tokens / dt,
                    "skipped_steps": guard.skipped, "unigram_entropy": entropy}
            logs.update({f"loss/{t}": window[f"sum/{t}"] / window[f"n/{t}"] for t in TASKS if window[f"n/{t}"]})
            if peak:
                logs["mfu"] = tokens / dt * flops_tok / (peak * dist.world_size)
            if step % cfg.val_every == 0 or step == end:
                logs.update(validate(engine, val_batches, dist.device))
            logger.log(step, logs)
            last = {"step": step, **logs}
            window.clear()
            tick, tokens = time.time(), 0
        if step % cfg.ckpt_every == 0 or step == end:
            ckpt.save_checkpoint(run, step, {"model": engine},
                               {"step": step, "cursor": cursor, "guard": guard.state_dict()}, keep_last=cfg.keep_last)
    logger.close()
    return {"losses": losses, "first_step": first_step, "last": last, "params_held": held}


# ----------------------------------------------------------------------------- export
def export(run_dir, out_dir, *, step: int | None = None) -> Path:
    """RUN/latest -> out_dir/model.safetensors + config.json + vocab.json (VideoLM.from_pretrained).
    `step` exports an earlier checkpoint of the run instead (one `latest` has passed, so it is
    complete: docs/experiments/scaling.py --run evaluates a run at several points of its training).

    ZeRO-1/2/3 checkpoints are consolidated to fp32 with DeepSpeed's zero_to_fp32 (which reads
    the partitioned ZeRO-3 parameters); ZeRO-0 checkpoints hold the whole module. Reads only
    our own run folder."""
    from vidlm.lm.model import VideoLM

    from vidlm.config import from_dict

    run = Path(run_dir)
    step_dir = ckpt.latest_step_dir(run)
    if step_dir is None:
        raise FileNotFoundError(f"{run} has no checkpoint (no 'latest'); train first with `vidlm lm train`")
    if step is not None:
        step_dir = ckpt.step_dir_at(run, step)
    lm_cfg = from_dict(LMConfig, json.loads((run / "lm.json").read_text()), where=str(run / "lm.json"))
    vocab = Vocab.from_pretrained(run)
    model = VideoLM(lm_cfg)
    state = ckpt.saved_weights(step_dir, "model")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.save_pretrained(out_dir, vocab=vocab)
