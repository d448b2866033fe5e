"""`vidlm demo`: stage bookkeeping, the gallery, and the whole flow with the `debug` recipe."""

import json
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
import yaml

from vidlm import demo, gallery
from vidlm.pipeline import Generated

TASKS = ("t2v", "t2i", "i2v", "extend-forward", "extend-backward", "connect", "loop", "edit", "long")


# ----------------------------------------------------------------------------- stage bookkeeping
@pytest.fixture
def fake_stages(monkeypatch):
    """Every stage replaced by one that records its call; returns the list of calls."""
    calls = []
    for name in demo.STAGES:
        monkeypatch.setitem(demo.STAGE_FNS, name, lambda run, name=name: calls.append(name) or {"fake": True})
    return calls


def test_a_rerun_skips_finished_stages(tmp_path, fake_stages, capsys):
    out = tmp_path / "run"
    stages = demo.run_stages(demo.load_config(demo.RECIPES / "demo" / "debug.yaml"))
    assert stages == [s for s in demo.STAGES if s not in demo.IMAGE_STAGES]  # a recipe without images
    assert demo.main(["--recipe", "debug", "--out", str(out)]) == 0
    assert fake_stages == stages
    for name in stages:
        marker = json.loads((out / "stages" / f"{name}.json").read_text())
        assert marker["stage"] == name and marker["seconds"] >= 0 and marker["fake"]

    fake_stages.clear()
    assert demo.main(["--recipe", "debug", "--out", str(out)]) == 0
    assert fake_stages == []
    assert capsys.readouterr().out.count("skipped") == len(stages)

    (out / "stages" / "lm.json").unlink()  # an interrupted stage: its marker was never written
    (out / "stages" / "gallery.json").unlink()
    assert demo.main(["--recipe", "debug", "--out", str(out)]) == 0
    assert fake_stages == ["lm", "gallery"]

    fake_stages.clear()
    assert demo.main(["--recipe", "debug", "--out", str(out), "--redo", "tokens"]) == 0
    assert fake_stages == ["tokens", "lm", "prior", "gallery"]

    # a redone trained stage starts from nothing: a kept run folder would resume its finished
    # `latest` and a kept fitted config its old schedule; the stages before it keep theirs
    for name in ("tokenizer", "lm"):
        for folder in (out / "runs" / name, out / "configs"):
            folder.mkdir(parents=True, exist_ok=True)
        (out / "runs" / name / "latest").write_text("step-10")
        (out / "configs" / f"{name}.yaml").write_text("# fitted to 1 minutes\nsteps: 10\n")
    fake_stages.clear()
    assert demo.main(["--recipe", "debug", "--out", str(out), "--redo", "lm"]) == 0
    assert fake_stages == ["lm", "prior", "gallery"]
    assert not (out / "runs" / "lm").exists() and not (out / "configs" / "lm.yaml").exists()
    assert (out / "runs" / "tokenizer" / "latest").is_file() and (out / "configs" / "tokenizer.yaml").is_file()


def test_a_run_folder_is_not_reused_with_another_recipe(tmp_path, fake_stages):
    out = tmp_path / "run"
    assert demo.main(["--recipe", "debug", "--out", str(out)]) == 0
    with pytest.raises(SystemExit, match="other settings"):
        demo.main(["--recipe", "shapes", "--out", str(out)])
    # a run made before the image keys existed is the same recipe (their defaults: no images)
    made = json.loads((out / "recipe.json").read_text())
    for key in ("images", "image_seed", "image_lm_overrides"):
        del made["config"][key]
    (out / "recipe.json").write_text(json.dumps(made))
    assert demo.main(["--recipe", "debug", "--out", str(out)]) == 0


