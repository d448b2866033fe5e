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


def pack(sequences, row_len: int, pad_id: int = 0):
    """Sequences (objects with ids (L,), coords (L,3), loss_mask (L,)) -> rows
    {"ids" (R,row_len), "coords" (R,row_len,3), "loss_mask" (R,row_len), "doc_ids" (R,row_len),
    "index" [(row, start, length) per sequence]}. A sequence longer than row_len is an error."""
    rows: list[list] = []
    index = []
    used = row_len
    for i, s in enumerate(sequences):
        n = len(s.ids)
        if n > row_len:
            raise ValueError(f"a sequence of {n} tokens does not fit rows of {row_len}; raise seq_len "
                             "(<= max_seq_len) or use smaller clips")
        if used + n > row_len:
            rows.append([])
            used = 0
        index.append((len(rows) - 1, used, n))
        rows[-1].append(s)
        used += n
    r = len(rows)
    ids = torch.full((r, row_len), pad_id, dtype=torch.long)
    coords = torch.zeros(r, row_len, 3, dtype=torch.long)
    mask = torch.zeros(r, row_len, dtype=torch.bool)
    doc = torch.full((r, row_len), -1, dtype=torch.long)
    for row, seqs in enumerate(rows):
        at = 0
        for d, s in enumerate(seqs):
            n = len(s.ids)
            ids[row, at : at + n], coords[row, at : at + n] = s.ids, s.coords
            mask[row, at : at + n], doc[row, at : at + n] = s.loss_mask, d
            at += n
    return {"ids": ids, "coords": coords, "loss_mask": mask, "doc_ids": doc, "index": index}
