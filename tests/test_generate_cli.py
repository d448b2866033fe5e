"""`vidlm generate` end to end for every task, on a debug model folder with random weights."""

import numpy as np
import pytest

from vidlm.generate import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from vidlm.data.encode import write_video

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    clips = {}
    for name in ("a", "b"):
        frames = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
        clips[name] = write_video(root / f"{name}.mp4", frames, fps=8.0)
    clips["img"] = write_video(root / "img.png", rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8), fps=8.0)
    return clips


def read_frames(path):
    import imageio.v3 as iio

    return iio.imread(path, index=None) if path.suffix != ".png" else iio.imread(path)[None]


@pytest.mark.parametrize(
    "task, extra, out, frames",
    [
        ("t2v", ["--prompt", "a red circle", "--frames", "5"], "t2v.mp4", 5),
        ("t2i", ["--prompt", "a blue square"], "t2i.png", 1),
        ("i2v", ["--input", "{img}", "--prompt", "moves", "--frames", "5"], "i2v.gif", 5),
        ("extend", ["--input", "{a}", "--frames", "9", "--direction", "backward"], "ext.mp4", 9),
        ("connect", ["--input", "{a}", "{b}", "--frames", "17", "--cfg-text", "2"], "con.webp", 17),
        ("loop", ["--prompt", "a green triangle", "--frames", "5"], "loop.gif", 5),
        ("edit", ["--input", "{a}", "--prompt", "a yellow circle", "--top-k", "8"], "edit.mp4", 5),
        ("long", ["--prompt", "a red circle", "--seconds", "1.0"], "long.mp4", 9),
    ],
)
def test_every_task_writes_its_file(task, extra, out, frames, debug_model_dir, inputs, tmp_path, capsys):
    extra = [e.format(**{k: str(v) for k, v in inputs.items()}) for e in extra]
    path = tmp_path / out
    args = [task, "--model", str(debug_model_dir), "--size", "16x16", "--seed", "1", "--out", str(path)]
    assert main(args + extra) == 0
    text = capsys.readouterr().out
    assert path.is_file() and f"{frames} frames" in text
    if task == "loop":
        assert "seam score" in text
    if path.suffix == ".mp4":  # (a GIF writer may merge identical frames)
        assert read_frames(path).shape[0] == frames


def test_side_by_side_is_twice_as_wide(debug_model_dir, inputs, tmp_path, capsys):
    path = tmp_path / "edit.gif"
    args = ["edit", "--model", str(debug_model_dir), "--input", str(inputs["a"]), "--prompt", "a red circle",
            "--size", "16x16", "--side-by-side", "--out", str(path)]
    assert main(args) == 0
    assert read_frames(path).shape[1:3] == (16, 32)


def test_bad_requests_fail_clearly(debug_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit, match="takes 2 --input"):
        main(["connect", "--model", str(debug_model_dir), "--input", "x.mp4", "--out", str(tmp_path / "o.mp4")])
    with pytest.raises(SystemExit, match="must end in"):
        main(["t2v", "--model", str(debug_model_dir), "--prompt", "x", "--out", str(tmp_path / "o.avi")])
    # too long for the context: exit code 2 and a message that says what fits
    args = ["t2v", "--model", str(debug_model_dir), "--prompt", "x", "--frames", "157", "--size", "16x16"]
    assert main(args + ["--out", str(tmp_path / "o.mp4")]) == 2
    assert "frames fit" in capsys.readouterr().err
