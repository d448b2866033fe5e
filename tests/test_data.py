"""Shards, loader (bad samples, determinism, resume, equal batches), buckets, text tokenizer."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds
from vidlm.data.buckets import Bucket, make_buckets, nearest_bucket, resize_crop
from vidlm.data.loader import LoaderConfig, VideoLoader
from vidlm.data.shards import load_captions, write_shards
from vidlm.data.synthetic import synth_sample, synth_shards
from vidlm.data.text import TextTokenizer, captions_from_shards, train_text_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    synth_shards(out, 24, seed=3, shard_size=8)
    return out


def collect(loader):
    return [(b["key"], b["video"]) for b in loader]


def test_buckets():
    buckets = make_buckets(areas=(64 * 64, 96 * 64), frames=(9, 17))
    assert all(b.width % 8 == 0 and b.height % 8 == 0 and (b.frames - 1) % 4 == 0 for b in buckets)
    assert Bucket(64, 64, 17) in buckets and Bucket(96, 64, 17) in buckets and Bucket(64, 96, 9) in buckets
    wide, tall = nearest_bucket(1280, 720, buckets, max_frames=40), nearest_bucket(720, 1280, buckets, max_frames=12)
    assert 1.7 < wide.width / wide.height < 1.9 and wide.frames == 17  # the 16:9 bucket
    assert (tall.width, tall.height, tall.frames) == (wide.height, wide.width, 9)
    assert nearest_bucket(300, 300, buckets).width == nearest_bucket(300, 300, buckets).height
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        make_buckets(frames=(16,))
    video = torch.rand(3, 5, 720, 1280) * 2 - 1
    b = Bucket(104, 56, 5)
    centre = resize_crop(video, b)
    assert centre.shape == (3, 5, 56, 104)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(resize_crop(video, Bucket(64, 64, 5), g1), resize_crop(video, Bucket(64, 64, 5), g2))


def test_shard_round_trip(real_data_dir, tmp_path):
    captions = load_captions(real_data_dir / "captions.jsonl")
    files = [real_data_dir / n for n in ("mecavideo_g1.avi", "h264_conformance_mobile_calendar.264",
                                         "mecavideo_magnet.ogv", "imageio_realshort.mp4")]
    report = write_shards(files, tmp_path, captions=captions, shard_size=3, progress=False)
    assert report.written == 4 and not report.skipped and len(report.shards) == 2
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(s) for s in report.shards]),
                                    wds.tarfile_to_samples()))
    by_source = {json.loads(s["json"])["source"]: s for s in samples}
    for f in files:
        s = by_source[f.name]
        assert s[f.suffix.lstrip(".")] == f.read_bytes()  # original bytes, original extension
        assert s["txt"].decode() == captions[f.name]
        meta = json.loads(s["json"])
        assert meta["frames"] > 0 and meta["width"] > 0 and meta["fps"] > 0
    loader = VideoLoader(tmp_path, LoaderConfig(batch_size=1, areas=(32 * 32,), frames=(5,), fps=4.0))
    batches = list(loader)
    assert len(batches) == 4 and not loader.counts
    assert {b["video"].shape[3:] for b in batches} <= {(b.height, b.width) for b in make_buckets((32 * 32,))}


def test_max_side_stores_big_videos_downscaled(tmp_path):
    from vidlm.data.encode import write_video
    from vidlm.data.video import read_clip

    rng = np.random.default_rng(0)
    big = np.repeat(rng.integers(0, 256, (12, 3, 5, 3), dtype=np.uint8), 32, 1).repeat(32, 2)  # 160x96
    write_video(tmp_path / "big.mp4", big, fps=10.0)
    write_video(tmp_path / "small.mp4", big[:, :32, :48], fps=10.0)
    report = write_shards(tmp_path, tmp_path / "out", shard_size=10, progress=False, max_side=64)
    assert report.written == 2 and not report.skipped
    samples = {json.loads(s["json"])["source"]: s for s in wds.DataPipeline(
        wds.SimpleShardList([str(x) for x in report.shards]), wds.tarfile_to_samples())}
    meta = json.loads(samples["big.mp4"]["json"])
    assert (meta["width"], meta["height"], meta["frames"], meta["fps"]) == (64, 38, 12, 10.0)
    assert meta["original"] == {"width": 160, "height": 96, "file": "big.mp4"}
    assert samples["small.mp4"]["mp4"] == (tmp_path / "small.mp4").read_bytes()  # small enough: untouched
    small = read_clip(samples["big.mp4"]["mp4"], 12, name="big.mp4", dtype="uint8").float()
    ys, xs = (torch.tensor([int((i + 0.5) * n / k) for i in range(k)]) for n, k in ((38, 3), (64, 5)))
    centres = small[:, :, ys][:, :, :, xs]  # (3,12,3,5): the middle of each 32-px block, downscaled
    blocks = torch.from_numpy(big[:, ::32, ::32]).permute(3, 0, 1, 2).float()
    err = (centres - blocks).abs()  # the same pictures, smaller (H.264 yuv420p twice)
    assert err.mean() < 5 and err.max() < 24


def zero_frame_mp4() -> bytes:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    return buf.getvalue()


def bad_shard(path, good):
    """A shard with the good samples plus one of each bad kind."""
    mp4 = good[0]["mp4"]
    empty_mp4 = zero_frame_mp4()
    bad = {
        "truncated": {"mp4": mp4[: len(mp4) // 2]},
        "garbage": {"mp4": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))},
        "empty": {"mp4": b""},
        "zeroframes": {"mp4": empty_mp4},
        "nocaption": {"mp4": mp4, "txt": b""},
    }
    with wds.TarWriter(str(path), encoder=False) as sink:
        for i, s in enumerate(good):
            sink.write(s)
            if i < len(bad):
                name, fields = list(bad.items())[i]
                sample = {"__key__": f"bad-{name}", "txt": b"a caption", "json": good[0]["json"], **fields}
                sink.write(sample)


def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = [synth_sample(5, i) for i in range(6)]
    bad_shard(tmp_path / "mixed-000000.tar", good)
    loader = VideoLoader(tmp_path / "mixed-000000.tar", LoaderConfig(batch_size=1, shuffle_buffer=1))
    keys = sorted(k for b in loader for k in b["key"])
    assert keys == sorted(s["__key__"] for s in good)
    assert dict(loader.counts) == {"unreadable": 2, "empty": 1, "no_frames": 1, "no_caption": 1}


def test_bad_samples_in_a_batch_are_topped_up(tmp_path):
    good = [synth_sample(5, i) for i in range(3)]
    bad_shard(tmp_path / "mixed-000000.tar", good)
    loader = VideoLoader(tmp_path, LoaderConfig(batch_size=4, shuffle_buffer=1))
    batches = list(loader)  # planned: good0, truncated, good1, garbage -> 2 good + 2 repeats
    assert len(batches) == 1 and batches[0]["video"].shape[0] == 4
    assert [m.get("repeat", False) for m in batches[0]["meta"]] == [False, False, True, True]
    assert batches[0]["key"] == ["shapes-0000000", "shapes-0000001"] * 2
    assert loader.counts["unreadable"] == 2


def test_loader_deterministic_and_resumes(shapes):
    cfg = LoaderConfig(batch_size=3, seed=7, shuffle_buffer=16, epoch_batches=6)
    full = collect(VideoLoader(shapes, cfg))
    again = collect(VideoLoader(shapes, cfg))
    assert [k for k, _ in full] == [k for k, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(full, again))
    other = collect(VideoLoader(shapes, LoaderConfig(batch_size=3, seed=8, shuffle_buffer=16, epoch_batches=6)))
    assert [k for k, _ in other] != [k for k, _ in full]
    loader = VideoLoader(shapes, cfg)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    resumed = VideoLoader(shapes, cfg)
    resumed.load_state_dict(state)
    rest = collect(resumed)
    assert [k for k, _ in rest] == [k for k, _ in full[4:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[4:]))
    assert resumed.epoch == 1  # the epoch ended; the next one draws new randomness
    assert [k for k, _ in collect(resumed)] != [k for k, _ in full]


def test_loader_workers_match_and_resume(shapes):
    cfg = LoaderConfig(batch_size=2, seed=1, shuffle_buffer=8, epoch_batches=5, num_workers=2)
    full = collect(VideoLoader(shapes, cfg))
    assert len(full) == 5
    loader = VideoLoader(shapes, cfg)
    it = iter(loader)
    next(it), next(it), next(it)
    state = loader.state_dict()
    del it
    resumed = VideoLoader(shapes, cfg)
    resumed.load_state_dict(state)
    rest = collect(resumed)
    assert [k for k, _ in rest] == [k for k, _ in full[3:]]
    with pytest.raises(ValueError, match="num_workers"):
        VideoLoader(shapes, cfg, num_workers=1).load_state_dict(state)


def test_equal_batches_per_rank(shapes):
    counts = [len(collect(VideoLoader(shapes, LoaderConfig(batch_size=4, epoch_batches=3), rank=r, world_size=2)))
              for r in range(2)]
    assert counts == [3, 3]
    with pytest.raises(ValueError, match="epoch_batches"):
        VideoLoader(shapes, LoaderConfig(), rank=0, world_size=2)


def test_one_pass_eval_loader(shapes):
    loader = VideoLoader(shapes, LoaderConfig(batch_size=4, train=False, shuffle_buffer=1))
    batches = list(loader)
    assert len(batches) == 6 and len({k for b in batches for k in b["key"]}) == 24
    assert all(m["start_s"] == 0 for b in batches for m in b["meta"])
    assert all(b["video"].shape == (4, 3, 17, 64, 64) and b["video"].abs().max() <= 1 for b in batches)


def test_text_tokenizer(shapes, tmp_path):
    tok = train_text_tokenizer(captions_from_shards(shapes), 200, tmp_path)
    assert (tmp_path / "text.model").is_file() and (tmp_path / "text.json").is_file()
    assert 20 < tok.vocab_size <= 200
    text = "a red circle bouncing to the left on a black background"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and all(0 <= i < tok.vocab_size for i in ids)
    loaded = TextTokenizer.from_dir(tmp_path)
    assert loaded.encode(text) == ids and loaded.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match="train-text-tokenizer"):
        TextTokenizer.from_dir(tmp_path / "nope")


def test_resume_with_bad_samples_keeps_counts(tmp_path):
    good = [synth_sample(5, i) for i in range(6)]
    bad_shard(tmp_path / "mixed-000000.tar", good)
    cfg = LoaderConfig(batch_size=1, shuffle_buffer=4)
    full = VideoLoader(tmp_path, cfg)
    keys = [b["key"] for b in full]
    loader = VideoLoader(tmp_path, cfg)
    it = iter(loader)
    for _ in range(3):
        next(it)
    resumed = VideoLoader(tmp_path, cfg)
    resumed.load_state_dict(loader.state_dict())
    assert [b["key"] for b in resumed] == keys[3:]
    assert resumed.counts == full.counts and sum(full.counts.values()) == 5
