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
    assert info["tail_slices"] is False  # time factor 4: a tail's codes are its own (below)
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


def test_a_tokenizer_that_codes_frames_alone_gives_tails_of_every_length(folders):
    """Every frame coded alone: the codes of the clip's last j frames are its last j codes, so the
    LM draws tails of every length (the eval's 5 known frames, not only the stored 1 and 2)."""
    from vidlm.lm.tokendata import TokenStore
    from vidlm.tokenizer.config import TokenizerConfig
    from vidlm.tokenizer.model import VideoTokenizer

    root, _ = folders
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig.from_name("debug", time_factor=1, temporal_kernel=1)).eval()
    tok.save_pretrained(root / "alone")
    out = root / "tokens-alone"
    assert main(["--tokenizer", str(root / "alone"), "--shards", str(root / "shards"), "--out", str(out),
                 "--frames", "9", "--area", "1024", "--max-clips", "2"]) == 0
    assert json.loads((out / "info.json").read_text())["tail_slices"] is True
    clip, stored = TokenStore.open(out)[0], read_clips(out)[0]
    assert clip.codes.shape[0] == 9 and sorted(clip.tails) == list(range(1, 9)) and sorted(stored.tails) == [1, 2]
    for j in (1, 2):
        assert torch.equal(clip.tails[j], stored.tails[j])  # the tokenizer's own tails are the slices
    with torch.no_grad():  # and so is the longest
        video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
        assert torch.equal(tok.encode(video[:, :, 1:])[0], tok.encode(video)[0, 1:])


def test_two_level_tokens_carry_their_tokenizer_and_train_on_its_places(folders):
    """A two-level tokenizer's token folder holds a copy of it: LM training reads where each fine
    code draws from it (vidlm.pretokenize.load_places); plain folders keep plain grid coordinates."""
    from conftest import two_level_config
    from vidlm.lm.stream import make_sequence
    from vidlm.tokenizer.model import VideoTokenizer

    from vidlm.pretokenize import load_places

    root, _ = folders
    tok = VideoTokenizer(two_level_config())
    tok.save_pretrained(root / "two-level")
    out = root / "tokens-two-level"
    assert main(["--tokenizer", str(root / "two-level"), "--shards", str(root / "shards"), "--out", str(out),
                 "--frames", "9", "--area", "1024", "--max-clips", "2"]) == 0
    places, clip = load_places(out), read_clips(out)[0]
    assert clip.codes.shape == (3, 6, 4) and load_places(root / "tokens") is None
    seq, _ = make_sequence("t2v", clip, Vocab.from_pretrained(out), torch.Generator(), True, False, 512, places)
    yx = torch.cat([torch.cat([torch.full((24, 1), f), tok.code_places(clip.codes[f]).reshape(24, 2)], 1)
                    for f in range(3)])
    assert torch.equal(seq.coords[seq.loss_mask], yx)
    # the LM trained so says it (LMConfig.code_places): sampling must render the same coordinates
    import dataclasses
    from pathlib import Path

    from vidlm.lm.config import TrainConfig
    from vidlm.lm.train import main as train

    from vidlm.config import load_yaml

    cfg = dataclasses.replace(load_yaml(TrainConfig, Path(__file__).resolve().parents[1] / "recipes/lm/debug.yaml"),
                              steps=1, threads=1, data=dataclasses.replace(TrainConfig().data, val_clips=1))
    for name, where in (("grid", None), ("places", places)):
        train(cfg, run_dir=str(root / f"lm-{name}"), data=str(out), places=where)
        assert json.loads((root / f"lm-{name}" / "lm.json").read_text())["code_places"] == (where is not None)


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


