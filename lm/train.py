"""Training of the video LM on token shards with DeepSpeed ZeRO (`vidlm lm train`).

Per optimizer step, on every rank, grad_accum micro steps of:
  micro batch: `micro_batch_size` rows of `seq_len` tokens, packed from the rank's stream of
      task sequences (doc ids 0,1,2.. per row, -1 for the padding at a row's end)
  forward -> cross entropy on the generated codes only -> backward (engine) -> engine step
The engine clips gradients, steps AdamW and the warm-up + cosine LR schedule.

The sequence stream is a pure function of (seed, rank, n): sequence n of a rank takes clip
perm_epoch[rank + world * i] (a permutation per epoch), draws its task from `data.tasks`, the
lengths of its known segments, and whether text / known segments are dropped, all from a
generator seeded by (seed, rank, n). The run's data position is one integer per rank (the
next sequence), so resuming from `latest` reproduces the uninterrupted run's losses exactly.
Grid sizes come from each clip's own codes (its bucket): one model sees every size and duration.

Validation: the last `data.val_clips` clips (held out from training), every task, no drops;
per-task loss next to the unigram entropy of the training codes (a model that only learned code
frequencies scores the entropy; below it, the model uses context).
Logs (rank 0): tqdm, TensorBoard + metrics.jsonl: loss, loss/<task>, lr, tokens_per_s, mfu
(when the accelerator's peak is known), skipped_steps, val/<task>.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from vidlm.lm.config import PRESETS, LMConfig
from vidlm.lm.tasks import TASKS, draw_task, render_train
from vidlm.lm.tokendata import TokenClip, pack, read_clips
from vidlm.lm.vocab import Vocab

from vidlm import checkpoint as ckpt
from vidlm import runtime as rt

DEFAULT_TASKS = {"t2v": 0.25, "t2i": 0.05, "i2v": 0.1, "extend-forward": 0.15, "extend-backward": 0.1,
                 "connect": 0.1, "loop": 0.1, "edit": 0.15}
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # bf16 dense


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

    def __post_init__(self):
        bad = sorted(set(self.tasks) - set(TASKS))
        if bad or not self.tasks or min(self.tasks.values()) < 0 or sum(self.tasks.values()) <= 0:
            raise ValueError(f"data.tasks: {bad or self.tasks} — tasks are {list(TASKS)} with weights >= 0")
        for name in ("p_drop_text", "p_drop_known"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name} must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """An LM training run (recipes/lm/*.yaml)."""

    preset: str = "debug"
    """LMConfig preset."""
    model: dict[str, Any] = field(default_factory=dict)
    """LMConfig fields overriding the preset (vocab_size comes from the token folder)."""
    data: DataConfig = DataConfig()
    """Token data and tasks."""
    run_dir: str = "runs/lm"
    """Run folder (checkpoints, TensorBoard, metrics.jsonl); --run overrides."""
    steps: int = 1000
    """Optimizer steps."""
    micro_batch_size: int = 4
    """Packed rows per rank per micro step."""
    seq_len: int | None = None
    """Tokens per packed row (None: the model's max_seq_len)."""
    grad_accum: int = 1
    """Micro steps per optimizer step."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup: int = 100
    """Linear warm-up steps."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices only; not norms)."""
    grad_clip: float = 1.0
    """Gradient clipping (0 = off)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32 on CPU, bf16 on GPUs."""
    seed: int = 0
    """Seed of the weights and of the data stream."""
    log_every: int = 10
    """Steps between scalar logs."""
    val_every: int = 100
    """Steps between validations (and at the end)."""
    ckpt_every: int = 200
    """Steps between checkpoints (and at the end)."""
    keep_last: int = 2
    """Checkpoints kept."""
    nonfinite_limit: int = 10
    """Skipped non-finite steps tolerated before stopping."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much wall time; the schedule keeps `steps`."""
    peak_tflops: float | None = None
    """Accelerator peak for the MFU estimate (None: known GPUs are looked up, else no MFU)."""
    threads: int = 0
    """torch threads per rank (0: torch's default)."""
    init_from: str | None = None
    """Fine-tune: start from exported LM weights (a `vidlm lm export` folder, a model folder
    holding lm/, or shipped weights by name) instead of a random init. Their architecture and
    vocab must be this run's."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {list(PRESETS)}")
        cfg = self.lm_config(vocab_size=PRESETS[self.preset].vocab_size)
        if self.seq_len is not None and not 8 <= self.seq_len <= cfg.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} must be in 8..max_seq_len ({cfg.max_seq_len})")

    def lm_config(self, vocab_size: int) -> LMConfig:
        from vidlm.config import ConfigError, from_dict, to_dict

        base = to_dict(PRESETS[self.preset])
        unknown = sorted(set(self.model) - set(base))
        if unknown or "vocab_size" in self.model:
            raise ConfigError(f"model: key(s) {unknown or ['vocab_size']} not allowed; allowed: "
                              f"{sorted(set(base) - {'vocab_size'})} (vocab_size comes from the token data)")
        return from_dict(LMConfig, {**base, **self.model, "vocab_size": vocab_size}, where="model")

    @property
    def row_len(self) -> int:
        return self.seq_len or self.lm_config(PRESETS[self.preset].vocab_size).max_seq_len


# ----------------------------------------------------------------------------- data
class TaskStream:
    """Sequence n of a rank, as a pure function of (seed, rank, n): see the module doc."""

    def __init__(self, clips: list[TokenClip], vocab: Vocab, cfg: DataConfig, *, seed: int, rank: int,
                 world: int, row_len: int):
        if len(clips) < world:
            raise ValueError(f"{len(clips)} training clips for {world} ranks; need at least one per rank")
        self.clips, self.vocab, self.cfg = clips, vocab, cfg
        self.seed, self.rank, self.world, self.row_len = seed, rank, world, row_len
        self.per_rank = len(clips) // world
        self.names = list(cfg.tasks)
        self.weights = torch.tensor([cfg.tasks[t] for t in self.names], dtype=torch.float64)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(rt.derive_seed(self.seed, epoch, "lm-order"))
            self._perms = {epoch: torch.randperm(len(self.clips), generator=g)}
        return self._perms[epoch]

    def __call__(self, n: int):
        """(Sequence, task index in TASKS)."""
        epoch, i = divmod(n, self.per_rank)
        clip = self.clips[int(self._perm(epoch)[self.rank + self.world * i])]
        g = torch.Generator().manual_seed(rt.derive_seed(self.seed, self.rank, n, "lm-task"))
        task = self.names[int(torch.multinomial(self.weights, 1, generator=g))]
        drop_text, drop_known = (torch.rand(2, generator=g) < torch.tensor(
            [self.cfg.p_drop_text, self.cfg.p_drop_known], dtype=torch.float32)).tolist()
        return make_sequence(task, clip, self.vocab, g, drop_text, drop_known, self.row_len)


def make_sequence(task: str, clip: TokenClip, vocab: Vocab, g: torch.Generator, drop_text: bool,
                  drop_known: bool, row_len: int):
    drawn = draw_task(task, clip.codes, clip.tails, clip.structure, g)
    if drawn is None:
        task, drawn = "t2v", (clip.codes, [])
    grid, known = drawn
    seq = render_train(task, vocab, codes=grid, text=clip.text, known=known, drop_text=drop_text,
                       drop_known=drop_known)
    if len(seq.ids) > row_len and task != "t2v":
        return make_sequence("t2v", clip, vocab, g, drop_text, drop_known, row_len)
    if len(seq.ids) > row_len:
        raise ValueError(f"clip {clip.key} ({tuple(clip.codes.shape)} codes) makes a {len(seq.ids)}-token t2v "
                         f"sequence, longer than rows of {row_len}: raise seq_len or tokenize smaller buckets")
    return seq, TASKS.index(task)


def micro_batch(stream, cursor: int, rows: int, row_len: int) -> tuple[dict, int]:
    """Pack sequences cursor, cursor+1, ... (`stream(n)` -> (Sequence, task) or None at the end)
    into `rows` rows; the first that does not fit stays for the next micro batch. Returns (batch,
    next cursor); batch["task"] (R,L) is the task index at every target position (-1 elsewhere)."""
    seqs, tasks, used, n = [], [], [0], cursor
    while (item := stream(n)) is not None:
        seq, task = item
        if used[-1] + len(seq.ids) > row_len:
            if len(used) == rows:
                break
            used.append(0)
        used[-1] += len(seq.ids)
        seqs.append(seq)
        tasks.append(task)
        n += 1
    batch = pack(seqs, row_len)
    pad = rows - batch["ids"].shape[0]  # the end of a finite stream leaves rows empty
    if pad:
        batch["ids"] = torch.cat([batch["ids"], torch.zeros(pad, row_len, dtype=torch.long)])
        batch["coords"] = torch.cat([batch["coords"], torch.zeros(pad, row_len, 3, dtype=torch.long)])
        batch["loss_mask"] = torch.cat([batch["loss_mask"], torch.zeros(pad, row_len, dtype=torch.bool)])
        batch["doc_ids"] = torch.cat([batch["doc_ids"], torch.full((pad, row_len), -1)])
    task_of = torch.full(batch["ids"].shape, -1, dtype=torch.long)
    for (row, start, length), t, s in zip(batch["index"], tasks, seqs):
        task_of[row, start : start + length][s.loss_mask] = t
    batch["task"] = task_of
    return batch, n


def token_losses(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross entropy: (losses (R,L-1) zero off-target, mask (R,L-1))."""
    ids = batch["ids"].to(device)
    logits = model(ids, batch["coords"].to(device), doc_ids=batch["doc_ids"].to(device))  # (R,L,V) fp32
    mask = batch["loss_mask"][:, 1:].to(device)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(mask.shape)
    return ce * mask, mask


def unigram_entropy(clips: list[TokenClip], code_size: int) -> float:
    """Entropy (nats) of the code frequencies over the clips: the loss of a context-free model."""
    counts = torch.zeros(code_size, dtype=torch.float64)
    for c in clips:
        counts += torch.bincount(c.codes.flatten(), minlength=code_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


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


def val_sequences(clips: list[TokenClip], vocab: Vocab, cfg: TrainConfig) -> list[dict]:
    """Every task of every held-out clip, no drops, packed into micro batches."""
    stream = []
    for i, clip in enumerate(clips):
        for task in TASKS:
            g = torch.Generator().manual_seed(rt.derive_seed(cfg.seed, i, task, "val"))
            if draw_task(task, clip.codes, clip.tails, clip.structure, torch.Generator().manual_seed(0)) is None:
                continue
            stream.append(make_sequence(task, clip, vocab, g, False, False, cfg.row_len))
    batches, n = [], 0
    while n < len(stream):
        batch, n = micro_batch(lambda k: stream[k] if k < len(stream) else None, n, cfg.micro_batch_size,
                               cfg.row_len)
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------- engine
def init_folder(cfg: TrainConfig, lm_cfg: LMConfig, vocab: Vocab) -> Path | None:
    """The folder `init_from` names, checked against this run's architecture and vocab (before
    anything is built: a wrong one is refused at once)."""
    from vidlm.config import ConfigError, read_json, resolve_weights, to_dict

    if cfg.init_from is None:
        return None
    path = resolve_weights(cfg.init_from)
    path = path / "lm" if (path / "lm").is_dir() else path
    if not (path / "config.json").is_file():
        raise ConfigError(f"init_from: {cfg.init_from} holds no exported LM (config.json, model.safetensors); "
                          "write one with `vidlm lm export --run RUN --out DIR`")
    theirs, ours = read_json(path / "config.json"), to_dict(lm_cfg)
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(f"init_from: {path} is another architecture than this run's (differs in {diff}); "
                          "use the same preset and model overrides")
    if Vocab.from_pretrained(path).to_dict() != vocab.to_dict():
        raise ConfigError(f"init_from: {path} was trained on another vocab than the token data's; tokenize the "
                          "data with the same video tokenizer and text model")
    return path


def build_engine(cfg: TrainConfig, lm_cfg: LMConfig, dist, deepspeed_json: str | None, init: Path | None = None):
    from vidlm.lm.model import VideoLM

    from vidlm.config import load_weights

    rt.seed_all(cfg.seed)  # the same initial weights on every rank
    model = VideoLM(lm_cfg)
    if init is not None:
        load_weights(model, init / "model.safetensors", init / "config.json", "vidlm lm export --run RUN --out DIR")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rt.warmup_cosine(cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    ds = rt.deepspeed_config(deepspeed_json, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                             grad_clip=cfg.grad_clip, precision=cfg.precision, world_size=dist.world_size)
    return rt.build_engine(model, opt, sched, ds)


def peak_flops(cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


def load_data(cfg: TrainConfig, data: str | None) -> tuple[list[TokenClip], list[TokenClip], Vocab]:
    folder = data or cfg.data.tokens
    if not folder:
        raise ValueError("no token data: pass --data DIR or set data.tokens (write it with `vidlm data tokenize`)")
    clips = sorted(read_clips(folder), key=lambda c: c.key)
    vocab = Vocab.from_pretrained(folder)
    n_val = min(cfg.data.val_clips, len(clips) // 2)
    return clips[: len(clips) - n_val], clips[len(clips) - n_val :], vocab


def write_run_info(run: Path, cfg: TrainConfig, lm_cfg: LMConfig, vocab: Vocab) -> None:
    from vidlm.config import to_dict

    run.mkdir(parents=True, exist_ok=True)
    (run / "train.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")
    (run / "lm.json").write_text(json.dumps(to_dict(lm_cfg), indent=1) + "\n")
    vocab.save(run)


# ----------------------------------------------------------------------------- the loop
def main(cfg: TrainConfig, *, run_dir: str | None = None, data: str | None = None, deepspeed: str | None = None,
         local_rank: int | None = None, stop_at: int | None = None) -> dict:
    """Train (or resume) an LM run. Returns {"losses": [per-step mean training loss on this rank],
    "first_step": step the run (re)started at, "last": last logged scalars}."""
    dist = rt.init_distributed(local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(run_dir or cfg.run_dir)
    train_clips, val_clips, vocab = load_data(cfg, data)
    lm_cfg = cfg.lm_config(vocab.size)
    init = init_folder(cfg, lm_cfg, vocab)
    if dist.is_main:
        write_run_info(run, cfg, lm_cfg, vocab)
    engine = build_engine(cfg, lm_cfg, dist, deepspeed, init)
    guard = rt.NonFiniteGuard(cfg.nonfinite_limit)
    client = ckpt.load_checkpoint(run, {"model": engine})
    step, cursor = (int(client["step"]), int(client["cursor"])) if client else (0, 0)
    if client:
        guard.load_state_dict(client["guard"])
    first_step = step
    stream = TaskStream(train_clips, vocab, cfg.data, seed=cfg.seed, rank=dist.rank, world=dist.world_size,
                        row_len=cfg.row_len)
    val_batches = val_sequences(val_clips, vocab, cfg)
    entropy = unigram_entropy(train_clips, vocab.code_size)
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    logger = rt.RunLogger(run, cfg.steps, dist, start_step=step, desc="lm", postfix_keys=("loss", "val/loss", "tokens_per_s"))
    logger.info(f"lm: {lm_cfg.num_params() / 1e6:.1f}M params, {len(train_clips)} train / {len(val_clips)} val clips, "
                f"rows {cfg.micro_batch_size}x{cfg.row_len}, unigram entropy of the codes {entropy:.3f} nats")
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
    return {"losses": losses, "first_step": first_step, "last": last}


# ----------------------------------------------------------------------------- export
def export(run_dir, out_dir, *, step: int | None = None) -> Path:
    """RUN/latest -> out_dir/model.safetensors + config.json + vocab.json (VideoLM.from_pretrained).
    `step` exports an earlier checkpoint of the run instead (one `latest` has passed, so it is
    complete: the compute-scaling figure evaluates a run at several points of its training).

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
