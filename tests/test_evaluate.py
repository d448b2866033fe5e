"""`vidlm eval world`: held-out seeds, the metrics on models whose answers we know, and the CLI
on a `debug` model."""

import json
import math

import pytest
import torch

from vidlm.evaluate import EVAL_SEED_BASE, evaluate, heldout_clips, heldout_seed
from vidlm.pipeline import Generated

REQUIRED = ("tokenizer_psnr", "color_accuracy", "shape_accuracy", "t2i_accuracy", "i2v_identity", "forward_error_ratio",
            "backward_error_ratio", "connect_error_ratio", "identity", "loop_seam")


def test_heldout_seeds_never_meet_training_seeds():
    from vidlm.data.synthetic import clip_seed

    train = [clip_seed(s, i) for s in (0, 1, 2**31) for i in (0, 1, 10**6)]
    assert max(train) < EVAL_SEED_BASE <= min(heldout_seed(s, i) for s in (0, 1) for i in range(50))
    clips = heldout_clips(4, seed=3)
    assert all(len(w["objects"]) == 1 and w["bar"] is None for _, _, w in clips)
    assert [c for _, c, _ in clips] == [c for _, c, _ in heldout_clips(4, seed=3)]  # deterministic
    assert [c for _, c, _ in clips] != [c for _, c, _ in heldout_clips(4, seed=4)]


class ScriptedModel:
    """A 'model' that answers every task with the held-out clip its caption came from, or
    (`frozen=True`) holds the nearest known frame: a perfect world model and the copy-last
    baseline itself. The tokenizer round trip adds a little noise."""

    time_factor = 4

    def __init__(self, clips, frozen=False):
        self.by_caption = {c: v for v, c, _ in clips}
        self.frozen = frozen

    def encode(self, video):
        return video

    def decode(self, codes):
        return (codes + 0.01 * torch.sin(torch.arange(codes.numel()).reshape(codes.shape))).clamp(-1, 1)

    def _answer(self, text, known=None, direction="forward"):
        blank = torch.zeros_like(next(iter(self.by_caption.values())))  # a prompt not from a clip
        clip = self.by_caption.get(text, blank)
        if self.frozen and known is not None:
            hold = known[:, -1:] if direction == "forward" else known[:, :1]
            fill = hold.expand(-1, clip.shape[1] - known.shape[1], -1, -1)
            clip = torch.cat([known, fill] if direction == "forward" else [fill, known], 1)
        return Generated(clip, None)

    def t2v(self, text, frames, size, **kw):
        return self._answer(text)

    def t2i(self, text, size, **kw):
        return Generated(self._answer(text).video[:, :1], None)

    def i2v(self, image, text, frames, **kw):
        return self._answer(text, image[:, None] if self.frozen else None)

    def extend(self, video, direction, frames, text, **kw):
        return self._answer(text, video, direction)

    def connect(self, a, b, frames, text, **kw):
        if not self.frozen:
            return self._answer(text)
        middle = a[:, -1:].expand(-1, frames - a.shape[1] - b.shape[1], -1, -1)
        return Generated(torch.cat([a, middle, b], 1), None)

    def loop(self, text, frames, size=None, **kw):
        clip = self.by_caption[text]
        return Generated(torch.cat([clip[:, : frames // 2 + 1], clip[:, 1 : frames // 2].flip(1)], 1), None)


def test_a_perfect_world_model_scores_perfectly():
    clips = heldout_clips(3, seed=0)
    report = evaluate(ScriptedModel(clips), num=3, seed=0, progress=False)
    assert report["color_accuracy"] == 1.0 and report["shape_accuracy"] == 1.0
    assert report["identity"] == 1.0 and report["t2i_accuracy"] == 1.0 and report["i2v_identity"] == 1.0
    for task in ("forward", "backward", "connect"):
        assert report[f"{task}_error_ratio"] < 0.1, task
        assert report["errors_px"][task]["model"] < 0.5  # the detector is within a pixel
        assert max(report["errors_px_by_frame"][task]["model"]) < 0.6
    assert report["loop_seam"] < 1.5
    assert 30 < report["tokenizer_psnr"] < 60 and 0.9 < report["tokenizer_ssim"] <= 1.0
    assert report["detector_color_accuracy_on_truth"] == 1.0
    assert report["detection_rate"] == 1.0
    assert all(set(report["detected_by_frame"][task]) == {1.0} for task in ("forward", "backward", "connect"))
    assert report["detector_color_accuracy_on_reconstruction"] == 1.0  # a near-lossless "tokenizer"
    assert report["detector_shape_accuracy_on_reconstruction"] == 1.0


def test_the_copy_last_baseline_scores_one():
    clips = heldout_clips(3, seed=0)
    report = evaluate(ScriptedModel(clips, frozen=True), num=3, seed=0, progress=False)
    for task in ("forward", "backward", "connect"):
        assert report[f"{task}_error_ratio"] == pytest.approx(1.0, abs=0.1), task
    errors = report["errors_px"]["forward"]
    assert errors["copy_last"] > 1.0 and math.isfinite(errors["const_velocity"])
    by_frame = report["errors_px_by_frame"]["forward"]  # frames 5..16: copying drifts further each frame
    assert len(by_frame["model"]) == 12 and by_frame["model"] == pytest.approx(by_frame["copy_last"], abs=0.6)
    assert by_frame["copy_last"][0] < by_frame["copy_last"][-1]


def test_eval_world_cli_on_a_debug_model(tmp_path, capsys):
    from vidlm.evaluate import main
    from vidlm.pipeline import VideoGenerator

    captions = [c for _, c, _ in heldout_clips(8, seed=9, width=16, height=16)]
    VideoGenerator.random("debug", tokenizer="debug", captions=captions).save_pretrained(tmp_path / "model")
    out = tmp_path / "report.json"
    assert main(["world", "--model", str(tmp_path / "model"), "--num", "1", "--size", "16x16",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in REQUIRED:
        assert math.isfinite(report[key]), key
    for task in ("forward", "backward", "connect"):
        assert set(report["errors_px"][task]) >= {"model", "copy_last", "const_velocity"}
    assert "connect error / copy-last" in capsys.readouterr().out
