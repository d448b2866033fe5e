"""Tokenizer training: G/D steps touch only their own model, a debug run lowers the loss, exact
resume, export/eval CLIs, every recipe validates (2-rank runs: tests/test_faults.py)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from vidlm.tokenizer import train as tt
from vidlm.tokenizer.config import DataConfig, LossConfig, TrainConfig

from vidlm import runtime as rt
from vidlm.config import ConfigError, from_dict, load_yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.distributed.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def dist():
    torch.set_num_threads(1)
    return rt.init_distributed()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from vidlm.data.synthetic import synth_shards

    out = tmp_path_factory.mktemp("shards")
    synth_shards(out, 2, seed=0, width=32, height=32, frames=9)  # every batch = the val batch: overfit
    return str(out)


def debug_cfg(**kw) -> TrainConfig:
    cfg = load_yaml(TrainConfig, REPO / "recipes/tokenizer/debug.yaml")
    return dataclasses.replace(cfg, **kw)


def test_g_step_changes_only_g_and_d_step_only_d(dist, shards):
    cfg = debug_cfg(loss=LossConfig(disc_start=0, gan_weight=0.5, l2_weight=1.0))
    engines = tt.build_engines(cfg, dist, None)
    losses = tt.TokenizerLosses(cfg.loss, log=lambda *_: None)
    guard = rt.NonFiniteGuard(2)
    x = (torch.rand(2, 3, 9, 32, 32) * 2 - 1).to(dist.device)

    def snap(name):
        return {n: p.detach().clone() for n, p in engines[name].module.named_parameters()}

    def changed(before, name):
        return {n for n, p in engines[name].module.named_parameters() if not torch.equal(p, before[n])}

    g0, d0 = snap("generator"), snap("discriminator")
    recon, _, logs = tt.generator_step(engines, losses, guard, x, step=0)
    assert "g_adv" in logs and float(logs["adaptive_weight"]) > 0
    assert changed(g0, "generator") and not changed(d0, "discriminator")
    g1, d1 = snap("generator"), snap("discriminator")
    logs = tt.discriminator_step(engines, losses, guard, x, recon, step=0)
    assert "lecam" in logs and losses.lecam.ema_real != 0.0
    assert changed(d1, "discriminator") and not changed(g1, "generator")
    # a non-finite loss is skipped (nothing changes) and counted
    g2 = snap("generator")
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    tt.generator_step(engines, losses, guard, bad, step=0)
    assert guard.skipped == 1 and not changed(g2, "generator")
    # ... and a skipped D step leaves D and the LeCAM anchors as they were
    anchors, d2 = losses.lecam.state_dict(), snap("discriminator")
    tt.discriminator_step(engines, losses, guard, x, bad, step=0)
    assert guard.skipped == 2 and not changed(d2, "discriminator")
    assert losses.lecam.state_dict() == anchors


def losses_of(run_dir, first_step=1):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("g_loss", r.get("image_g_loss")), r.get("d_loss", r.get("image_d_loss")))
            for r in rows if r["step"] >= first_step]


def test_debug_run_lowers_loss_and_resumes_exactly(dist, shards, tmp_path):
    base = debug_cfg()
    cfg = debug_cfg(steps=16, log_every=1, val_every=8, ckpt_every=8, deterministic=True,
                    loss=LossConfig(disc_start=6, gan_weight=0.1, l2_weight=1.0),
                    data=dataclasses.replace(base.data, image_every=3, image_batch_size=5))
    straight = tmp_path / "straight"
    last = tt.main(cfg, run_dir=str(straight), data=shards)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    # every 3rd step trains on images (logged as image_*), the GAN included once it starts
    assert "image_l1" not in rows[1] and rows[2]["image_l1"] > 0 and "l1" not in rows[2]
    assert "image_d_loss" in rows[8] and "d_loss" in rows[9]
    val = {r["step"]: r["psnr_val"] for r in rows if "psnr_val" in r}  # a fixed validation batch
    assert sorted(val) == [1, 8, 16] and val[16] > val[1] + 1.0, val
    assert last["step"] == 16 and "psnr_val" in last and 0 < last["usage"] <= 1

    resumed = tmp_path / "resumed"
    tt.main(cfg, run_dir=str(resumed), data=shards, stop_at=8)
    assert (resumed / "latest").read_text().strip() == "step-8"
    tt.main(cfg, run_dir=str(resumed), data=shards)
    a, b = losses_of(straight), losses_of(resumed)
    assert [s for s, *_ in b] == list(range(1, 17))
    assert a == b  # bitwise equal losses, before and after the resume, GAN and LeCAM included

    # export (EMA and raw) and evaluate through the CLI
    from vidlm.tokenizer.cli import main as cli
    from vidlm.tokenizer.model import VideoTokenizer

    assert cli(["export", "--run", str(straight), "--out", str(tmp_path / "ema")]) == 0
    assert cli(["export", "--run", str(straight), "--out", str(tmp_path / "raw"), "--raw"]) == 0
    ema, raw = (VideoTokenizer.from_pretrained(tmp_path / n) for n in ("ema", "raw"))
    assert not torch.equal(ema.last_layer, raw.last_layer)
    # fine-tuning starts the generator from exported weights (the discriminator afresh); another
    # architecture is refused before the run folder is written
    tuned = tt.main(debug_cfg(steps=1, init_from=str(tmp_path / "raw")), run_dir=str(tmp_path / "tuned"), data=shards)
    assert tuned["psnr_val"] > val[1] + 1.0, (tuned["psnr_val"], val)
    with pytest.raises(ConfigError, match=r"another architecture .*norm_groups"):
        tt.main(debug_cfg(steps=1, init_from=str(tmp_path / "raw"), model={"norm_groups": 2}),
                run_dir=str(tmp_path / "other"), data=shards)
    assert not (tmp_path / "other").exists()
    # an export written before a config field existed reads as that field's default
    meta = json.loads((tmp_path / "raw" / "config.json").read_text())
    del meta["config"]["temporal_kernel"]
    (tmp_path / "raw" / "config.json").write_text(json.dumps(meta))
    tt.main(debug_cfg(steps=1, init_from=str(tmp_path / "raw")), run_dir=str(tmp_path / "older"), data=shards)
    report = tmp_path / "eval" / "report.json"
    assert cli(["eval", "--model", str(tmp_path / "raw"), "--data", shards, "--size", "32x32", "--frames", "9",
                "--clips", "3", "--batch-size", "2", "--out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["clips"] == 2 and r["latent_grid"] == [3, 8, 8] and 0 < r["codebook_usage"] <= 1
    assert r["psnr"] > 5 and 0 < r["ssim"] <= 1 and r["encode_frames_per_s"] > 0
    assert Path(r["side_by_side"]).stat().st_size > 0


def test_two_level_run_trains_its_cell_scorer(dist, shards, tmp_path):
    """A two-level run trains its cell scorer, and with coarse_until its coarse loss stops after
    that fraction of the steps, where a resumed run stops it too."""
    from vidlm.tokenizer.model import VideoTokenizer

    base = debug_cfg()
    two = {"channels": 8, "channel_mult": (1, 2, 2), "patch": 2, "spatial_factor": 8, "latent_dim": 8,
           "norm_groups": 4, "refine_rows": 2, "coarse_weight": 1.0}
    cfg = debug_cfg(steps=6, log_every=1, val_every=6, ckpt_every=6, model=two, coarse_until=0.5, deterministic=True,
                    data=dataclasses.replace(base.data, image_every=2, image_batch_size=5))
    assert [tt.coarse_weight(cfg, s) for s in range(6)] == [1.0] * 3 + [0.0] * 3
    last = tt.main(cfg, run_dir=str(tmp_path / "run"), data=shards)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["quantizer"] > 0 and rows[1]["image_quantizer"] > 0 and last["step"] == 6  # the cell scorer's loss
    tt.main(cfg, run_dir=str(tmp_path / "resumed"), data=shards, stop_at=4)  # past the switch: the weight is
    tt.main(cfg, run_dir=str(tmp_path / "resumed"), data=shards)  # the step's, not the config's
    assert losses_of(tmp_path / "run") == losses_of(tmp_path / "resumed")
    with pytest.raises(ValueError, match="coarse_until"):
        debug_cfg(coarse_until=0.5)  # one-level codes have no coarse loss to stop
    from vidlm.tokenizer.cli import main as cli

    assert cli(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "tok")]) == 0
    tok = VideoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.encode(torch.zeros(1, 3, 9, 32, 32)).shape == (1, 3, 4 + 2, 4)


def test_image_batch_is_distinct_frames_of_the_clips():
    x = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 9, 1, 1).expand(2, 3, 9, 4, 4)
    img = tt.image_batch(x, 7, seed=1)
    assert img.shape == (7, 3, 1, 4, 4)
    ids = img[:, 0, 0, 0, 0].long()  # frame t of clip b carries the value 9b + t in every pixel
    assert len(set(ids.tolist())) == 7 and torch.equal(img, x.transpose(1, 2).flatten(0, 1)[ids].unsqueeze(2))
    assert torch.equal(img, tt.image_batch(x, 7, seed=1)) and not torch.equal(img, tt.image_batch(x, 7, seed=2))
    assert [tt.is_image_step(debug_cfg(data=DataConfig(image_every=3)), s) for s in range(6)] == [0, 0, 1, 0, 0, 1]


def test_every_recipe_validates():
    recipes = sorted((REPO / "recipes/tokenizer").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"debug", "demo", "real-cpu", "base", "large"}
    for path in recipes:
        cfg = load_yaml(TrainConfig, path)
        model = cfg.tokenizer_config()
        assert model.name == cfg.preset
        assert cfg.data.size[0] % model.spatial_factor == 0 and cfg.data.size[1] % model.spatial_factor == 0
    for path in sorted((REPO / "recipes/deepspeed").glob("*.json")):
        rt.deepspeed_config(path, micro_batch_size=1, grad_accum=1, grad_clip=1.0, precision="fp32", world_size=1)


def test_bad_configs_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrainConfig, {"stepz": 3})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrainConfig, {"model": {"chanels": 3}})
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        TrainConfig(data=DataConfig(frames=8))
    with pytest.raises(ValueError, match="image_batch_size"):
        TrainConfig(micro_batch_size=2, data=DataConfig(frames=9, image_every=2, image_batch_size=19))
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: demo\nloss:\n  gan_wieght: 1\n")
    from vidlm.tokenizer.cli import main as cli

    with pytest.raises(ConfigError, match="gan_wieght"):
        cli(["train", "--config", str(bad), "--run", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_perceptual_loss_only_from_a_given_weights_file(tmp_path):
    from safetensors.torch import save_file
    from vidlm.tokenizer.losses import TokenizerLosses

    said = []
    off = TokenizerLosses(LossConfig(), log=said.append)
    assert off.perceptual is None and "perceptual loss off" in said[0]
    state, i = {}, 0  # random VGG16 weights (torchvision names) stand in for the user's file
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(v, c, 3, 3) * 0.05
        state[f"features.{i}.bias"] = torch.zeros(v)
        c, i = v, i + 2
    save_file(state, str(tmp_path / "vgg.safetensors"))
    on = TokenizerLosses(LossConfig(perceptual_weights=str(tmp_path / "vgg.safetensors")), log=said.append)
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    _, logs = on.reconstruction(x, x.flip(-1))
    assert on.perceptual is not None and float(logs["perceptual"]) > 0 and "perceptual loss on" in said[1]
    assert float(on.reconstruction(x, x)[1]["perceptual"]) == 0.0
    with pytest.raises(FileNotFoundError):
        TokenizerLosses(LossConfig(perceptual_weights=str(tmp_path / "none.safetensors")))