def test_pack_order_makes_first_fit_decreasing_rows_under_greedy_packing():
    from vidlm.lm.tokendata import Rows, pack_order

    def greedy_rows(lengths, row_len):
        rows = Rows(row_len)
        return len({rows.place(n)[0] for n in lengths})

    # a mix like the every-frame recipes': long clips that leave a row less room than an image needs
    lengths = [4380 if i % 3 == 0 else 275 for i in range(64)]
    order = pack_order(lengths, 4608)
    assert sorted(order) == list(range(64))
    assert greedy_rows(lengths, 4608) == 43 and greedy_rows([lengths[i] for i in order], 4608) == 25  # 22 + 3
    # the greedy rows in this order are first-fit decreasing's: each row's opener fits no row before it
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (200,), generator=g).tolist()
    placed, rows = [], Rows(100)
    for i in pack_order(lengths, 100):
        placed.append(rows.place(lengths[i]))
    used = rows.used
    assert all(used[r] <= 100 for r in range(len(used)))
    assert len(used) <= greedy_rows(lengths, 100)
    for i, (r, start) in zip(pack_order(lengths, 100), placed):
        if start == 0:  # opened row r: no earlier row had room for it in first-fit decreasing order
            assert all(100 - used[q] < lengths[i] for q in range(r))


def test_token_clip_round_trip():
    from vidlm.lm.tokendata import decode_clip, encode_clip

    c = TokenClip(key="k", codes=torch.randint(0, 99, (3, 2, 2)), text=[1, 2], tails={1: torch.zeros(1, 2, 2, dtype=torch.long)},
                  structure=None, meta={"caption": "x"})
    parts = encode_clip(c)
    d = decode_clip("k", parts["k.safetensors"], parts["k.json"])
    assert torch.equal(d.codes, c.codes) and d.text == [1, 2] and torch.equal(d.tails[1], c.tails[1])
    assert d.structure is None and d.meta == {"caption": "x"}


def random_clips(n: int, seed: int = 0) -> list[TokenClip]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t, h, w = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
        tails = {j: torch.randint(0, 99, (j, h, w), generator=g) for j in range(1, t)}
        out.append(TokenClip(key=f"clip{(i * 7) % n:04d}", codes=torch.randint(0, 99, (t, h, w), generator=g),
                             text=torch.randint(0, 9, (i % 4,), generator=g).tolist(), tails=tails,
                             structure=torch.randint(0, 99, (t, h, w), generator=g) if i % 2 else None))
    return out


def write_tokens(folder, clips, per_shard=7):
    from vidlm.lm.tokendata import ShardWriter

    writer = ShardWriter(folder, per_shard=per_shard)
    for c in clips:
        writer.write(c)
    writer.close()


def test_token_store_reads_what_the_shards_hold_in_key_order(tmp_path):
    from vidlm.lm.stream import unigram_entropy
    from vidlm.lm.tokendata import TokenStore

    clips = random_clips(30)
    write_tokens(tmp_path, clips)
    store = TokenStore.open(tmp_path)
    expected = sorted(read_clips(tmp_path), key=lambda c: c.key)
    assert len(store) == 30 and [store[i].key for i in range(30)] == [c.key for c in expected]
    for got, want in zip((store[i] for i in range(30)), expected):
        assert torch.equal(got.codes, want.codes) and got.text == want.text
        assert got.tails.keys() == want.tails.keys() and all(torch.equal(got.tails[j], want.tails[j]) for j in got.tails)
        assert (got.structure is None) == (want.structure is None)
        assert got.structure is None or torch.equal(got.structure, want.structure)
    train, val = store.view(0, 26), store.view(26, 30)
    assert len(train) == 26 and val[0].key == expected[26].key and val[-1].key == expected[-1].key
    assert unigram_entropy(train, 99) == pytest.approx(unigram_entropy(expected[:26], 99), abs=1e-12)
    with pytest.raises(IndexError):
        val[4]


def test_token_store_is_rebuilt_when_the_shards_change_and_reused_otherwise(tmp_path):
    from vidlm.lm.tokendata import TokenStore

    write_tokens(tmp_path, random_clips(10))
    first = TokenStore.open(tmp_path)
    stamp = (tmp_path / "flat" / "index.npy").stat().st_mtime_ns
    assert TokenStore.open(tmp_path) and (tmp_path / "flat" / "index.npy").stat().st_mtime_ns == stamp
    write_tokens(tmp_path, random_clips(20, seed=1))  # a new tokenization into the same folder
    second = TokenStore.open(tmp_path)
    assert len(first) == 10 and len(second) == 20
    assert torch.equal(second[0].codes, min(read_clips(tmp_path), key=lambda c: c.key).codes)
    assert not list(tmp_path.glob("flat.tmp-*"))
