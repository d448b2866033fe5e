"""Bad input on the command line: one line naming what was wrong and what to do, exit code 2,
for every kind a user meets; the traceback only with --debug (vidlm.errors)."""

import shutil

import pytest
import torch

from vidlm.cli import main

ONE_LINE = 1


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from vidlm.pipeline import VideoGenerator

    torch.manual_seed(0)
    return VideoGenerator.random("debug", tokenizer="debug").save_pretrained(tmp_path_factory.mktemp("m") / "model")


def answer(argv, capsys):
    """(exit code, stderr lines) of `vidlm ARGV`."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_inputs_that_are_not_videos(model, tmp_path, capsys):
    text = tmp_path / "notavideo.mp4"
    text.write_text("this is not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for bad in (text, empty):
        rc, err = answer(["generate", "extend", "--model", model, "--input", bad, "--out", tmp_path / "o.gif"], capsys)
        assert rc == 2 and len(err) == ONE_LINE and bad.name in err[0] and err[0].startswith("vidlm generate"), err


def test_weights_that_do_not_load(model, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    rc, err = answer(["generate", "t2v", "--model", broken, "--prompt", "a red circle", "--out", tmp_path / "o.gif"],
                     capsys)
    assert rc == 2 and len(err) == ONE_LINE and "model.safetensors is not a readable safetensors file" in err[0]
    shutil.rmtree(broken / "text")  # a weights folder missing a part
    rc, err = answer(["generate", "t2v", "--model", broken, "--prompt", "x", "--out", tmp_path / "o.gif"], capsys)
    assert rc == 2 and len(err) == ONE_LINE and "text folder" in err[0]


def test_weights_of_another_architecture(model, tmp_path):
    from safetensors.torch import load_file, save_file
    from vidlm.lm.model import VideoLM

    other = tmp_path / "lm"
    shutil.copytree(model / "lm", other)
    state = load_file(str(other / "model.safetensors"))
    name = next(iter(state))
    save_file({**state, name: state[name][:1]}, str(other / "model.safetensors"))  # another shape
    with pytest.raises(ValueError, match="does not match the architecture"):
        VideoLM.from_pretrained(other)
    save_file({k: v for k, v in state.items() if k != name}, str(other / "model.safetensors"))  # a missing key
    with pytest.raises(ValueError, match="missing"):
        VideoLM.from_pretrained(other)
    save_file({**state, name: state[name].to(torch.int32)}, str(other / "model.safetensors"))  # another dtype
    with pytest.raises(ValueError, match=f"{name} holds torch.int32"):
        VideoLM.from_pretrained(other)


def test_configs_and_runs_that_are_wrong(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: debug\nstepz: 3\n")
    rc, err = answer(["tokenizer", "train", "--config", bad, "--run", tmp_path / "r"], capsys)
    assert rc == 2 and len(err) == ONE_LINE and "stepz" in err[0]
    bad.write_text("preset: debug\nsteps: many\n")
    rc, err = answer(["lm", "train", "--config", bad, "--run", tmp_path / "r"], capsys)
    assert rc == 2 and len(err) == ONE_LINE and "steps" in err[0]
    rc, err = answer(["lm", "train", "--config", tmp_path / "nope.yaml", "--run", tmp_path / "r"], capsys)
    assert rc == 2 and len(err) == ONE_LINE and "nope.yaml" in err[0]
    rc, err = answer(["demo", "--recipe", tmp_path / "nope.yaml"], capsys)
    assert rc == 2 and len(err) == ONE_LINE and "nope.yaml" in err[0]
    (tmp_path / "empty-run").mkdir()
    for stage in ("lm", "tokenizer"):  # an export from a folder that is not a run
        rc, err = answer([stage, "export", "--run", tmp_path / "empty-run", "--out", tmp_path / "o"], capsys)
        assert rc == 2 and len(err) == ONE_LINE and "no checkpoint" in err[0], (stage, err)


def test_a_captions_file_with_bad_lines(tmp_path, capsys):
    from vidlm.data.encode import write_video
    from vidlm.data.synthetic import render_clip

    videos = tmp_path / "videos"
    videos.mkdir()
    frames, _, _ = render_clip(0, width=32, height=32, frames=5)
    write_video(videos / "a.mp4", torch.as_tensor(frames).permute(3, 0, 1, 2).float() / 127.5 - 1, fps=8)
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"file": "a.mp4", "caption": "a clip"}\n{"file": "b.mp4" "caption": oops}\n')
    rc, err = answer(["data", "shards", "--videos", videos, "--captions", captions, "--out", tmp_path / "s"], capsys)
    assert rc == 2 and len(err) == ONE_LINE and "captions.jsonl:2" in err[0]


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    text = tmp_path / "notavideo.mp4"
    text.write_text("no")
    with pytest.raises(FileNotFoundError):
        main(["lm", "export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--debug"])
    monkeypatch.setenv("VIDLM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["lm", "export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
