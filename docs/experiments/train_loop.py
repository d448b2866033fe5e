"""Where a step of `vidlm lm train` goes: the loop's parts timed one by one (each ends with a
device sync), as lm/train.py runs them, on real token data. For a GPU run that reaches a tiny
MFU, this says whether the packer, the forward, the backward and optimizer, or the per-task
bookkeeping holds it, and the profiler's table names the ops.

    python docs/experiments/train_loop.py --config recipes/lm/demo.yaml --batch 32 --precision bf16 \
        --data TOKENS --steps 30 --threads 4 [--attn flex] [--profile]

(the loop's schedule does not matter here: the recipe gives the model, rows and task mix).
"""
import argparse
import dataclasses
import time
from collections import defaultdict

import torch
from vidlm.lm.config import TrainConfig
from vidlm.lm.stream import TaskStream, load_data, micro_batch
from vidlm.lm.train import build_engine, token_losses

from vidlm import runtime as rt
from vidlm.config import load_yaml

p = argparse.ArgumentParser()
p.add_argument("--config", default="recipes/lm/demo.yaml")
p.add_argument("--data", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
p.add_argument("--batch", type=int, default=None, help="rows a step (default the recipe's)")
p.add_argument("--precision", default=None, help="override the recipe's (fp32 on a CPU without bf16)")
p.add_argument("--attn", default=None, help="the LM's attn_backend (flex: one FlexAttention call a layer on "
               "packed rows, GPU only; default the recipe's)")
p.add_argument("--profile", action="store_true", help="torch.profiler over 5 steps: the top ops")
a = p.parse_args()

cfg = load_yaml(TrainConfig, a.config)
cfg = dataclasses.replace(cfg, micro_batch_size=a.batch or cfg.micro_batch_size, precision=a.precision or cfg.precision,
                          model={**cfg.model, **({"attn_backend": a.attn} if a.attn else {})})
if a.threads:
    torch.set_num_threads(a.threads)
dist = rt.init_distributed(None)
train, _, vocab = load_data(cfg, a.data)
lm_cfg = cfg.lm_config(vocab.size)
engine = build_engine(cfg, lm_cfg, dist, None)
stream = TaskStream(train, vocab, cfg.data, seed=0, rank=0, world=1, row_len=cfg.row_len)
sync = torch.cuda.synchronize if dist.device.type == "cuda" else (lambda: None)
spent, cursor, tokens = defaultdict(float), 0, 0


def step(timed: bool):
    global cursor, tokens
    marks = [time.perf_counter()]

    def mark(name):
        sync()
        marks.append(time.perf_counter())
        if timed:
            spent[name] += marks[-1] - marks[-2]

    batch, cursor = micro_batch(stream, cursor, cfg.micro_batch_size, cfg.row_len)
    mark("pack rows (host)")
    ce, mask = token_losses(engine, batch, dist.device)
    loss = ce.sum() / mask.sum().clamp(min=1)
    mark("forward + loss")
    engine.backward(loss)
    mark("backward")
    engine.step()
    mark("optimizer step")
    float(loss.detach())
    task = batch["task"][:, 1:].to(dist.device)
    for t in task[mask].unique().tolist():  # the loop's per-task sums
        sel = mask & (task == t)
        float(ce[sel].detach().sum()), float(sel.sum())
    mark("per-task sums")
    if timed:
        tokens += int((batch["doc_ids"] >= 0).sum())


for _ in range(a.warmup):
    step(False)
t0 = time.perf_counter()
for _ in range(a.steps):
    step(True)
total = time.perf_counter() - t0
flops = lm_cfg.flops_per_token(cfg.row_len) * a.steps * cfg.micro_batch_size * cfg.row_len
print(f"{cfg.micro_batch_size}x{cfg.row_len} rows, {cfg.precision}, threads {torch.get_num_threads()}, "
      f"{dist.device}: {a.steps / total:.2f} steps/s, {tokens / total:.0f} tokens/s, {flops / total / 1e12:.2f} TFLOP/s")
for name, s in spent.items():
    print(f"  {name:<18} {1e3 * s / a.steps:8.1f} ms  {s / total:4.0%}")
if a.profile:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dist.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(5):
            step(False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))