def test_every_demo_recipe_validates_with_its_stage_configs(tmp_path):
    from vidlm.lm.config import TrainConfig as LMTrainConfig
    from vidlm.tokenizer.config import TrainConfig as TokenizerTrainConfig

    from vidlm.config import load_yaml

    paths = sorted((demo.RECIPES / "demo").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"shapes", "fast", "real-cpu", "debug"}
    for path in paths:
        cfg = demo.load_config(path)
        tok = demo.derive_config(cfg.tokenizer_recipe, cfg.tokenizer_overrides, tmp_path / f"{path.stem}-tok.yaml")
        lm = demo.derive_config(cfg.lm_recipe, cfg.lm_overrides, tmp_path / f"{path.stem}-lm.yaml")
        tcfg, lcfg = load_yaml(TokenizerTrainConfig, tok), load_yaml(LMTrainConfig, lm)
        # the tokenizer trains on the clips the demo makes (or on windows of them: its video steps
        # may be shorter than a clip; a window is never longer)
        assert tuple(tcfg.data.size) == tuple(cfg.size) and tcfg.data.frames <= cfg.frames, path
        assert tcfg.steps == cfg.tokenizer_overrides.get("steps", tcfg.steps) and lcfg.steps >= 1
        if cfg.images:  # the image LM: the LM recipe with both sets of overrides, on t2i
            image = demo.derive_config(cfg.lm_recipe, {**cfg.lm_overrides, **cfg.image_lm_overrides},
                                       tmp_path / f"{path.stem}-image-lm.yaml")
            assert set(load_yaml(LMTrainConfig, image).data.tasks) == {"t2i"}, path


def test_derived_config_applies_overrides(tmp_path):
    src = tmp_path / "r.yaml"
    src.write_text("steps: 10\noptim:\n  lr: 0.1\n  betas: [0.9, 0.99]\n")
    out = demo.derive_config(str(src), {"steps": 3, "optim.lr": 0.5}, tmp_path / "d.yaml")
    import yaml

    assert yaml.safe_load(out.read_text()) == {"steps": 3, "optim": {"lr": 0.5, "betas": [0.9, 0.99]}}


def timed_trainer(calls: list, monkeypatch, load: float) -> None:
    """Fake `demo.call` with a trainer whose steps take 0.5 s, on a machine of 2 CPUs whose
    1-minute load average is `load`."""
    def fake_call(module, argv):
        calls.append(module)
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
        run_dir = Path(argv[argv.index("--run") + 1])
        run_dir.mkdir(parents=True)
        rows = [{"step": s, "time": 100 + 0.5 * s + (9.0 if s == config["steps"] else 0), "loss": 1.0}
                for s in range(5, config["steps"] + 1, config["log_every"])]  # the last step validates
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(demo, "call", fake_call)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)


def test_fit_minutes_sizes_the_schedule_to_the_machine(tmp_path, monkeypatch):
    """A fitted stage times a short run of its config, trains the steps that fill its minutes,
    and keeps that schedule when it is resumed."""
    calls = []
    timed_trainer(calls, monkeypatch, load=1.0)
    cfg = demo.DemoConfig(tokenizer_recipe="recipes/tokenizer/debug.yaml", lm_recipe="recipes/lm/debug.yaml",
                          fit_minutes={"lm": 2.0})
    run = demo.Run(tmp_path, cfg, None)
    path = demo.stage_config(run, "lm", cfg.lm_recipe, {"warmup": 5}, ["--data", "x"])
    fitted = yaml.safe_load(path.read_text())
    assert calls == ["vidlm.lm.cli"] and fitted["steps"] == int(0.9 * 2.0 * 60 / 0.5) and fitted["warmup"] == 5
    assert "# fitted to 2.0 minutes: 0.500 s a step" in path.read_text()
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == ["lm.yaml"]  # the timing run is gone
    assert not (tmp_path / "runs" / "lm-timing").exists()
    assert demo.stage_config(run, "lm", cfg.lm_recipe, {"warmup": 5}, ["--data", "x"]) == path and len(calls) == 1
    plain = demo.stage_config(run, "tokenizer", cfg.tokenizer_recipe, {"steps": 7}, ["--data", "x"])
    assert yaml.safe_load(plain.read_text())["steps"] == 7 and len(calls) == 1  # not fitted: the recipe's steps
    with pytest.raises(ValueError, match="fit_minutes"):
        demo.DemoConfig(fit_minutes={"gallery": 1.0})


def test_a_fit_timed_on_a_busy_machine_says_so(tmp_path, monkeypatch, capsys):
    """Steps timed beside another job are slower than the stage's own: the fit warns and its
    config's header records the load, instead of silently training too few steps."""
    timed_trainer([], monkeypatch, load=4.0)  # a 2-thread timing run beside 2 threads of something else
    cfg = demo.DemoConfig(lm_recipe="recipes/lm/debug.yaml", fit_minutes={"lm": 2.0})
    path = demo.stage_config(demo.Run(tmp_path, cfg, None), "lm", cfg.lm_recipe, {"threads": 2}, ["--data", "x"])
    assert "(timed on a busy machine: load 4.0 on 2 CPUs, 2 threads of it ours)" in path.read_text()
    said = capsys.readouterr().out
    assert "warning: lm was timed on a busy machine" in said and "--redo lm" in said
    for load, threads, busy in [(2.0, 2, False), (2.0, 1, False), (2.5, None, False), (3.0, 1, True)]:
        monkeypatch.setattr(demo.os, "getloadavg", lambda load=load: (load, load, load))
        assert bool(demo.busy_machine(threads)) == busy, (load, threads)


