"""The frame prior: a small conv net over code grids that predicts a frame from the frames before it.

    prior = FramePrior.from_pretrained("MODEL/lm")          # None where the LM folder has none
    logits = prior(far, near)                               # codes (B,h,w) of frames t-2, t-1 -> (B,n_codes,h,w)
    tokens = stream(lm, prompt, prior=prior, ...)           # vidlm.lm.sample adds it to the LM's logits

Why (docs/experiments.md, thirtieth round): the LM lowers its loss with compute but never learns
how far the object moves in one frame; it finds the frame 2 px short likelier than the truth. A
conv net reading the previous frames' codes learns that step sharply: the same local rule at
every cell, the neighbourhood in reach, every cell predicted at once. Sampling multiplies the two
(a product of experts): each code of frame t gets `weight` x the net's log-probs added to the
LM's logits, from the `context` frames before it (after it, for frames generated back in time).
The world's motion reverses in time (constant speeds, elastic bounces), so one net serves both
directions: it trains on windows of either direction, half each. Where a prompt has fewer whole
frames next to t (t2v's, i2v's and a loop's first generated frames), a net with `min_context`
below `context` reads the missing farther ones as blank (docs/experiments.md, thirty-second
round: three frames down to one sharpen the first step but win no metric on two sets of clips;
two frames down to one lose objects; the default stays two frames).

What it reads: the codes of a frame's first rows (two-level codes' coarse rows; the last
`refine_rows` rows, the fine codes, get no prior). The grid's size is free (any resolution).
Which latent frame and cell each generated position fills comes from the prompt
(`Prompt.frames`): known frames with a start (not edit's structure codes) and the generated ones,
in generation order.

Files, beside the LM's weights: prior.safetensors and prior.json (PriorConfig and how it was
trained). `vidlm lm prior --data TOKENS --out MODEL/lm` trains one (minutes on a CPU; it
resumes from its run folder, by default OUT/prior-run/, when interrupted, and removes it when
done).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONFIG_FILE, WEIGHTS_FILE, RUN_DIR = "prior.json", "prior.safetensors", "prior-run"
CONTEXT, MIN_CONTEXT = 2, 2  # what `vidlm lm prior` trains by default (3, 1: no clear gain, thirty-second round)


@dataclass(frozen=True, kw_only=True)
class PriorConfig:
    n_codes: int
    """Codes of the video tokenizer (`Vocab.code_size`)."""
    width: int = 128
    """Channels of the residual blocks."""
    layers: int = 6
    """3x3 residual conv blocks (each two convolutions): the receptive field is 4 * layers + 1 cells."""
    refine_rows: int = 0
    """Rows at each frame's end the net neither reads nor predicts (two-level codes' fine rows)."""
    weight: float = 2.0
    """The default weight of its log-probs in sampling (`stream(prior_weight=)`); the first
    generated frame's error saturates from 2 (docs/experiments.md, thirtieth round)."""
    context: int = 2  # 2 and 2: what a prior.json written before these fields holds
    """Frames it reads: the `context` nearest before the frame it predicts (after it, for frames
    generated back in time), each embedded to width / context, side by side."""
    min_context: int = 2
    """The fewest whole frames it predicts from. Below `context`, the farther frames a prompt lacks
    (the first generated frames of t2v, i2v, a loop) are read as blank, a code of their own, and it
    trains on every count from min_context to context."""

    def __post_init__(self):
        if (self.n_codes < 1 or self.width < 16 or self.width % 16 or self.layers < 1 or self.refine_rows < 0
                or not 1 <= self.min_context <= self.context or self.width % self.context):
            raise ValueError(f"prior: need n_codes >= 1, width a multiple of 16 and of context, layers >= 1, "
                             f"refine_rows >= 0, 1 <= min_context <= context; got {self}")


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm, self.conv1, self.conv2 = nn.GroupNorm(8, d), nn.Conv2d(d, d, 3, padding=1), nn.Conv2d(d, d, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(self.norm(x)))))


