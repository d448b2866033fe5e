"""The one id space of the video LM, and the one place that knows its layout.

    [0, n_special)                          specials: <pad> <bos> <eos> <text> </text> <known> <gen>,
                                            one token per task (<task:t2v> ...), grid sizes
                                            <t=1>..<t=max_t>, <h=1>..<h=max_h>, <w=1>..<w=max_w>
    [n_special, n_special + text_size)      sentencepiece caption pieces (TextTokenizer ids, shifted)
    [.., size)                              the video tokenizer's codes (code c -> id lo + c)

    vocab = Vocab.build(tokenizer_config, text_tokenizer)   # or Vocab(text_size=.., code_size=..)
    ids = vocab.codes_to_ids(codes); codes = vocab.ids_to_codes(ids); lo, hi = vocab.code_range

Serialized as vocab.json next to the LM's config.json (`save` / `from_pretrained`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TASKS = ("t2v", "t2i", "i2v", "extend-forward", "extend-backward", "connect", "loop", "edit")
MARKERS = ("<pad>", "<bos>", "<eos>", "<text>", "</text>", "<known>", "<gen>")
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True, kw_only=True)
class Vocab:
    """Sizes of the three ranges; every id is derived from them."""

    text_size: int
    """Pieces of the caption tokenizer (TextTokenizer.vocab_size)."""
    code_size: int
    """Codes of the video tokenizer (its codebook size)."""
    max_t: int = 64
    """Largest latent grid length in time a sequence may declare (<t=1>..<t=max_t>)."""
    max_h: int = 128
    """Largest latent grid height."""
    max_w: int = 128
    """Largest latent grid width."""

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Vocab.{k} must be a positive int, got {v!r}")

    # ------------------------------------------------------------------ building and saving
    @classmethod
    def build(cls, tokenizer_config, text_tokenizer, **grid) -> Vocab:
        """From a TokenizerConfig (its `vocab_size` is the codebook size) and a TextTokenizer."""
        return cls(text_size=int(text_tokenizer.vocab_size), code_size=int(tokenizer_config.vocab_size), **grid)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        from vidlm.config import from_dict

        return from_dict(cls, data, where="vocab")

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / VOCAB_FILE).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return out / VOCAB_FILE

    @classmethod
    def from_pretrained(cls, path) -> Vocab:
        f = Path(path) / VOCAB_FILE if Path(path).is_dir() else Path(path)
        if not f.is_file():
            raise FileNotFoundError(f"no {VOCAB_FILE} at {f}: `vidlm lm export` writes it next to the weights")
        return cls.from_dict(json.loads(f.read_text()))

    # ------------------------------------------------------------------ layout
    @property
    def specials(self) -> list[str]:
        return ([*MARKERS] + [f"<task:{t}>" for t in TASKS] + [f"<t={i}>" for i in range(1, self.max_t + 1)]
                + [f"<h={i}>" for i in range(1, self.max_h + 1)] + [f"<w={i}>" for i in range(1, self.max_w + 1)])

    @property
    def n_special(self) -> int:
        return len(MARKERS) + len(TASKS) + self.max_t + self.max_h + self.max_w

    @property
    def text_range(self) -> tuple[int, int]:
        return self.n_special, self.n_special + self.text_size

    @property
    def code_range(self) -> tuple[int, int]:
        """[lo, hi): the ids legal at a generated video position."""
        lo = self.n_special + self.text_size
        return lo, lo + self.code_size

    @property
    def size(self) -> int:
        return self.code_range[1]

    def special(self, name: str) -> int:
        """Id of a marker such as "<bos>" or "<gen>"."""
        if name not in MARKERS:
            raise KeyError(f"{name!r} is not a marker; markers are {MARKERS}")
        return MARKERS.index(name)

    @property
    def bos(self) -> int:
        return self.special("<bos>")

    @property
    def eos(self) -> int:
        return self.special("<eos>")

    def task_id(self, task: str) -> int:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
        return len(MARKERS) + TASKS.index(task)

    def grid_ids(self, t: int, h: int, w: int) -> list[int]:
        """[<t=t>, <h=h>, <w=w>]; a clear error beyond the vocabulary's limits."""
        for name, v, top in (("t", t, self.max_t), ("h", h, self.max_h), ("w", w, self.max_w)):
            if not 1 <= int(v) <= top:
                raise ValueError(f"latent grid {name}={v} is outside 1..{top} of this vocabulary "
                                 f"(grid t,h,w = {t},{h},{w}); use a shorter/smaller clip")
        base = len(MARKERS) + len(TASKS)
        return [base + t - 1, base + self.max_t + h - 1, base + self.max_t + self.max_h + w - 1]

    # ------------------------------------------------------------------ conversions
    def text_to_ids(self, pieces) -> list[int]:
        """TextTokenizer ids -> LM ids."""
        pieces = [int(p) for p in pieces]
        bad = [p for p in pieces if not 0 <= p < self.text_size]
        if bad:
            raise ValueError(f"text piece ids {bad[:5]} are outside 0..{self.text_size - 1}: the caption was "
                             "encoded with another text tokenizer than this vocabulary's")
        return [self.n_special + p for p in pieces]

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Tokenizer codes (any shape) -> LM ids (same shape, int64)."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.code_size):
            raise ValueError(f"codes must lie in 0..{self.code_size - 1}, got {int(codes.min())}..{int(codes.max())}: "
                             "the clip was tokenized with another video tokenizer than this vocabulary's")
        return codes + self.code_range[0]

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """LM ids inside code_range -> tokenizer codes."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        lo, hi = self.code_range
        if ids.numel() and (ids.min() < lo or ids.max() >= hi):
            raise ValueError(f"ids {int(ids.min())}..{int(ids.max())} are not all codes ({lo}..{hi - 1})")
        return ids - lo

    def describe(self, ids) -> list[str]:
        """Readable tokens, for golden tests and debugging: '<bos>', 'text:12', 'code:345'."""
        names, out = self.specials, []
        for i in map(int, ids):
            if i < self.n_special:
                out.append(names[i])
            elif i < self.code_range[0]:
                out.append(f"text:{i - self.n_special}")
            else:
                out.append(f"code:{i - self.code_range[0]}")
        return out