# ----------------------------------------------------------------------------- gallery
class FakeGenerator:
    """Answers every task with a recognisable video: frame t is gray level t / T."""

    def _clip(self, frames, size=(32, 32)):
        w, h = size
        ramp = torch.linspace(-1, 1, frames)[None, :, None, None]
        return Generated(ramp.expand(3, frames, h, w).clone(), None)

    def t2v(self, text, frames, size, **kw):
        return self._clip(frames, size)

    def t2i(self, text, size, **kw):
        return self._clip(1, size)

    def i2v(self, image, text, frames, **kw):
        return self._clip(frames)

    def extend(self, video, direction, frames, text, **kw):
        return self._clip(frames)

    def connect(self, a, b, frames, text, **kw):
        return self._clip(frames)

    def loop(self, text, frames, size=None, **kw):
        return self._clip(frames)

    def edit(self, video, text, **kw):
        return self._clip(video.shape[1])

    def long(self, text, seconds, fps, size, **kw):
        return self._clip(1 + 4 * round(seconds * fps / 4), size)


def test_gallery_shows_every_task_with_its_inputs(tmp_path):
    cfg = demo.load_config(demo.RECIPES / "demo" / "debug.yaml")
    from vidlm.evaluate import heldout_clips

    w, h = cfg.size
    sources = [(v, c) for v, c, _ in heldout_clips(9, 0, width=w, height=h, frames=cfg.frames)]
    entries = gallery.generate_all(FakeGenerator(), cfg, sources, progress=False)
    assert [e.task for e in entries] == list(TASKS)
    index = gallery.write_gallery(tmp_path, entries, cfg.fps)
    page = index.read_text()
    for e in entries:
        name = f"{e.task}.{'png' if e.task == 't2i' else 'gif'}"
        assert f'src="gallery/{name}"' in page and (tmp_path / "gallery" / name).is_file()
        assert e.prompt and e.prompt in page
    assert "seam score" in page  # the loop's
    assert sum(f"{t}-input" in page for t in TASKS) == 6  # i2v, extend x2, connect (2 inputs), edit
    frames = iio.imread(tmp_path / "gallery" / "extend-forward.gif")
    assert frames.shape[0] == cfg.frames
    sheet = iio.imread(tmp_path / "contact_sheet.png")
    assert sheet.shape[0] == len(TASKS) * (h + 4)


def test_edit_prompt_changes_the_colour():
    assert gallery.edited_caption("a red circle bouncing upward on a black background") != \
        "a red circle bouncing upward on a black background"
    assert "red" not in gallery.edited_caption("a red circle bouncing upward on a black background")


