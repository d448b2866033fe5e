"""The shapes world: spec, ground truth against pixels (and after mp4 round trip), detectors."""

import json

import numpy as np
import pytest
import webdataset as wds
from vidlm.data.encode import encode_mp4
from vidlm.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    clip_seed,
    detect_objects,
    render_clip,
    synth_sample,
    synth_shards,
)
from vidlm.data.video import read_clip

SIZES = [(64, 64), (96, 64), (64, 96)]


def track_objects(video: np.ndarray, **kw) -> dict[str, list]:
    """Per colour, the centre (x, y) in every frame of (T, H, W, 3) uint8 (None where absent)."""
    tracks: dict[str, list] = {}
    for k, frame in enumerate(video):
        for obj in detect_objects(frame, **kw):
            tracks.setdefault(obj["colour"], [None] * len(video))[k] = obj["centre"]
    return tracks


@pytest.mark.parametrize("width,height", SIZES)
def test_ground_truth_matches_pixels(width, height):
    errors, shapes, checked, bars, pairs = [], [], 0, 0, 0
    for seed in range(25):
        video, caption, world = render_clip(seed, width=width, height=height)
        assert video.shape == (17, height, width, 3) and video.dtype == np.uint8
        bars += world["bar"] is not None
        pairs += len(world["objects"]) == 2
        side = min(width, height)
        for obj in world["objects"]:
            assert obj["colour"] in COLOURS and obj["colour"] not in BACKGROUNDS
            assert 0.10 * side <= obj["size"] <= 0.20 * side
            assert obj["colour"] in caption and obj["shape"] in caption
        for k in range(17):
            found = {d["colour"]: d for d in detect_objects(video[k])}
            for obj in world["objects"]:
                if obj["visible"][k] < 0.999:  # behind the bar or the other object
                    continue
                d = found[obj["colour"]]
                errors.append(np.hypot(*(np.array(d["centre"]) - obj["centres"][k])))
                shapes.append(d["shape"] == obj["shape"])
                checked += 1
    assert bars > 0 and pairs > 0 and checked > 400
    assert max(errors) <= 1.0  # every visible object centre within 1 px of the ground truth
    assert np.mean(shapes) > 0.95


def test_occluded_objects_come_out_unchanged():
    for seed in range(200):
        video, _, world = render_clip(seed)
        if world["bar"] and any(min(o["visible"]) < 0.5 for o in world["objects"]):
            break
    obj = next(o for o in world["objects"] if min(o["visible"]) < 0.5)
    assert max(obj["visible"]) == 1.0 or min(obj["visible"]) < 1.0
    hidden = int(np.argmin(obj["visible"]))
    assert obj["visible"][hidden] < 0.5
    # after it leaves the bar, the same colour and size show again
    later = [k for k in range(hidden, 17) if obj["visible"][k] >= 0.999]
    if later:
        d = {x["colour"]: x for x in detect_objects(video[later[0]])}[obj["colour"]]
        assert np.hypot(*(np.array(d["centre"]) - obj["centres"][later[0]])) <= 1.0


def test_motion_kinds_and_captions():
    kinds, captions = set(), []
    for seed in range(40):
        _, caption, world = render_clip(seed)
        captions.append(caption)
        for o in world["objects"]:
            kinds.add(o["motion"])
            y = np.array([c[1] for c in o["centres"]])
            accel = np.diff(y, 2)
            if o["motion"] == "falling":  # gravity: y accelerates downward except at a bounce
                assert (accel > 0).mean() > 0.6
                if len(world["objects"]) == 1:
                    assert "falls and bounces" in caption
            else:  # constant speed between elastic bounces
                speed = np.hypot(*np.diff(np.array(o["centres"]), axis=0).T)
                assert np.median(speed) > 0
        assert caption.endswith(("background", "gray bar"))
    assert kinds == {"bouncing", "falling"}
    assert any("bouncing to the" in c for c in captions)


def test_one_frame_is_the_clips_first():
    """An image of the world (frames=1) is frame 0 of the clip of the same seed, caption and all."""
    for seed in range(6):
        video, caption, world = render_clip(seed)
        image, image_caption, image_world = render_clip(seed, frames=1)
        assert image.shape == (1, 64, 64, 3) and np.array_equal(image[0], video[0])
        assert image_caption == caption
        assert [o["centres"] for o in image_world["objects"]] == [o["centres"][:1] for o in world["objects"]]


def test_decoded_mp4_tracks_ground_truth():
    errors = []
    for seed in range(6):
        video, _, world = render_clip(seed)
        decoded = read_clip(encode_mp4(video, 8.0), 17, dtype="uint8", name="s.mp4").permute(1, 2, 3, 0).numpy()
        tracks = track_objects(decoded)
        for obj in world["objects"]:
            for k, (x, y) in enumerate(obj["centres"]):
                if obj["visible"][k] >= 0.999:
                    errors.append(np.hypot(*(np.array(tracks[obj["colour"]][k]) - (x, y))))
    assert np.percentile(errors, 95) <= 1.0 and np.median(errors) < 0.5


def test_synth_shards(tmp_path):
    paths = synth_shards(tmp_path, 5, seed=1, shard_size=2, width=96, height=64)
    assert len(paths) == 3
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(p) for p in paths]), wds.tarfile_to_samples()))
    assert len(samples) == 5
    meta = json.loads(samples[0]["json"])
    assert (meta["width"], meta["height"], meta["frames"], meta["fps"]) == (96, 64, 17, 8.0)
    assert meta["world"]["objects"][0]["centres"] and samples[0]["txt"]
    clip = read_clip(samples[0]["mp4"], 17, name="x.mp4")
    assert clip.shape == (3, 17, 64, 96)
    again = synth_shards(tmp_path / "again", 5, seed=1, shard_size=2, width=96, height=64)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # reproducible


def test_shard_frames_keep_shapes():
    """The shards are 4:4:4: the detector reads the same shape on their decoded frames as on the
    rendered ones (4:2:0 halves the chroma and reads about one small triangle in five as a circle)."""
    frames, same = 0, 0
    for index in range(8):
        video = render_clip(clip_seed(1, index))[0]
        decoded = read_clip(synth_sample(1, index)["mp4"], 17, dtype="uint8", name="s.mp4")
        decoded = decoded.permute(1, 2, 3, 0).numpy()
        assert np.abs(decoded.astype(int) - video).mean() < 1.0
        for rendered, back in zip(video, decoded):
            truth = {o["colour"]: o["shape"] for o in detect_objects(rendered)}
            seen = {o["colour"]: o["shape"] for o in detect_objects(back)}
            frames, same = frames + len(truth), same + sum(seen.get(c) == s for c, s in truth.items())
    assert same >= 0.98 * frames
