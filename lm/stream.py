"""The LM's training data: token shards -> task sequences -> packed micro batches.

The sequence stream is a pure function of (seed, rank, n). Draw m of a rank takes clip
perm_epoch[rank + world * i] (a permutation per epoch), draws its task from `data.tasks`, the
lengths of its known segments, and whether text / known segments are dropped, all from a
generator seeded by (seed, rank, m). Draws come in windows of `data.pack_window`, each put in
the order that packs its rows tightly (`pack_order`), and sequence n is the n-th in those
orders. The run's data position is one integer per rank (the next sequence), so resuming from
`latest` reproduces the uninterrupted run's losses exactly.
Grid sizes come from each clip's own codes (its bucket): one model sees every size and duration.
Coordinates: given `places` (two-level codes: vidlm.pretokenize.load_places reads them from the
tokenizer a token folder holds), every code sits where it draws (vidlm.lm.tasks), else on the grid.
Validation: the last `data.val_clips` clips (held out from training), every task, no drops.
"""

from __future__ import annotations

import torch
from vidlm.lm.config import DataConfig, TrainConfig
from vidlm.lm.tasks import TASKS, Places, draw_task, render_train
from vidlm.lm.tokendata import Rows, TokenClip, TokenStore, pack, pack_order
from vidlm.lm.vocab import Vocab

from vidlm import runtime as rt
from vidlm.logging import entropy