# ----------------------------------------------------------------------------- the whole flow
def test_the_debug_demo_runs_end_to_end_and_a_rerun_skips_it(tmp_path, capsys):
    from vidlm.pipeline import VideoGenerator

    out = tmp_path / "demo"
    assert demo.main(["--recipe", "debug", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    for task in TASKS:
        name = f"{task}.{'png' if task == 't2i' else 'gif'}"
        assert (out / "gallery" / name).stat().st_size > 0 and f"gallery/{name}" in page
    assert iio.imread(out / "gallery" / "t2v.gif").shape == (9, 32, 32, 3)
    assert iio.imread(out / "contact_sheet.png").ndim == 3
    stages = demo.run_stages(demo.load_config(demo.RECIPES / "demo" / "debug.yaml"))
    assert all((out / "stages" / f"{s}.json").is_file() for s in stages)
    gen = VideoGenerator.from_pretrained(out / "model")  # what `--model OUT/model` loads
    assert gen.tokenizer.factors == (4, 4)

    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*") if p.is_file()}
    shipped = tmp_path / "weights" / "shapes-debug"
    assert demo.main(["--recipe", "debug", "--out", str(out), "--ship", str(shipped)]) == 0
    assert capsys.readouterr().out.count("skipped") == len(stages)
    assert before == {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*") if p.is_file()}

    # shipped weights: the LM stored as float16, loading gives the float32 model back
    from safetensors.torch import load_file

    for f in ("model", "prior"):  # the recipe trains a frame prior too (prior_steps)
        assert {v.dtype for v in load_file(str(shipped / "lm" / f"{f}.safetensors")).values()} == {torch.float16}
    info = json.loads((shipped / "info.json").read_text())
    assert "--recipe recipes/demo/debug.yaml" in info["made_by"] and set(info["stage_seconds"]) == set(stages)
    assert str(tmp_path) not in json.dumps(info)  # no path of the machine that made them
    small = VideoGenerator.from_pretrained(shipped)
    assert all(p.dtype == torch.float32 for p in [*small.lm.parameters(), *small.prior.parameters()])
    for a, b in zip(gen.lm.parameters(), small.lm.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)

    # a second recipe reuses those weights: their tokenizer and text model copied, the LM
    # fine-tuned from theirs (how recipes/demo/shapes-full-lm.yaml trains the shipped LM on)
    on = tmp_path / "on.yaml"
    on.write_text(yaml.safe_dump({**yaml.safe_load((demo.RECIPES / "demo" / "debug.yaml").read_text()),
                                  "tokenizer_from": str(shipped), "lm_overrides": {"init_from": str(shipped)}}))
    assert demo.main(["--recipe", str(on), "--out", str(tmp_path / "on")]) == 0
    for part in ("tokenizer", "text"):
        for f in (shipped / part).iterdir():
            assert (tmp_path / "on" / "model" / part / f.name).read_bytes() == f.read_bytes()


def test_images_first_trains_an_image_lm_that_the_video_lm_starts_from(tmp_path, monkeypatch):
    from vidlm.lm.cli import main as lm_main

    recipe = tmp_path / "images.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load((demo.RECIPES / "demo" / "debug.yaml").read_text()),
                                      "images": 12, "image_lm_overrides": {"data.tasks": {"t2i": 1.0}}}))
    calls = []  # the argv of every `vidlm lm` call
    monkeypatch.setattr("vidlm.lm.cli.main", lambda argv: calls.append(argv) or lm_main(argv))
    out = tmp_path / "run"
    assert demo.main(["--recipe", str(recipe), "--out", str(out)]) == 0
    assert demo.run_stages(demo.load_config(recipe)) == list(demo.STAGES)
    assert all((out / "stages" / f"{s}.json").is_file() for s in demo.STAGES)

    from vidlm.lm.tokendata import read_clips

    images = read_clips(out / "data" / "image-tokens")
    assert len(images) == 12 and {c.codes.shape[0] for c in images} == {1}  # one latent frame each
    trains = [a for a in calls if a[0] == "train"]
    assert [Path(a[a.index("--data") + 1]).name for a in trains] == ["image-tokens", "tokens"]
    image_cfg, video_cfg = (yaml.safe_load(Path(a[a.index("--config") + 1]).read_text()) for a in trains)
    assert image_cfg["data"]["tasks"] == {"t2i": 1.0} and "init_from" not in image_cfg
    assert Path(video_cfg["init_from"]) == out / "runs" / "image_lm" / "export"
    assert "tasks" not in video_cfg["data"]
    # the image LM validates the task it trains, and only that one
    rows = [json.loads(line) for line in (out / "runs" / "image_lm" / "metrics.jsonl").read_text().splitlines()]
    assert {k for r in rows for k in r if k.startswith("val/")} == {"val/t2i", "val/loss"}


def test_a_recipe_with_image_stages_is_checked(tmp_path):
    with pytest.raises(ValueError, match="images"):
        demo.DemoConfig(image_lm_overrides={"steps": 2})
    with pytest.raises(ValueError, match="init_from"):
        demo.DemoConfig(images=10, lm_overrides={"init_from": "shapes-demo"})
    with pytest.raises(ValueError, match="images must be"):
        demo.DemoConfig(images=-1)
    with pytest.raises(SystemExit, match="without `images`"):
        demo.main(["--recipe", "shapes-images-first", "--videos", str(tmp_path), "--out", str(tmp_path / "run")])


