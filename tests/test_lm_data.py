"""Pre-tokenization (`vidlm data tokenize`) and token shards, with a debug video tokenizer."""

import json

import pytest
import torch
from vidlm.lm.tasks import structure_view
from vidlm.lm.tokendata import TokenClip, pack, read_clips
from vidlm.lm.vocab import Vocab

from vidlm.pretokenize import main, tail_frames, tokenize_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from vidlm.data.synthetic import synth_shards
    from vidlm.data.text import train_text_tokenizer
    from vidlm.tokenizer.config import TokenizerConfig
    from vidlm.tokenizer.model import VideoTokenizer

    root = tmp_path_factory.mktemp("tok")
    synth_shards(root / "shards", 5, 0, width=32, height=32, frames=9)
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig.from_name("debug"))
    tok.save_pretrained(root / "tokenizer")
    train_text_tokenizer(["a red circle moves left", "a blue square bounces up"], 40, root / "text")
    return root, tok


def test_tokenize_writes_what_the_tasks_need(folders, capsys):
    root, tok = folders
    out = root / "tokens"
    assert main(["--tokenizer", str(root / "tokenizer"), "--text", str(root / "text"), "--shards",
                 str(root / "shards"), "--out", str(out), "--frames", "9", "--area", "1024", "--batch-size", "2"]) == 0
    assert "wrote 5 clips" in capsys.readouterr().out
    clips = read_clips(out)
    info = json.loads((out / "info.json").read_text())
    vocab = Vocab.from_pretrained(out)
    assert len(clips) == info["written"] == 5 and vocab.code_size == tok.codebook_size
    c = clips[0]
    assert c.codes.shape == (3, 8, 8) and sorted(c.tails) == [1, 2] and c.structure.shape == (3, 8, 8)
    assert c.text and c.meta["bucket"] == [32, 32, 9] and c.meta["caption"]
    # the stored codes are the tokenizer's codes of the clip, its tail clips and its structure view
    import tarfile

    from vidlm.data.buckets import Bucket, resize_crop
    from vidlm.data.video import read_clip

    with tarfile.open(min((root / "shards").glob("*.tar"))) as tar:
        data = tar.extractfile(f"{c.key}.mp4").read()
    video = resize_crop(read_clip(data, 9, 8.0), Bucket(32, 32, 9))[None]
    with torch.no_grad():
        assert torch.equal(tok.encode(video)[0], c.codes)
        assert torch.equal(tok.encode(video[:, :, -tail_frames(2, 4):])[0], c.tails[2])
        assert torch.equal(tok.encode(structure_view(video))[0], c.structure)


def test_tokenize_batch_skips_tails_as_long_as_the_clip():
    from vidlm.tokenizer.config import TokenizerConfig
    from vidlm.tokenizer.model import VideoTokenizer

    tok = VideoTokenizer(TokenizerConfig.from_name("debug"))
    codes, tails, struct = tokenize_batch(tok, torch.rand(1, 3, 5, 16, 16) * 2 - 1, tails=(1, 2, 3))
    assert codes.shape == (1, 2, 4, 4) and sorted(tails) == [1] and struct.shape == codes.shape


def test_pack_rows_and_doc_ids():
    from vidlm.lm.tasks import Sequence

    seqs = [Sequence(torch.arange(n) + 1, torch.zeros(n, 3, dtype=torch.long), torch.ones(n, dtype=torch.bool))
            for n in (5, 4, 7, 2)]
    rows = pack(seqs, 10)
    assert rows["ids"].shape == (2, 10)
    assert rows["doc_ids"][0].tolist() == [0] * 5 + [1] * 4 + [-1]
    assert rows["doc_ids"][1].tolist() == [0] * 7 + [1] * 2 + [-1]
    assert rows["index"] == [(0, 0, 5), (0, 5, 4), (1, 0, 7), (1, 7, 2)]
    assert not rows["loss_mask"][rows["doc_ids"] < 0].any()
    with pytest.raises(ValueError, match="does not fit"):
        pack(seqs, 6)


def test_token_clip_round_trip():
    from vidlm.lm.tokendata import decode_clip, encode_clip

    c = TokenClip(key="k", codes=torch.randint(0, 99, (3, 2, 2)), text=[1, 2], tails={1: torch.zeros(1, 2, 2, dtype=torch.long)},
                  structure=None, meta={"caption": "x"})
    parts = encode_clip(c)
    d = decode_clip("k", parts["k.safetensors"], parts["k.json"])
    assert torch.equal(d.codes, c.codes) and d.text == [1, 2] and torch.equal(d.tails[1], c.tails[1])
    assert d.structure is None and d.meta == {"caption": "x"}
