"""Token shards (what `vidlm data tokenize` writes, what `vidlm lm train` reads) and packing.

Layout of a token folder:

    DIR/tokens-000000.tar ...   one pair of members per clip:
        {key}.safetensors       codes (N,h,w) int32 at the clip's bucket; tail_{j} (j,h,w) the
                                stand-alone codes of the clip's last j latent frames; structure
                                (N,h,w) the codes of structure_view(clip) (edit); text (n,) int32
                                caption pieces (TextTokenizer ids)
        {key}.json              {"caption", "bucket": [w, h, frames], "source": ...}
    DIR/vocab.json              the LM vocabulary these ids fit (vidlm.lm.vocab.Vocab)
    DIR/info.json               tokenizer, text model, counts (written / skipped by reason)
    DIR/tokenizer/              two-level codes only: the tokenizer that placed the fine codes

Nothing is unpickled: tensors are safetensors, metadata JSON.

Packing: `pack(sequences, row_len)` puts variable-length sequences into fixed rows, greedily in
order (a sequence that does not fit starts a new row); the rest of a row is padding with doc id
-1. Doc ids count 0, 1, 2, ... per row, so attention never crosses documents (lm/attention.py).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class TokenClip:
    """One pre-tokenized clip."""

    key: str
    codes: Tensor  # (N,h,w) int64
    text: list[int]
    tails: dict[int, Tensor] = field(default_factory=dict)  # j -> (j,h,w)
    structure: Tensor | None = None  # (N,h,w)
    meta: dict = field(default_factory=dict)


def encode_clip(clip: TokenClip) -> dict[str, bytes]:
    """The tar members of one clip."""
    from safetensors.torch import save

    tensors = {"codes": clip.codes.to(torch.int32).contiguous(),
               "text": torch.tensor(clip.text, dtype=torch.int32)}
    for j, t in clip.tails.items():
        tensors[f"tail_{j}"] = t.to(torch.int32).contiguous()
    if clip.structure is not None:
        tensors["structure"] = clip.structure.to(torch.int32).contiguous()
    return {f"{clip.key}.safetensors": save(tensors), f"{clip.key}.json": json.dumps(clip.meta).encode()}


def decode_clip(key: str, tensors_bytes: bytes, meta_bytes: bytes) -> TokenClip:
    from safetensors.torch import load

    t = load(tensors_bytes)
    tails = {int(k.split("_", 1)[1]): v.long() for k, v in t.items() if k.startswith("tail_")}
    return TokenClip(key=key, codes=t["codes"].long(), text=t["text"].tolist(), tails=dict(sorted(tails.items())),
                     structure=t["structure"].long() if "structure" in t else None, meta=json.loads(meta_bytes))


class ShardWriter:
    """DIR/tokens-%06d.tar, `per_shard` clips each."""

    def __init__(self, out_dir, per_shard: int = 1000):
        self.out, self.per_shard, self.count, self.tar = Path(out_dir), per_shard, 0, None
        self.out.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def write(self, clip: TokenClip) -> None:
        if self.tar is None or self.count % self.per_shard == 0:
            self.close()
            path = self.out / f"tokens-{len(self.paths):06d}.tar"
            self.paths.append(path)
            self.tar = tarfile.open(path, "w")  # noqa: SIM115 (closed in close())
        for name, data in encode_clip(clip).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def token_shards(path) -> list[Path]:
    p = Path(path)
    shards = sorted(p.glob("tokens-*.tar")) if p.is_dir() else sorted(Path().glob(str(path)))
    if not shards:
        raise FileNotFoundError(f"no token shards (tokens-*.tar) at {path}: write them with "
                                "`vidlm data tokenize --tokenizer DIR --shards ... --out DIR`")
    return shards


def read_clips(path) -> list[TokenClip]:
    """Every clip of a token folder (or glob), in shard order."""
    clips = []
    for shard in token_shards(path):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
            for key, parts in members.items():
                if "safetensors" in parts and "json" in parts:
                    clips.append(decode_clip(key, parts["safetensors"], parts["json"]))
    return clips


class TokenStore:
    """The clips of a token folder as flat int32 arrays on disk, read on demand: `store[i]` is a
    TokenClip (its meta is not kept), in key order; `store.view(a, b)` is clips a..b-1. Memory
    does not grow with the number of clips beyond a small index (9 int64 per clip and the keys).

    DIR/flat/ (written once from the shards by `TokenStore.open`, atomically; rebuilt if the
    shards change): codes.i32, text.i32, structure.i32, tails.i32 (each clip's tensors, one
    after another, in key order), index.npy (per clip: codes offset, N, h, w, text offset,
    length, structure offset or -1, tails offset, bit j set for each tail of j latent frames),
    keys.txt, sources.json (the shards' names and sizes it was built from).

    A folder whose info.json says `tail_slices` (its tokenizer coded every frame alone) gives each
    clip a tail of every length, the slices of its codes, beside (and equal to) the stored ones.
    """

    FIELDS = ("codes", "text", "structure", "tails")

    def __init__(self, flat: Path, start: int = 0, stop: int | None = None):
        import numpy as np

        self.flat = Path(flat)
        self.index = np.load(self.flat / "index.npy")
        self.keys = (self.flat / "keys.txt").read_text().split("\n") if len(self.index) else []
        self.start, self.stop = start, len(self.index) if stop is None else stop
        self.files = {f: open(self.flat / f"{f}.i32", "rb") for f in self.FIELDS}  # noqa: SIM115 (live with the store)
        info = self.flat.parent / "info.json"
        self.tail_slices = info.is_file() and bool(json.loads(info.read_text()).get("tail_slices"))

    @classmethod
    def open(cls, folder) -> TokenStore:
        """The store of a token folder, built first if it is missing or older than the shards."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"token folder {folder} not found: write it with `vidlm data tokenize ... --out DIR`")
        sources = {p.name: p.stat().st_size for p in token_shards(folder)}
        flat = folder / "flat"
        recorded = flat / "sources.json"
        if not (recorded.is_file() and json.loads(recorded.read_text()) == sources):
            build_store(folder, sources)
        return cls(flat)

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, a: int, b: int) -> TokenStore:
        view = object.__new__(TokenStore)
        view.__dict__.update(self.__dict__, start=self.start + a, stop=self.start + b)
        return view

    def _read(self, field: str, offset: int, shape: tuple[int, ...]) -> Tensor:
        # pread of exactly these bytes: a memory map would fault in (and count as resident) the
        # pages around every clip read, ~64 KiB per field per clip
        import os

        import numpy as np

        n = int(np.prod(shape))
        data = os.pread(self.files[field].fileno(), 4 * n, 4 * offset)
        return torch.from_numpy(np.frombuffer(data, dtype=np.int32).copy()).long().view(shape)

    def __getitem__(self, i: int) -> TokenClip:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} of {len(self)}")
        row = self.start + (i % len(self))
        c_off, n, h, w, t_off, t_len, s_off, tails_off, tail_bits = (int(v) for v in self.index[row])
        codes = self._read("codes", c_off, (n, h, w))
        if self.tail_slices:
            tails = {j: codes[n - j :] for j in range(1, n)}
        else:
            tails, at = {}, tails_off
            for j in (j for j in range(63) if tail_bits >> j & 1):
                tails[j] = self._read("tails", at, (j, h, w))
                at += j * h * w
        return TokenClip(key=self.keys[row], codes=codes,
                         text=self._read("text", t_off, (t_len,)).tolist(), tails=tails,
                         structure=self._read("structure", s_off, (n, h, w)) if s_off >= 0 else None)

    def code_counts(self, size: int) -> Tensor:
        """How often each code occurs in these clips' codes (read in chunks, not mapped at once)."""
        import numpy as np

        lo = int(self.index[self.start, 0]) if len(self) else 0
        hi = int(self.index[self.stop - 1, 0] + np.prod(self.index[self.stop - 1, 1:4])) if len(self) else 0
        counts = np.zeros(size, np.int64)
        with open(self.flat / "codes.i32", "rb") as f:
            f.seek(4 * lo)
            for at in range(lo, hi, 1 << 22):
                chunk = np.frombuffer(f.read(4 * min(1 << 22, hi - at)), dtype=np.int32)
                counts += np.bincount(chunk, minlength=size)[:size]
        return torch.from_numpy(counts).double()


