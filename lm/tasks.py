"""Task formats: every task is "some frames are known, at known times; generate the rest".

Interface (what the sampler and the pipeline rely on):
- `render_prompt(task, vocab, *, grid, text=None, known=(), drop_text=False, drop_known=False)`.
  `text` is TextTokenizer ids (or None); `known` is [(start latent frame | None, codes (tk,h,w))].
  For the guidance variants, pass the SAME text/known with drop_text / drop_known set: that is
  exactly the training twin (dropping known keeps the frames to generate the same; passing
  known=[] instead generates every frame and shifts the <gen> marker). Video coordinates do not
  depend on the text, so every variant generates at the same gen_coords.
- Video coordinates are the plain grid coordinates (t, y, x) of the latent clip, or, given
  `places` (the video tokenizer's `code_places`), where each code draws: two-level codes' fine
  rows sit at the cells their frame's coarse codes choose. The prefix sits on the diagonal at
  negative positions, so generated codes go straight to their place. A prompt's gen_coords
  for codes placed by earlier ones are provisional: `Prompt.place` tells the sampler the true
  ones as it samples.
- `loop` with known=[(0, head)] places a copy of the head right after the end (t .. t+k-1).
  A text-only loop (known=[]) is just a clip with the loop token: make a head first (t2v/t2i),
  then loop it, if the seam must close.
- `structure_view(video)` is the edit signal's pixels (defined below); encode it with the video
  tokenizer for the known codes of `edit` (start None).

Grammar, one sequence per clip:

    <bos> <task:X> <t=T> <h=H> <w=W> [<text> pieces </text>] [<known> codes]* <gen> codes <eos>

Coordinates (t, y, x) of every token (3D RoPE, lm/model.py):
- prefix tokens (bos .. </text>) on the diagonal at -P-1, ..., -2 (P prefix tokens), so the
  video's coordinates never depend on the caption's length (or on its presence);
- a video code of latent frame ti, row yi, column xi: (ti, yi, xi), its TRUE place in the
  clip: a known ending that comes first in the sequence still has late t;
- the marker (<known> or <gen>) before a segment whose first frame is ts: the diagonal at ts-1;
- <eos>: the diagonal at T.

Loss: only on generated codes (loss_mask is True exactly there, marking the targets). Not on
<eos>: the grid tokens fix the length, the sampler never samples <eos>, and its loss would only
teach counting. Training drops the text and the known segments independently (flags drawn
per sample by the caller), so classifier-free guidance can weigh them separately.

Tasks (N latent frames in the clip; k, j lengths of known segments in latent frames):
    t2v              nothing known; generate frames 0..N-1
    t2i              grid t = 1; generate frame 0 (= an image: the causal tokenizer's first frame)
    i2v              frame 0 known; generate 1..N-1
    extend-forward   head 0..k-1 known; generate k..N-1
    extend-backward  tail N-j..N-1 known (stand-alone codes of the tail clip), first in the
                     sequence; generate N-j-1, N-j-2, ..., 0: backward in time
    connect          head 0..k-1 and tail N-j..N-1 known; generate k, N-j-1, k+1, N-j-2, ...:
                     from both ends in turn, meeting in the middle
    loop             grid t: head 0..k-1 known and a tail at t..t+k-1 (after the end): in
                     training the clip's real continuation (stand-alone codes), at inference
                     the head itself; generate k, t-1, k+1, t-2, ... (as connect), so the last
                     frame flows into the first
    edit             the codes of structure_view(clip) known (start None: aligned with the
                     grid, covering no frame); generate 0..N-1
Known segments are codes of the stand-alone clip segment, as at inference: a head's codes equal
the clip's first codes (causal tokenizer); a tail's come from pre-tokenization (`tails`).

Generated frames come in the order above (`open_frames`), each frame's codes in raster order: every
generated frame is next to one the LM can read, so one local skill (the next frame from a
neighbour) serves every task. Without known frames a task generates forward; guidance variants
keep `known` and set drop_known, so every variant generates in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from vidlm.lm.vocab import TASKS, Vocab

__all__ = [
    "TASKS",
    "Prompt",
    "Sequence",
    "draw_task",
    "open_frames",
    "render_prompt",
    "render_train",
    "structure_view",
]


@dataclass(frozen=True)
class Sequence:
    ids: Tensor  # (L,) int64
    coords: Tensor  # (L,3) int64 (t, y, x)
    loss_mask: Tensor  # (L,) bool: True at the generated codes (the targets)


Places = Callable[[Tensor], Tensor]
"""codes (tk,h,w) -> (tk,h,w,2): the (y, x) where each code draws (VideoTokenizer.code_places)."""


@dataclass(frozen=True)
class Prompt:  # not a tuple: the sampler tells one prompt from a list of prompts
    ids: Tensor  # (L,) int64
    coords: Tensor  # (L,3) int64
    gen_coords: Tensor  # (N,3) int64: the coordinates still to generate, in generation order
    place: Callable[[int, Tensor], Tensor | None] | None = None
    """place(i, ids (i+1,) sampled so far) -> the true coordinates (m,3) of positions i+1..i+m,
    or None where they stand: for codes whose place follows from earlier ones (None: all known)."""
    place_every: int = 1
    """`place` changes coordinates only after positions i with (i + 1) % place_every == 0 (the
    ends of grid rows): a speculative block that stops there has all its coordinates."""
    frames: tuple | None = None
    """(order, h, w, known): the latent frame each block of h*w generated positions fills (in
    generation order), and the known frames' codes {t: (h,w)} (not edit's start-less signal):
    what the frame prior (vidlm.lm.prior) reads."""


def structure_view(video: Tensor, factor: int = 2) -> Tensor:
    """The edit task's signal: what motion and layout keep, without colour and fine look.

    video (C,T,H,W) in [-1,1] (or (B,C,T,H,W)) -> same shape: the luma Y = 0.299 R + 0.587 G +
    0.114 B in all three channels, averaged over factor x factor pixel blocks (each block takes
    its mean: a `factor`-times lower resolution, shown at the original size). H and W must be
    divisible by `factor` (true for every tokenizer size).
    """
    x = video if video.dim() == 5 else video[None]
    if x.shape[1] != 3 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"structure_view needs RGB (C=3) with H, W divisible by {factor}, got {tuple(video.shape)}")
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    y = torch.einsum("bcthw,c->bthw", x, w)
    b, t, h, wd = y.shape
    y = y.reshape(b, t, h // factor, factor, wd // factor, factor).mean((3, 5))
    y = y.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    out = y[:, None].expand(b, 3, t, h, wd).contiguous()
    return out if video.dim() == 5 else out[0]


def _coords(times, codes: Tensor, places: Places | None) -> Tensor:
    """Coordinates (n,3) of codes (tk,h,w) of the latent frames `times` (tk of them) in raster
    order: (t, y, x) on the grid, or (t, where each code draws) given `places`."""
    tk, h, w = codes.shape
    if places is None:
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        yx = torch.stack([y, x], -1).expand(tk, h, w, 2)
    else:
        yx = places(codes).cpu().long()
    t = torch.as_tensor(list(times))[:, None, None, None].expand(tk, h, w, 1)
    return torch.cat([t, yx], -1).reshape(-1, 3)


def _placer(vocab: Vocab, gen_t: list[int], h: int, w: int, places: Places) -> Callable:
    """Prompt.place for `places`: at the end of each row, the rest of the frame's coordinates from
    the codes sampled so far (a code's place depends only on whole rows before it). Frames past
    gen_t (`long` goes on past its window) follow the last one."""
    frame = h * w

    def place(i: int, ids: Tensor) -> Tensor | None:
        f, r = divmod(i + 1, frame)
        if (i + 1) % w or r == 0:
            return None
        codes = torch.zeros(frame, dtype=torch.long)
        codes[:r] = vocab.ids_to_codes(torch.as_tensor(ids[f * frame : i + 1]).cpu())
        t = gen_t[f] if f < len(gen_t) else gen_t[-1] + f - len(gen_t) + 1
        return _coords([t], codes.view(1, h, w), places)[r:]

    return place


def _diag(p: int) -> list[int]:
    return [p, p, p]


def _known(task: str, grid, known) -> list[tuple[int | None, Tensor]]:
    """Validated known segments [(start | None, codes (tk,h,w))] (loop: tail = head if not given)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    t, h, w = grid
    out = [(s, torch.as_tensor(c, dtype=torch.long)) for s, c in known]
    if task == "loop" and len(out) == 1:
        out.append((t, out[0][1]))  # the tail of a loop is its head, right after the end
    for s, c in out:
        if c.dim() != 3 or tuple(c.shape[1:]) != (h, w):
            raise ValueError(f"{task}: a known segment must be codes (tk,{h},{w}) on the grid, got {tuple(c.shape)}")
        if s is None:
            if task != "edit" or c.shape[0] != t:
                raise ValueError(f"{task}: only edit takes a start-less known signal, with all {t} frames")
        elif s < 0 or (s + c.shape[0] > t and task != "loop"):
            raise ValueError(f"{task}: known frames {s}..{s + c.shape[0] - 1} fall outside the grid's {t} frames")
    need = {"t2v": 0, "t2i": 0, "i2v": 1, "extend-forward": 1, "extend-backward": 1, "connect": 2,
            "loop": 2, "edit": 1}[task]
    if out and len(out) != need:
        raise ValueError(f"{task} takes {need} known segment(s), got {len(out)}")
    if task == "t2i" and t != 1:
        raise ValueError(f"t2i generates one frame; grid t must be 1, got {t}")
    if task == "i2v" and out and (out[0][0] != 0 or out[0][1].shape[0] != 1):
        raise ValueError("i2v: the known image is one latent frame at t = 0")
    if task in ("extend-forward", "loop") and out and out[0][0] != 0:
        raise ValueError(f"{task}: the known head starts at t = 0")
    if task == "extend-backward" and out and out[0][0] + out[0][1].shape[0] != t:
        raise ValueError("extend-backward: the known tail must end at the grid's last frame")
    return out


def open_frames(task: str, grid, known) -> list[int]:
    """Latent frames a task generates (those of the grid no known segment covers), in the order
    it generates them: each next to a frame it can read. Forward in time, but extend-backward
    backward from its ending, and connect / loop from both ends in turn, meeting in the middle."""
    covered = {s + i for s, c in _known(task, grid, known) if s is not None for i in range(c.shape[0])}
    frames = [i for i in range(grid[0]) if i not in covered]
    if not frames:
        raise ValueError(f"{task}: the known segments cover all {grid[0]} frames; nothing to generate")
    if task == "extend-backward" and known:
        return frames[::-1]
    if task in ("connect", "loop") and known:
        return [frames[-1 - i // 2] if i % 2 else frames[i // 2] for i in range(len(frames))]
    return frames


def _layout(task: str, vocab: Vocab, grid, text, known, drop_text: bool, drop_known: bool, places, clip=None):
    """(ids, coords) of everything before the generated codes, and the gen coordinates (N,3)."""
    t, h, w = (int(v) for v in grid)
    segments = _known(task, (t, h, w), known)
    gen_t = open_frames(task, (t, h, w), known)
    prefix = [vocab.bos, vocab.task_id(task), *vocab.grid_ids(t, h, w)]
    if text is not None and len(text) and not drop_text:
        prefix += [vocab.special("<text>"), *vocab.text_to_ids(text), vocab.special("</text>")]
    p = len(prefix)
    ids, coords = list(prefix), [_diag(i - p - 1) for i in range(p)]
    ids_t, coords_t = [torch.tensor(ids, dtype=torch.long)], [torch.tensor(coords, dtype=torch.long)]
    for start, codes in ([] if drop_known else segments):
        s = 0 if start is None else start
        ids_t += [torch.tensor([vocab.special("<known>")]), vocab.codes_to_ids(codes).reshape(-1)]
        coords_t += [torch.tensor([_diag(s - 1)]), _coords(range(s, s + codes.shape[0]), codes, places)]
    ids_t.append(torch.tensor([vocab.special("<gen>")]))
    coords_t.append(torch.tensor([_diag(gen_t[0] - 1)]))
    # the codes to generate: known in training; at inference zeros, whose places are provisional
    gen = _coords(gen_t, torch.zeros(len(gen_t), h, w, dtype=torch.long) if clip is None else clip[gen_t], places)
    return torch.cat(ids_t), torch.cat(coords_t), gen, gen_t


def render_prompt(task: str, vocab: Vocab, *, grid, text=None, known=(), drop_text: bool = False,
                  drop_known: bool = False, places: Places | None = None) -> Prompt:
    """The inference twin of render_train: the prompt up to <gen>, and the coordinates to generate
    (given `places`, with the `place` hook that makes them true as the codes come)."""
    ids, coords, gen, gen_t = _layout(task, vocab, grid, text, known, drop_text, drop_known, places)
    _, h, w = (int(v) for v in grid)
    frames = {s + i: c[i] for s, c in ([] if drop_known else _known(task, grid, known)) if s is not None
              for i in range(c.shape[0])}
    return Prompt(ids, coords, gen, None if places is None else _placer(vocab, gen_t, h, w, places), w,
                  (gen_t, h, w, frames))


def render_train(task: str, vocab: Vocab, *, codes: Tensor, text=None, known=(), drop_text: bool = False,
                 drop_known: bool = False, places: Places | None = None) -> Sequence:
    """One training sequence: codes (t,h,w) is the clip on the task's grid (known frames included;
    only the open frames become targets); text / known / drops / places as in render_prompt."""
    codes = torch.as_tensor(codes, dtype=torch.long)
    t, h, w = codes.shape
    ids, coords, gen, gen_t = _layout(task, vocab, (t, h, w), text, known, drop_text, drop_known, places, codes)
    target = vocab.codes_to_ids(codes[gen_t]).reshape(-1)
    ids = torch.cat([ids, target, torch.tensor([vocab.eos])])
    coords = torch.cat([coords, gen, torch.tensor([_diag(t)])])
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(ids) - 1 - len(target) : len(ids) - 1] = True
    return Sequence(ids, coords, mask)


def draw_task(task: str, codes: Tensor, tails: dict[int, Tensor], structure: Tensor | None,
              generator: torch.Generator) -> tuple[Tensor, list] | None:
    """A task's training grid and known segments from one pre-tokenized clip, or None if the clip
    cannot make this task (too short, no tail of the needed length, no structure codes).

    codes (N,h,w) of the clip; tails {j: stand-alone codes (j,h,w) of its last j latent frames};
    structure: codes of structure_view(clip) (N,h,w). Lengths are drawn with `generator`.
    Returns (grid codes (t,h,w), known [(start|None, codes)]).
    """
    n = codes.shape[0]

    def pick(options):
        options = list(options)
        return options[int(torch.randint(len(options), (1,), generator=generator))] if options else None

    if task == "t2v":
        return codes, []
    if task == "t2i":
        return codes[:1], []
    if task == "i2v":
        return (codes, [(0, codes[:1])]) if n > 1 else None
    if task == "extend-forward":
        k = pick(range(1, n))
        return None if k is None else (codes, [(0, codes[:k])])
    if task == "extend-backward":
        j = pick(j for j in tails if j < n)
        return None if j is None else (codes, [(n - j, tails[j])])
    if task == "connect":
        pair = pick((k, j) for j in tails for k in range(1, n) if k + j < n)
        return None if pair is None else (codes, [(0, codes[: pair[0]]), (n - pair[1], tails[pair[1]])])
    if task == "loop":  # grid t = n - k; the tail (the clip's real frames t..n-1) sits after the end
        k = pick(k for k in tails if 2 * k < n)
        return None if k is None else (codes[: n - k], [(0, codes[:k]), (n - k, tails[k])])
    if task == "edit":
        return None if structure is None else (codes, [(None, structure)])
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