def load_data(cfg: TrainConfig, data: str | None) -> tuple[TokenStore, TokenStore, Vocab]:
    """(train clips, held-out clips, vocab) of a token folder: its last `val_clips` clips in key
    order are held out; clips are read from disk when the stream asks for them."""
    folder = data or cfg.data.tokens
    if not folder:
        raise ValueError("no token data: pass --data DIR or set data.tokens (write it with `vidlm data tokenize`)")
    clips = TokenStore.open(folder)  # in key order, read lazily from disk
    vocab = Vocab.from_pretrained(folder)
    n_val = min(cfg.data.val_clips, len(clips) // 2)
    return clips.view(0, len(clips) - n_val), clips.view(len(clips) - n_val, len(clips)), vocab


class TaskStream:
    """Sequence n of a rank, as a pure function of (seed, rank, n): see the module doc."""

    def __init__(self, clips: list[TokenClip], vocab: Vocab, cfg: DataConfig, *, seed: int, rank: int,
                 world: int, row_len: int, places: Places | None = None):
        if len(clips) < world:
            raise ValueError(f"{len(clips)} training clips for {world} ranks; need at least one per rank")
        self.clips, self.vocab, self.cfg = clips, vocab, cfg
        self.seed, self.rank, self.world, self.row_len, self.places = seed, rank, world, row_len, places
        self.per_rank = len(clips) // world
        self.names = list(cfg.tasks)
        self.weights = torch.tensor([cfg.tasks[t] for t in self.names], dtype=torch.float64)
        self._perms: dict[int, torch.Tensor] = {}
        self._window: tuple[int, list] = (-1, [])

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(rt.derive_seed(self.seed, epoch, "lm-order"))
            self._perms = {epoch: torch.randperm(len(self.clips), generator=g)}
        return self._perms[epoch]

    def __call__(self, n: int):
        """(Sequence, task index in TASKS) at position n of the packing order."""
        k, j = divmod(n, self.cfg.pack_window)
        if self._window[0] != k:
            drawn = [self.draw(m) for m in range(k * self.cfg.pack_window, (k + 1) * self.cfg.pack_window)]
            order = pack_order([len(seq.ids) for seq, _ in drawn], self.row_len)
            self._window = (k, [drawn[i] for i in order])
        return self._window[1][j]

    def draw(self, n: int):
        """Draw n: (Sequence, task index in TASKS)."""
        epoch, i = divmod(n, self.per_rank)
        clip = self.clips[int(self._perm(epoch)[self.rank + self.world * i])]
        g = torch.Generator().manual_seed(rt.derive_seed(self.seed, self.rank, n, "lm-task"))
        task = self.names[int(torch.multinomial(self.weights, 1, generator=g))]
        drop_text, drop_known = (torch.rand(2, generator=g) < torch.tensor(
            [self.cfg.p_drop_text, self.cfg.p_drop_known], dtype=torch.float32)).tolist()
        return make_sequence(task, clip, self.vocab, g, drop_text, drop_known, self.row_len, self.places)


def make_sequence(task: str, clip: TokenClip, vocab: Vocab, g: torch.Generator, drop_text: bool,
                  drop_known: bool, row_len: int, places: Places | None = None):
    drawn = draw_task(task, clip.codes, clip.tails, clip.structure, g)
    if drawn is None:
        task, drawn = "t2v", (clip.codes, [])
    grid, known = drawn
    seq = render_train(task, vocab, codes=grid, text=clip.text, known=known, drop_text=drop_text,
                       drop_known=drop_known, places=places)
    if len(seq.ids) > row_len and task != "t2v":
        return make_sequence("t2v", clip, vocab, g, drop_text, drop_known, row_len, places)
    if len(seq.ids) > row_len:
        raise ValueError(f"clip {clip.key} ({tuple(clip.codes.shape)} codes) makes a {len(seq.ids)}-token t2v "
                         f"sequence, longer than rows of {row_len}: raise seq_len or tokenize smaller buckets")
    return seq, TASKS.index(task)


def micro_batch(stream, cursor: int, rows: int, row_len: int) -> tuple[dict, int]:
    """Pack sequences cursor, cursor+1, ... (`stream(n)` -> (Sequence, task) or None at the end)
    into `rows` rows; the first that does not fit stays for the next micro batch. Returns (batch,
    next cursor); batch["task"] (R,L) is the task index at every target position (-1 elsewhere)."""
    seqs, tasks, n, filler = [], [], cursor, Rows(row_len, rows)
    while (item := stream(n)) is not None and filler.place(len(item[0].ids)) is not None:
        seqs.append(item[0])
        tasks.append(item[1])
        n += 1
    batch = pack(seqs, row_len, rows=rows)  # the end of a finite stream leaves rows empty
    task_of = torch.full(batch["ids"].shape, -1, dtype=torch.long)
    for (row, start, length), t, s in zip(batch["index"], tasks, seqs):
        task_of[row, start : start + length][s.loss_mask] = t
    batch["task"] = task_of
    return batch, n


def unigram_entropy(clips: list[TokenClip], code_size: int) -> float:
    """Entropy (nats) of the code frequencies over the clips: the loss of a context-free model."""
    if isinstance(clips, TokenStore):
        return entropy(clips.code_counts(code_size))
    counts = torch.zeros(code_size, dtype=torch.float64)
    for c in clips:
        counts += torch.bincount(c.codes.flatten(), minlength=code_size).double()
    return entropy(counts)


@torch.no_grad()
def val_sequences(clips: list[TokenClip], vocab: Vocab, cfg: TrainConfig, places: Places | None = None) -> list[dict]:
    """Every task the run trains (`data.tasks` weight > 0) of every held-out clip, no drops,
    packed into micro batches."""
    stream = []
    for i, clip in enumerate(clips):
        for task in (t for t in TASKS if cfg.data.tasks.get(t, 0) > 0):
            g = torch.Generator().manual_seed(rt.derive_seed(cfg.seed, i, task, "val"))
            if draw_task(task, clip.codes, clip.tails, clip.structure, torch.Generator().manual_seed(0)) is None:
                continue
            stream.append(make_sequence(task, clip, vocab, g, False, False, cfg.row_len, places))
    batches, n = [], 0
    while n < len(stream):
        batch, n = micro_batch(lambda k: stream[k] if k < len(stream) else None, n, cfg.micro_batch_size,
                               cfg.row_len)
        batches.append(batch)
    return batches