def build_store(folder, sources: dict[str, int]) -> Path:
    """Write DIR/flat from the token shards, in key order (see TokenStore). Concurrent builders
    (ranks) each write their own temporary folder; the first to finish renames it in place."""
    import contextlib
    import os
    import shutil
    import tempfile

    import numpy as np

    folder = Path(folder)
    where: dict[str, tuple[Path, tarfile.TarInfo, tarfile.TarInfo]] = {}
    for shard in token_shards(folder):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in tar.getmembers():
                if m.isfile():
                    key, _, ext = m.name.rpartition(".")
                    members.setdefault(key, {})[ext] = m
            where.update({k: (shard, p["safetensors"], p["json"]) for k, p in members.items()
                          if "safetensors" in p and "json" in p})
    tmp = Path(tempfile.mkdtemp(prefix="flat.tmp-", dir=folder))
    offsets = dict.fromkeys(TokenStore.FIELDS, 0)
    index, tars = [], {}
    with contextlib.ExitStack() as stack:
        files = {f: stack.enter_context(open(tmp / f"{f}.i32", "wb")) for f in TokenStore.FIELDS}

        def put(field: str, t: Tensor) -> int:
            at = offsets[field]
            files[field].write(t.to(torch.int32).contiguous().numpy().tobytes())
            offsets[field] += t.numel()
            return at

        for key in sorted(where):
            shard, tensors, meta = where[key]
            if shard not in tars:
                tars[shard] = stack.enter_context(tarfile.open(shard))
            clip = decode_clip(key, tars[shard].extractfile(tensors).read(), tars[shard].extractfile(meta).read())
            n, h, w = clip.codes.shape
            tails_at = offsets["tails"]
            for t in clip.tails.values():
                put("tails", t)
            index.append([put("codes", clip.codes), n, h, w, put("text", torch.tensor(clip.text, dtype=torch.int32)),
                          len(clip.text), put("structure", clip.structure) if clip.structure is not None else -1,
                          tails_at, sum(1 << j for j in clip.tails)])
    np.save(tmp / "index.npy", np.array(index, dtype=np.int64).reshape(-1, 9))
    (tmp / "keys.txt").write_text("\n".join(sorted(where)))
    (tmp / "sources.json").write_text(json.dumps(sources))
    flat = folder / "flat"
    recorded = flat / "sources.json"
    if recorded.is_file() and json.loads(recorded.read_text()) == sources:
        shutil.rmtree(tmp, ignore_errors=True)  # another rank put the same store in place first
        return flat
    shutil.rmtree(flat, ignore_errors=True)  # stale: the shards changed
    try:
        os.replace(tmp, flat)
    except OSError:  # another rank renamed its (identical) store in place in between
        shutil.rmtree(tmp, ignore_errors=True)
    return flat


