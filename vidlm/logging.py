"""Run logging: a tqdm bar with ETA, TensorBoard and metrics.jsonl, all on rank 0 only; and
`progress_bar`, the one progress bar of every command.

    log = RunLogger(run_dir, total_steps=cfg.steps, dist=dist, start_step=step, desc="lm")
    log.log(step, {"loss": 2.31, "lr": 3e-4, "tokens_per_s": 5300.0})
    log.image("recon", step, img)        # (C,H,W) in [-1, 1]
    log.video("recon", step, video)      # (C,T,H,W) in [-1, 1], shown as a strip of frames
    log.close()

TensorBoard events go to run_dir/tb (`tensorboard --logdir RUN_DIR/tb`); every `log` call also
appends one JSON line {"step", "time", **scalars} to run_dir/metrics.jsonl. A resumed run
appends to the same files. On ranks other than 0 every method is a no-op.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import torch

PLAIN_EVERY = 30.0
"""Seconds between progress lines where stderr is not a terminal (a log file, CI, nohup)."""


class _Lines(io.TextIOBase):
    """tqdm's output as plain lines: each refresh (a carriage return and the bar) becomes one
    line, so a log holds a readable line per interval instead of one line of thousands of bars."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of a histogram (the code statistics both trainers log)."""
    p = counts.double()[counts > 0]
    p = p / p.sum()
    return float(-(p * p.log()).sum())


def progress_bar(iterable=None, *, file=None, **kwargs):
    """A tqdm bar on a terminal; elsewhere a plain line every PLAIN_EVERY seconds (and at the
    end). Takes tqdm's arguments."""
    from tqdm.auto import tqdm

    stream = file or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs.update(file=_Lines(stream), mininterval=PLAIN_EVERY, maxinterval=PLAIN_EVERY,
                      dynamic_ncols=False, ncols=100, ascii=True)
    else:
        kwargs["file"] = stream
    return tqdm(iterable, **kwargs)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)


class RunLogger:
    """Progress bar, TensorBoard and metrics.jsonl for one run (rank 0 writes, others no-op)."""

    def __init__(self, run_dir, total_steps: int, dist, start_step: int = 0, desc: str = "train",
                 postfix_keys: tuple[str, ...] | None = None):
        self.enabled = dist is None or dist.rank == 0
        self.postfix_keys = postfix_keys  # scalars shown on the bar (None: the first four)
        self.bar = self.writer = self.jsonl = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=start_step or None)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.bar = progress_bar(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True,
                                mininterval=1.0, smoothing=0.1, unit="step")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars at `step` (tensors are converted); moves the bar to `step`."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        keys = self.postfix_keys if self.postfix_keys is not None else list(values)[:4]
        self.bar.set_postfix({k: f"{values[k]:.4g}" for k in keys if k in values}, refresh=False)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def image(self, tag: str, step: int, img: torch.Tensor) -> None:
        """One image (C,H,W) float in [-1, 1]."""
        if not self.enabled:
            return
        if img.ndim != 3:
            raise ValueError(f"RunLogger.image expects (C,H,W), got shape {tuple(img.shape)}")
        self.writer.add_image(tag, _to_unit(img), step)

    def video(self, tag: str, step: int, video: torch.Tensor) -> None:
        """A clip (C,T,H,W) float in [-1, 1], logged as one image: frames side by side.

        (TensorBoard's own video summary needs moviepy, which vidlm does not depend on.)
        """
        if not self.enabled:
            return
        if video.ndim != 4:
            raise ValueError(f"RunLogger.video expects (C,T,H,W), got shape {tuple(video.shape)}")
        from einops import rearrange

        strip = rearrange(_to_unit(video), "c t h w -> c h (t w)")
        self.writer.add_image(tag, strip, step)

    def info(self, msg: str) -> None:
        """Print a line without breaking the bar (rank 0)."""
        if self.enabled:
            self.bar.write(msg)

    def close(self) -> None:
        if not self.enabled:
            return
        for thing in (self.bar, self.writer, self.jsonl):
            if thing is not None:
                thing.close()
        self.bar = self.writer = self.jsonl = None
        self.enabled = False
