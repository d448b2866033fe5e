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