class FramePrior(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        self.blank = cfg.n_codes if cfg.min_context < cfg.context else None  # the id of a frame not read
        self.emb = nn.Embedding(cfg.n_codes + (self.blank is not None), cfg.width // cfg.context)
        self.blocks = nn.Sequential(*(Block(cfg.width) for _ in range(cfg.layers)))
        self.out = nn.Sequential(nn.GroupNorm(8, cfg.width), nn.SiLU(), nn.Conv2d(cfg.width, cfg.n_codes, 1))

    def forward(self, *frames: Tensor) -> Tensor:
        """Codes (B,h,w) of the `context` frames before one (in the direction of generation), the
        farthest first (`blank` for a frame not read) -> logits (B,n_codes,h,w) of the frame after them."""
        x = torch.cat([self.emb(f) for f in frames], -1).permute(0, 3, 1, 2)
        return self.out(self.blocks(x))

    def rows(self, h: int) -> int:
        """The rows of an h-row grid the net reads and predicts."""
        return h - self.cfg.refine_rows

    def save_pretrained(self, out_dir, **info) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps({"config": dataclasses.asdict(self.cfg), **info}, indent=1) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> FramePrior | None:
        """The prior of an LM folder, or None where it has none."""
        from vidlm.config import from_dict, load_weights, read_json

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            return None
        prior = cls(from_dict(PriorConfig, read_json(path / CONFIG_FILE)["config"], where=str(path / CONFIG_FILE)))
        load_weights(prior, path / WEIGHTS_FILE, path / CONFIG_FILE, "vidlm lm prior --data TOKENS --out DIR", device)
        return prior.to(device).eval()


# ----------------------------------------------------------------------------- sampling
def effective_weight(prior: FramePrior | None, given: float | None) -> float:
    """The weight a prior is sampled with: `given`, or the prior's own where None (0: no prior)."""
    return 0.0 if prior is None else float(prior.cfg.weight if given is None else given)


class PriorHook:
    """The prior's bias for one prompt's generated positions: `hook(i, ids)` with ids the codes'
    ids at generated positions (sampled, or drafted by a speculative pass; only those before i
    are read) -> (n_codes,)
    fp32, `weight` x the log-probs of position i's code, or None where the net has nothing to
    say (a fine row, or fewer than `min_context` whole frames next to it in either direction).
    The net runs once per frame and the neighbours it reads (cached on their codes, so rejected
    drafts never leave a stale prior behind). Where both directions have frames to read
    (connect's middle), the one with more frames gives the prior, forward on a tie."""

    def __init__(self, prior: FramePrior, weight: float, frames, code_start: int):
        # frames: Prompt.frames = (order, h, w, known {t: codes (h,w)})
        self.prior, self.weight, self.lo = prior, weight, code_start
        self.order, self.h, self.w, known = frames
        self.known = {t: c[: prior.rows(self.h)] for t, c in known.items()}
        self.cache: dict[tuple, Tensor] = {}

    def frame_of(self, f: int) -> int:
        """The latent frame of the f-th generated frame (past the order: on from the last, as `long`)."""
        return self.order[f] if f < len(self.order) else self.order[-1] + f - len(self.order) + 1

    def __call__(self, i: int, ids) -> Tensor | None:
        per, rows = self.h * self.w, self.prior.rows(self.h)
        f, r = divmod(i, per)
        if r >= rows * self.w:
            return None
        made = {self.frame_of(g): g for g in range(f)}  # the frames generated before this one

        def codes(t: int) -> Tensor | None:
            if t in made:
                return torch.as_tensor(ids[made[t] * per : made[t] * per + rows * self.w]).view(rows, self.w) - self.lo
            return self.known.get(t)

        t, cfg = self.frame_of(f), self.prior.cfg

        def read(step: int) -> list[Tensor]:  # the whole frames next to t in one direction, nearest first
            out = []
            while len(out) < cfg.context and (c := codes(t + step * (len(out) + 1))) is not None:
                out.append(c)
            return out

        near = max(read(-1), read(1), key=len)  # forward on a tie
        if len(near) < cfg.min_context:
            return None
        key = (t, *(c.numpy().tobytes() for c in near))
        if key not in self.cache:
            device = next(self.prior.parameters()).device
            frames = [torch.full_like(near[0], self.prior.blank or 0)] * (cfg.context - len(near)) + near[::-1]
            with torch.no_grad():
                logits = self.prior(*(c[None].to(device) for c in frames))[0]
            self.cache = {key: self.weight * logits.float().log_softmax(0).permute(1, 2, 0)}  # (rows,w,n)
        return self.cache[key][r // self.w, r % self.w]


# ----------------------------------------------------------------------------- training
def train_prior(data: str, out: str, *, steps: int = 3000, batch: int = 64, lr: float = 1e-3, warmup: int = 100,
                width: int = 128, layers: int = 6, weight: float = 2.0, context: int = CONTEXT,
                min_context: int = MIN_CONTEXT, val_clips: int = 64, seed: int = 1, every: int = 500, run_dir: str | None = None, log=print) -> dict:
    """Train a FramePrior on a token folder's clips (windows of context + 1 frames, either
    direction; below `context`, half the windows read all their frames and the rest fewer, down
    to `min_context`) and write it to `out` (an LM folder). Checkpoints go to `run_dir` (default
    out/prior-run/) every `every` steps (written whole, then renamed), and a run started again
    resumes there exactly. Returns the last validation losses."""
    from vidlm.lm.tokendata import TokenStore

    from vidlm.runtime import warmup_cosine

    settings = {"steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "width": width, "layers": layers,
                "context": context, "min_context": min_context, "val_clips": val_clips,
                "seed": seed}  # what a resumed run must share with the one that saved
    store = TokenStore.open(data)
    if len(store) <= val_clips:
        raise ValueError(f"prior: {data} holds {len(store)} clips; need more than the {val_clips} held out")
    vocab = json.loads((Path(data) / "vocab.json").read_text())
    tok_cfg = Path(data) / "tokenizer" / "config.json"  # two-level codes: the fine rows get no prior
    refine = json.loads(tok_cfg.read_text())["config"].get("refine_rows", 0) if tok_cfg.is_file() else 0
    cfg = PriorConfig(n_codes=int(vocab["code_size"]), width=width, layers=layers, refine_rows=refine, weight=weight,
                      context=context, min_context=min_context)
    k = context
    torch.manual_seed(seed)
    net = FramePrior(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps, 0.1))
    grids = [c[:, : net.rows(c.shape[1])] for c in (store[i].codes for i in range(len(store)))]  # (T,rows,w)
    train = {}  # (rows, w) -> [(clip, t)]: one grid size per batch
    for c, g in enumerate(grids[:-val_clips]):
        train.setdefault(tuple(g.shape[1:]), []).extend((c, t) for t in range(g.shape[0] - k))
    val = [(c, t) for c in range(len(grids) - val_clips, len(grids)) for t in range(0, grids[c].shape[0] - k, 3)]
    if not train:
        raise ValueError(f"prior: no clip in {data} has {k + 1} latent frames")
    sizes = list(train)
    g = torch.Generator().manual_seed(seed)

    def windows(ws: list, back: Tensor, reads: Tensor) -> tuple[list[Tensor], Tensor]:
        """The frames each window's net reads (farthest first; `reads` of them whole, the farther
        ones blank) and the frame it predicts."""
        w = torch.stack([grids[c][t : t + k + 1] for c, t in ws])
        w = torch.where(back[:, None, None, None], w.flip(1), w)
        blank = torch.arange(k)[None] < (k - reads)[:, None]  # (B,k)
        frames = torch.where(blank[:, :, None, None], net.blank or 0, w[:, :k])
        return list(frames.unbind(1)), w[:, k]

    @torch.no_grad()
    def validate() -> dict:
        net.eval()
        out = {}
        runs = [("forward", False, k), ("back", True, k)] + ([(f"forward@{min_context}", False, min_context)]
                                                              if min_context < k else [])
        for name, back, reads in runs:
            losses = []
            for ws in _groups(val, grids):
                frames, target = windows(ws, torch.full((len(ws),), back), torch.full((len(ws),), reads))
                losses.append(F.cross_entropy(net(*frames), target))
            out[f"val/{name}"] = round(float(sum(losses) / len(losses)), 4)
        net.train()
        return out

    run = Path(run_dir) if run_dir else Path(out) / RUN_DIR
    step, seconds = 0, 0.0
    if (run / "state.pt").is_file():
        state = torch.load(run / "state.pt", weights_only=True)
        if state["args"] != settings:
            raise ValueError(f"prior: {run} holds a run with other settings ({state['args']}); delete it to start over")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["generator"])
        step, seconds = state["step"], state["seconds"]
        log(f"prior: resumed at step {step} from {run}")
    n_windows = sum(len(v) for v in train.values())
    log(f"prior: {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters, {n_windows} windows of "
        f"{len(grids) - val_clips} clips, {len(val)} validation windows, {steps} steps of {batch}")
    start, last = time.time() - seconds, {}
    weights = torch.tensor([len(train[s]) for s in sizes], dtype=torch.float)  # a grid size per step, by windows
    while step < steps:
        size = sizes[int(torch.multinomial(weights, 1, generator=g))]
        ws = [train[size][int(k)] for k in torch.randint(len(train[size]), (batch,), generator=g)]
        back = torch.rand(batch, generator=g) < 0.5
        reads = torch.full((batch,), k)
        if min_context < k:  # half the windows read fewer frames
            fewer = torch.randint(min_context, k, (batch,), generator=g)
            reads = torch.where(torch.rand(batch, generator=g) < 0.5, fewer, reads)
        frames, target = windows(ws, back, reads)
        loss = F.cross_entropy(net(*frames), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 100 == 0:
            log(f"prior: step {step} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
        if step % every == 0 or step == steps:
            last = {"step": step, "loss": round(loss.item(), 4), **validate()}
            log(f"prior: {json.dumps(last)}")
            run.mkdir(parents=True, exist_ok=True)
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "generator": g.get_state(), "step": step, "seconds": time.time() - start, "args": settings}
            torch.save(state, run / "state.tmp")
            os.replace(run / "state.tmp", run / "state.pt")
    minutes = round((time.time() - start) / 60, 1)
    net.save_pretrained(out, trained={"data": Path(data).name, "steps": steps, "batch": batch, "lr": lr,
                                      "seed": seed, "minutes": minutes, **{k: v for k, v in last.items() if k != "step"}})
    shutil.rmtree(run)  # finished: a run started again trains anew
    return last


def _groups(ws: list, grids: list, size: int = 256) -> list[list]:
    """Validation windows in batches of one grid size."""
    by: dict[tuple, list] = {}
    for c, t in ws:
        by.setdefault(tuple(grids[c].shape[1:]), []).append((c, t))
    return [v[i : i + size] for v in by.values() for i in range(0, len(v), size)]