class Rows:
    """Greedy packing in order: each sequence goes at the end of the last row, or opens a new row
    when it does not fit there (`pack` and the trainer's micro batches both fill rows so)."""

    def __init__(self, row_len: int, max_rows: int | None = None):
        self.row_len, self.max_rows, self.used = row_len, max_rows, []

    def place(self, n: int) -> tuple[int, int] | None:
        """(row, start) of a sequence of n tokens; None if it would open row max_rows + 1."""
        if n > self.row_len:
            raise ValueError(f"a sequence of {n} tokens does not fit rows of {self.row_len}; raise seq_len "
                             "(<= max_seq_len) or use smaller clips")
        if not self.used or self.used[-1] + n > self.row_len:
            if self.max_rows is not None and len(self.used) == self.max_rows:
                return None
            self.used.append(0)
        start, self.used[-1] = self.used[-1], self.used[-1] + n
        return len(self.used) - 1, start


def pack_order(lengths: list[int], row_len: int) -> list[int]:
    """Indices of sequences of these lengths in an order that `Rows` packs tightly: the rows of
    first-fit decreasing, listed row by row. Greedy packing in this order makes exactly those rows
    (the sequence that opened a row fit in no earlier row when it was placed, so it fits in none
    of them finished), so a trainer's one-integer data cursor still says where it is."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = next((r for r, left in enumerate(room) if lengths[i] <= left), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(row_len)
        rows[r].append(i)
        room[r] -= lengths[i]
    return [i for row in rows for i in row]


def pack(sequences, row_len: int, pad_id: int = 0, rows: int | None = None):
    """Sequences (objects with ids (L,), coords (L,3), loss_mask (L,)) -> rows
    {"ids" (R,row_len), "coords" (R,row_len,3), "loss_mask" (R,row_len), "doc_ids" (R,row_len),
    "index" [(row, start, length) per sequence]}, filled by `Rows`; `rows` pads R to that many
    (empty rows: doc id -1 everywhere). A sequence longer than row_len is an error."""
    filler = Rows(row_len)
    index = [(*filler.place(len(s.ids)), len(s.ids)) for s in sequences]
    r = max(len(filler.used), rows or 0)
    ids = torch.full((r, row_len), pad_id, dtype=torch.long)
    coords = torch.zeros(r, row_len, 3, dtype=torch.long)
    mask = torch.zeros(r, row_len, dtype=torch.bool)
    doc = torch.full((r, row_len), -1, dtype=torch.long)
    docs_in_row: dict[int, int] = {}
    for s, (row, at, n) in zip(sequences, index):
        d = docs_in_row[row] = docs_in_row.get(row, -1) + 1
        ids[row, at : at + n], coords[row, at : at + n] = s.ids, s.coords
        mask[row, at : at + n], doc[row, at : at + n] = s.loss_mask, d
    return {"ids": ids, "coords": coords, "loss_mask": mask, "doc_ids": doc, "index": index}
