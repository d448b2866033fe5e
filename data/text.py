"""Caption tokenizer: sentencepiece trained in process on captions, saved as DIR/text.model.

Only id 0 (<unk>) is special: bos/eos/pad belong to the LM's vocabulary (vidlm.lm.vocab), which
places these pieces in its own id range.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

MODEL_FILE, INFO_FILE = "text.model", "text.json"


class TextTokenizer:
    """encode(str) -> list[int] in [0, vocab_size); decode(list[int]) -> str."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(self.model_proto)
        (out / INFO_FILE).write_text(json.dumps({"kind": "sentencepiece", "vocab_size": self.vocab_size}) + "\n")
        return out

    @classmethod
    def from_dir(cls, path) -> TextTokenizer:
        f = Path(path) / MODEL_FILE
        if not f.is_file():
            raise FileNotFoundError(f"no text tokenizer at {f}: train one with "
                                    "`vidlm data train-text-tokenizer --shards ... --out DIR`")
        return cls(f.read_bytes())


def train_text_tokenizer(captions: Iterable[str], vocab_size: int, out_dir=None) -> TextTokenizer:
    """Train a unigram sentencepiece model in memory (no temporary files). Tiny corpora give
    fewer pieces than asked (hard_vocab_limit=False). Saved to out_dir when given."""
    import sentencepiece as spm

    texts = [c.strip() for c in captions if c and c.strip()]
    if not texts:
        raise ValueError("no captions to train the text tokenizer on")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    tok = TextTokenizer(buf.getvalue())
    if out_dir is not None:
        tok.save(out_dir)
    return tok


def captions_from_shards(shards) -> Iterable[str]:
    """Every caption (.txt member) in the shards, in order."""
    import webdataset as wds

    from .loader import VideoLoader

    for url in VideoLoader._expand(shards):
        for sample in wds.tarfile_to_samples()([{"url": url}]):
            text = sample.get("txt", b"").decode("utf-8", "replace").strip()
            if text:
                yield text