def test_a_time_factor_2_tokenizer_runs_the_whole_flow(tmp_path):
    # tokenize, train, and generate every task (the gallery) with a tokenizer that codes frames
    # in pairs: nothing downstream assumes the factor 4 of the debug preset.
    from vidlm.pipeline import VideoGenerator

    recipe = yaml.safe_load((demo.RECIPES / "demo" / "debug.yaml").read_text())
    recipe.update(tokenizer_overrides={"model.time_factor": 2}, known_frames=3,  # 5 x 8 x 8 codes a clip
                  lm_overrides={"model.max_seq_len": 768, "seq_len": 768})  # edit holds two clips
    (tmp_path / "tf2.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "demo"
    assert demo.main(["--recipe", str(tmp_path / "tf2.yaml"), "--out", str(out)]) == 0
    assert VideoGenerator.from_pretrained(out / "model").tokenizer.factors == (2, 4)
    for task in TASKS:
        assert (out / "gallery" / f"{task}.{'png' if task == 't2i' else 'gif'}").stat().st_size > 0
    assert iio.imread(out / "gallery" / "t2v.gif").shape == (9, 32, 32, 3)


SHIPPED = Path(demo.__file__).parent / "weights" / "shapes-demo"


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="shipped weights not built (vidlm demo --ship ...)")
def test_shipped_weights_load_by_name_and_run_every_task():
    import dataclasses

    from vidlm.pipeline import VideoGenerator

    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    gen = VideoGenerator.from_pretrained("shapes-demo")
    assert gen.prior is not None and gen.prior.cfg.n_codes == gen.vocab.code_size  # lm/prior.safetensors
    cfg = dataclasses.replace(demo.load_config(demo.RECIPES / "demo" / "shapes.yaml"), frames=9,
                              known_frames=1, long_seconds=2.0)
    from vidlm.evaluate import heldout_clips

    sources = [(v, c) for v, c, _ in heldout_clips(9, 0, frames=9)]
    entries = gallery.generate_all(gen, cfg, sources, progress=False)
    assert [e.task for e in entries] == list(TASKS)
    for e in entries:
        assert e.output.shape[0] == 3 and e.output.shape[-2:] == (64, 64) and e.output.abs().max() <= 1


# Floors under the shipped weights' world metrics (README results, `vidlm eval world --model
# shapes-demo --num 32 --cfg-text 3`), on a few fixed held-out clips within CI's time: a
# regression in the weights, or in the code that runs them, shows here. Measured on these clips
# when shipped: PSNR 36.7 dB, colour read on 6/6 reconstructions and shape on 4/6 (0.75 over the
# 32 clips of eval world), t2v colour 4/4 (0.94 over 32). The floors leave room for another
# machine's arithmetic (one clip each). t2v shape reads 0/4 here (0.47 over 32): no floor yet.
SHIPPED_FLOORS = {"psnr": 35.0, "rec_colour": 0.8, "rec_shape": 0.5, "t2v_colour": 0.75}


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="shipped weights not built (vidlm demo --ship ...)")
def test_shipped_weights_simulate_the_shapes_world():
    from vidlm.evaluate import heldout_clips, psnr_ssim, verdict
    from vidlm.pipeline import VideoGenerator

    gen = VideoGenerator.from_pretrained("shapes-demo")
    clips = heldout_clips(6, seed=0)
    psnr, rec_colour, rec_shape, t2v_colour = [], [], [], []
    for i, (video, caption, world) in enumerate(clips):
        obj, bg = world["objects"][0], world["background"]
        with torch.inference_mode():
            recon = gen.tokenizer.decode(gen.tokenizer.encode(video[None]))[0].clamp(-1, 1)
        psnr.append(psnr_ssim(video, recon)[0])
        colour, shape = verdict(recon, obj, bg)
        rec_colour.append(colour)
        rec_shape.append(shape)
        if i < 4:  # t2v is the slow part: four prompts
            t2v = gen.t2v(caption, frames=17, size=(64, 64), seed=i, cfg_text=3.0).video
            t2v_colour.append(verdict(t2v, obj, bg)[0])
    got = {"psnr": sum(psnr) / len(psnr), "rec_colour": sum(rec_colour) / len(rec_colour),
           "rec_shape": sum(rec_shape) / len(rec_shape), "t2v_colour": sum(t2v_colour) / len(t2v_colour)}
    for key, floor in SHIPPED_FLOORS.items():
        assert got[key] >= floor, f"{key}: {got[key]:.3f} < floor {floor} ({got})"
