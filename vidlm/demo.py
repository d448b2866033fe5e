"""`vidlm demo`: the whole system, end to end, on one CPU.

    data       synthesize the shapes world into mp4 shards (or pack --videos into shards)
    text       train the caption tokenizer (sentencepiece)
    tokenizer  train the 3D VQGAN video tokenizer, export it
    tokens     pre-tokenize the shards into token shards
    images     (recipes with `images`) synthesize one-frame shapes-world images, tokenize them
    image_lm   (recipes with `images`) train an LM on t2i alone, the video LM's initialisation
    lm         train the video LM, export it
    prior      (recipes with `prior_steps`) train the frame prior beside it (vidlm.lm.prior)
    gallery    generate every task and write OUT/index.html, OUT/contact_sheet.png, OUT/gallery/

Each stage calls the stage's own CLI `main(argv)` in this process (no launcher) with a config
derived from the recipe the demo recipe names (recipes/demo/*.yaml), written to OUT/configs/.
A stage is finished when OUT/stages/NAME.json exists; it is written last, so a re-run skips
finished stages and an interrupted one starts over (trainers resume from their `latest`);
`--redo NAME` forgets NAME and the stages after it, trainers' run folders included.
The trained model lands in OUT/model/{tokenizer,text,lm}, a folder `--model` accepts.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidlm.gallery import generate_all, write_gallery

RECIPES = Path(str(importlib.resources.files("vidlm.recipes")))  # installed with the package


def recipe_file(name: str) -> Path:
    """A recipe path as recipes name each other ("recipes/lm/demo.yaml": inside the installed
    recipes), or any other path as given."""
    path = Path(name)
    if not path.is_absolute() and path.parts[:1] == ("recipes",):
        return RECIPES.joinpath(*path.parts[1:])
    return path


STAGES = ("data", "text", "tokenizer", "tokens", "images", "image_lm", "lm", "prior", "gallery")
IMAGE_STAGES = ("images", "image_lm")  # run only where the recipe asks for `images`
FITTED = ("tokenizer", "image_lm", "lm")  # the stages whose steps `fit_minutes` may fit to the machine

EXAMPLES = """\
examples:
  vidlm demo                                   # train everything on the shapes world (~20 min)
  vidlm demo --pretrained                      # the shipped shapes-demo weights, gallery only
  vidlm demo --videos ../shared/data/real --captions ../shared/data/real/captions.jsonl \\
      --out runs/demo-real                     # the same flow on your own clips
  vidlm demo --out runs/demo --redo lm         # retrain the LM (and what follows), keep the rest

Open OUT/index.html for the gallery. `vidlm generate TASK --model OUT/model ...` samples more;
`vidlm eval world --model OUT/model` measures it.
"""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """A demo run: its data, the stage recipes it trains with, and what the gallery shows."""

    clips: int = 2000
    """Shapes-world clips to synthesize (ignored with --videos)."""
    seed: int = 0
    """Seed of the synthesized clips (training clip seeds are `clip_seed(seed, i)`)."""
    size: tuple[int, ...] = (64, 64)
    """Width, height of the synthesized clips and of the gallery."""
    frames: int = 17
    """Frames per clip (1 + time_factor*k for the recipe's tokenizer)."""
    fps: float = 8.0
    """Frame rate of clips and GIFs."""
    text_vocab_size: int = 256
    """Caption tokenizer pieces (fewer on tiny caption sets)."""
    tokenizer_from: str | None = None
    """Weights (a shipped name such as shapes-demo, or a model folder) whose video tokenizer and
    caption tokenizer this run uses as they are: the text and tokenizer stages copy them."""
    tokenizer_recipe: str = "recipes/tokenizer/demo.yaml"
    """Video tokenizer run config (relative to the repo)."""
    tokenizer_overrides: dict[str, Any] = field(default_factory=dict)
    """Keys of the tokenizer recipe replaced for the demo (dotted keys reach nested sections)."""
    lm_recipe: str = "recipes/lm/demo.yaml"
    """LM run config (relative to the repo)."""
    lm_overrides: dict[str, Any] = field(default_factory=dict)
    """Keys of the LM recipe replaced for the demo."""
    images: int = 0
    """One-frame shapes-world images to synthesize for an LM that learns t2i alone first (the
    `image_lm` stage); the video LM then starts from its weights (docs/experiments.md, "Shape,
    twenty-third round"). 0: no image stages, the video LM starts from nothing."""
    image_seed: int = 1
    """Seed of the synthesized images (another seed than the clips')."""
    image_lm_overrides: dict[str, Any] = field(default_factory=dict)
    """Keys replaced for the image LM, after `lm_overrides` (its rows, steps, `data.tasks`)."""
    fit_minutes: dict[str, float] = field(default_factory=dict)
    """Stage ("tokenizer", "image_lm", "lm") -> the minutes its training may take on this machine:
    the stage first times a few steps of its config, then trains for the `steps` that fit
    (`fit_steps`), so the demo keeps its time on a slow CPU and trains longer on a fast one. A
    stage not named trains its recipe's `steps`."""
    prior_steps: int = 0
    """Steps of the frame prior (`vidlm lm prior`: a conv net that predicts each frame's codes from
    its two neighbours, added to the LM's in sampling; vidlm.lm.prior), trained after the LM on the
    same tokens into OUT/model/lm. 0: no prior stage, the LM samples alone."""
    prior_width: int = 128
    """Channels of the frame prior's conv blocks."""
    prior_weight: float = 2.0
    """The weight of the frame prior's log-probs in sampling (stored with it; `--prior-weight`
    overrides it per call)."""
    known_frames: int = 5
    """Frames given to extend / connect (1 + time_factor*k)."""
    long_seconds: float = 4.0
    """Duration of the `long` gallery entry."""
    temperature: float = 1.0
    """Sampling temperature of the gallery."""
    top_k: int | None = None
    """Top-k of the gallery's sampling (None: off)."""
    cfg_text: float = 1.0
    """Text guidance scale of the gallery (1: none)."""

    def __post_init__(self):
        if len(self.size) != 2 or min(self.size) <= 0:
            raise ValueError(f"size must be [width, height], got {list(self.size)}")
        if bad := {k: v for k, v in self.fit_minutes.items() if k not in FITTED or not v > 0}:
            raise ValueError(f"fit_minutes: {bad}; give minutes > 0 for stages among {list(FITTED)}")
        if self.images < 0:
            raise ValueError(f"images must be >= 0, got {self.images}")
        if not self.images and (self.image_lm_overrides or "image_lm" in self.fit_minutes):
            raise ValueError("image_lm_overrides and fit_minutes.image_lm train the image LM: give `images` > 0")
        if self.images and "init_from" in self.lm_overrides:
            raise ValueError("lm_overrides.init_from: with `images` the video LM starts from the image LM; "
                             "give one or the other")
        if self.prior_steps < 0:
            raise ValueError(f"prior_steps must be >= 0 (0: no frame prior), got {self.prior_steps}")
        if not 1 <= self.known_frames < self.frames:
            raise ValueError(f"known_frames must be in [1, frames), got {self.known_frames} of {self.frames}")


def run_stages(cfg: DemoConfig) -> list[str]:
    """The stages a recipe trains with, in order (the image stages only where it asks for images)."""
    return [s for s in STAGES if (cfg.images or s not in IMAGE_STAGES) and (cfg.prior_steps or s != "prior")]


def load_config(path: Path) -> DemoConfig:
    from vidlm.config import load_yaml

    return load_yaml(DemoConfig, path)


# ----------------------------------------------------------------------------- stages
class Run:
    """The paths of one demo run and its stage markers."""

    def __init__(self, out: Path, cfg: DemoConfig, args):
        self.out, self.cfg, self.args = Path(out), cfg, args
        self.shards = self.out / "data" / "shards"
        self.model = self.out / "model"
        self.configs = self.out / "configs"
        self.stages = self.out / "stages"

    def marker(self, name: str) -> Path:
        return self.stages / f"{name}.json"

    def trainer_run(self, name: str) -> Path:
        """OUT/runs/NAME: a trainer's --run folder (checkpoints, `latest`, metrics)."""
        return self.out / "runs" / name

    def config(self, name: str) -> Path:
        """OUT/configs/NAME.yaml: the config a stage trains with."""
        return self.configs / f"{name}.yaml"

    def done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def finish(self, name: str, seconds: float, **info) -> None:
        self.stages.mkdir(parents=True, exist_ok=True)
        tmp = self.marker(name).with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": name, "seconds": round(seconds, 1), **info}, indent=1) + "\n")
        tmp.replace(self.marker(name))

    def seconds(self, name: str) -> float | None:
        return json.loads(self.marker(name).read_text())["seconds"] if self.done(name) else None

    def forget(self, name: str) -> None:
        """`--redo NAME`: the stage runs again from nothing: its marker, and for a trained stage
        its trainer's run folder (else it would resume its finished `latest`) and its config (a
        fitted one is timed again)."""
        self.marker(name).unlink(missing_ok=True)
        shutil.rmtree(self.trainer_run(name), ignore_errors=True)
        self.config(name).unlink(missing_ok=True)


def derived(recipe: str, overrides: dict[str, Any]) -> dict:
    """The recipe YAML with `overrides` applied (dotted keys reach nested sections)."""
    import yaml

    src = recipe_file(recipe)
    if not src.is_file():
        raise FileNotFoundError(f"demo: recipe {src} not found")
    data = yaml.safe_load(src.read_text()) or {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def derive_config(recipe: str, overrides: dict[str, Any], out: Path) -> Path:
    """`derived(recipe, overrides)` written to `out` (the config a stage trains with)."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# derived by `vidlm demo` from {recipe}\n" + yaml.safe_dump(derived(recipe, overrides), sort_keys=False))
    return out


TIMING_STEPS = 75
"""Steps of a stage's timing run; the seconds a step are read from its 5th to its 70th (its
first and last steps validate). The LM's first steps of each window of `data.pack_window`
sequences hold its longest ones, so a shorter timing overestimates a step (0.76 s over steps
5-25 against 0.56 s over a whole run of the demo LM on an AVX2 CPU)."""


def fit_steps(run: Run, stage: str, config: Path, train: list[str]) -> Path:
    """Fit the stage's `steps` in `config` to `fit_minutes[stage]`: time TIMING_STEPS steps of
    the same config (its threads, precision and data) in a scratch run folder, then write the
    steps that fill the minutes, warm-up and validation included (10 % is left for them and for
    the checkpoints). The timed seconds and the steps are recorded in the config's header. The
    fitted config is kept: a resumed stage trains the schedule it started with."""
    import yaml

    data = yaml.safe_load(config.read_text())
    timing = dict(data, steps=TIMING_STEPS, warmup=min(data.get("warmup", 0), TIMING_STEPS), log_every=5,
                  val_every=10**9, ckpt_every=10**9, max_minutes=None)
    scratch = run.trainer_run(f"{stage}-timing")
    shutil.rmtree(scratch, ignore_errors=True)
    timing_cfg = run.config(f"{stage}-timing")
    timing_cfg.write_text(yaml.safe_dump(timing, sort_keys=False))
    call(f"vidlm.{stage}.cli", ["train", "--config", str(timing_cfg), *train, "--run", str(scratch)])
    rows = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if 5 <= r["step"] < TIMING_STEPS]  # the first and last steps validate
    per_step = (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"])
    minutes = run.cfg.fit_minutes[stage]
    steps = max(2 * data.get("warmup", 0), 10, int(0.9 * minutes * 60 / per_step))
    if busy := busy_machine(data.get("threads")):
        print(f"  warning: {stage} was timed on a busy machine ({busy}): its {steps} steps fill {minutes} minutes "
              f"only while the machine stays this busy. On an idle machine they take less: to fit again, stop the "
              f"run and start it again with `--redo {stage}`.", flush=True)
    shutil.rmtree(scratch)
    timing_cfg.unlink()
    data["steps"] = steps
    config.write_text(f"{config.read_text().splitlines()[0]}\n# fitted to {minutes} minutes: {per_step:.3f} s "
                      f"a step over steps {rows[0]['step']}-{rows[-1]['step']} of a timing run -> {steps} steps"
                      f"{f' (timed on a busy machine: {busy})' if busy else ''}\n"
                      + yaml.safe_dump(data, sort_keys=False))
    print(f"  {stage}: {per_step:.3f} s a step on this machine -> {steps} steps in {minutes} minutes", flush=True)
    return config


def busy_machine(threads: int | None) -> str:
    """What else ran beside a timing run of `threads` threads, when it did not fit beside it: the
    1-minute load average (the timing run's own threads included) against the CPUs; '' when the
    machine had room or cannot tell."""
    if not hasattr(os, "getloadavg"):
        return ""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    ours = min(threads or cpus, cpus)
    return f"load {load:.1f} on {cpus} CPUs, {ours} threads of it ours" if load > cpus and load - ours >= 0.75 else ""


def stage_config(run: Run, stage: str, recipe: str, overrides: dict[str, Any], train: list[str]) -> Path:
    """OUT/configs/STAGE.yaml: the recipe with the demo's overrides, its steps fitted to the
    machine where `fit_minutes` names the stage."""
    config = run.config(stage)
    if stage in run.cfg.fit_minutes and config.is_file() and "# fitted" in config.read_text():
        return config  # a resumed stage keeps its schedule
    derive_config(recipe, overrides, config)
    return fit_steps(run, stage, config, train) if stage in run.cfg.fit_minutes else config


def time_factor(cfg: DemoConfig) -> int:
    """The time factor of the video tokenizer the recipe trains (or copies with tokenizer_from)."""
    from vidlm.config import from_dict, read_json, resolve_weights
    from vidlm.tokenizer.config import TokenizerConfig, TrainConfig

    if cfg.tokenizer_from:
        path = resolve_weights(cfg.tokenizer_from) / "tokenizer" / "config.json"
        return from_dict(TokenizerConfig, read_json(path)["config"], where=str(path)).time_factor
    data = derived(cfg.tokenizer_recipe, cfg.tokenizer_overrides)
    return from_dict(TrainConfig, data, where=cfg.tokenizer_recipe).tokenizer_config().time_factor


def check_recipe_frames(cfg: DemoConfig) -> None:
    """frames and known_frames against the tokenizer's time factor, before any stage runs."""
    from vidlm.data.buckets import check_frames

    tf = time_factor(cfg)
    check_frames(cfg.frames, tf, "frames")
    check_frames(cfg.known_frames, tf, "known_frames")


COMMANDS = {"vidlm.data.cli": "vidlm data", "vidlm.tokenizer.cli": "vidlm tokenizer", "vidlm.lm.cli": "vidlm lm",
            "vidlm.pretokenize": "vidlm data tokenize"}


def call(module: str, argv: list[str]) -> None:
    """Run a stage CLI's main(argv) in this process (printed as the command a user would type);
    a non-zero exit stops the demo."""
    import importlib

    import torch

    command = f"{COMMANDS[module]} {' '.join(argv)}"
    print(f"  $ {command}", flush=True)
    threads = torch.get_num_threads()  # a recipe's `threads` holds for its own stage only
    try:
        rc = importlib.import_module(module).main(argv) or 0
    finally:
        torch.set_num_threads(threads)
    if rc:
        raise SystemExit(f"demo: `{command}` failed with exit code {rc}")


def stage_data(run: Run) -> dict:
    shutil.rmtree(run.shards, ignore_errors=True)
    a, c = run.args, run.cfg
    if a.videos:
        # stored at twice the training size: big sources would otherwise be decoded at every sample
        argv = ["shards", "--videos", *a.videos, "--out", str(run.shards), "--max-side", str(2 * max(c.size))]
        call("vidlm.data.cli", argv + (["--captions", a.captions] if a.captions else []))
    else:
        synthesize(run, run.shards, c.clips, c.seed, c.frames)
    return {"shards": len(list(run.shards.glob("*.tar")))}


def synthesize(run: Run, out: Path, num: int, seed: int, frames: int) -> None:
    """`vidlm data synth`: NUM shapes-world clips of FRAMES frames at the recipe's size and fps."""
    w, h = run.cfg.size
    call("vidlm.data.cli", ["synth", "--out", str(out), "--num", str(num), "--seed", str(seed),
                            "--size", f"{w}x{h}", "--frames", str(frames), "--fps", str(run.cfg.fps)])


def tokenize(run: Run, shards: Path, out: Path, frames: int, extra: list[str] = ()) -> None:
    """`vidlm data tokenize`: SHARDS' clips of FRAMES frames into token shards at OUT (emptied
    first), with the run's tokenizer and caption model, at the recipe's size and fps."""
    shutil.rmtree(out, ignore_errors=True)
    w, h = run.cfg.size
    call("vidlm.pretokenize", ["--tokenizer", str(run.model / "tokenizer"), "--text", str(run.model / "text"),
                                  "--shards", str(shards), "--out", str(out), "--frames", str(frames),
                                  "--area", str(w * h), "--fps", str(run.cfg.fps), *extra])


def copy_part(run: Run, part: str) -> dict:
    """OUT/model/PART from the `tokenizer_from` weights instead of training it."""
    from vidlm.config import resolve_weights

    src = resolve_weights(run.cfg.tokenizer_from) / part
    shutil.rmtree(run.model / part, ignore_errors=True)
    shutil.copytree(src, run.model / part)
    return {"copied_from": str(src)}


def stage_text(run: Run) -> dict:
    if run.cfg.tokenizer_from:
        return copy_part(run, "text")
    call("vidlm.data.cli", ["train-text-tokenizer", "--shards", str(run.shards), "--vocab-size",
                            str(run.cfg.text_vocab_size), "--out", str(run.model / "text")])
    return {}


def stage_tokenizer(run: Run) -> dict:
    c = run.cfg
    if c.tokenizer_from:
        return copy_part(run, "tokenizer")
    runs, data = run.trainer_run("tokenizer"), ["--data", str(run.shards)]
    cfg = stage_config(run, "tokenizer", c.tokenizer_recipe, c.tokenizer_overrides, data)
    call("vidlm.tokenizer.cli", ["train", "--config", str(cfg), *data, "--run", str(runs)])
    call("vidlm.tokenizer.cli", ["export", "--run", str(runs), "--out", str(run.model / "tokenizer")])
    return {}


def stage_tokens(run: Run) -> dict:
    # Stand-alone tails of every length up to the gallery's (and `eval world`'s) known segments:
    # extend-backward and connect are trained on exactly the tails they are given at inference.
    tf = time_factor(run.cfg)
    tails = [str(j) for j in range(1, 2 + (run.cfg.known_frames - 1) // tf)]
    tokenize(run, run.shards, run.out / "data" / "tokens", run.cfg.frames, ["--tails", *tails])
    return {}


def stage_images(run: Run) -> dict:
    shards = run.out / "data" / "image-shards"
    shutil.rmtree(shards, ignore_errors=True)
    synthesize(run, shards, run.cfg.images, run.cfg.image_seed, frames=1)
    tokenize(run, shards, run.out / "data" / "image-tokens", frames=1)
    return {}


def image_lm(run: Run) -> Path:
    """The image LM's exported weights, the video LM's `init_from`."""
    return run.trainer_run("image_lm") / "export"


def train_lm(run: Run, stage: str, tokens: str, overrides: dict[str, Any], out: Path) -> None:
    """Train an LM stage on OUT/data/TOKENS with the LM recipe and `overrides`, export it to `out`."""
    runs, data = run.trainer_run(stage), ["--data", str(run.out / "data" / tokens)]
    cfg = stage_config(run, stage, run.cfg.lm_recipe, overrides, data)
    call("vidlm.lm.cli", ["train", "--config", str(cfg), *data, "--run", str(runs)])
    call("vidlm.lm.cli", ["export", "--run", str(runs), "--out", str(out)])


def stage_image_lm(run: Run) -> dict:
    train_lm(run, "image_lm", "image-tokens", {**run.cfg.lm_overrides, **run.cfg.image_lm_overrides}, image_lm(run))
    return {}


def stage_lm(run: Run) -> dict:
    c = run.cfg
    train_lm(run, "lm", "tokens", {**c.lm_overrides, "init_from": str(image_lm(run))} if c.images else c.lm_overrides,
             run.model / "lm")
    return {}


def stage_prior(run: Run) -> dict:
    c = run.cfg
    call("vidlm.lm.cli", ["prior", "--data", str(run.out / "data" / "tokens"), "--out", str(run.model / "lm"),
                          "--steps", str(c.prior_steps), "--width", str(c.prior_width), "--weight", str(c.prior_weight),
                          "--val-clips", str(max(1, min(64, c.clips // 10))), "--run", str(run.trainer_run("prior"))])
    return {}


def stage_gallery(run: Run) -> dict:
    from vidlm.pipeline import VideoGenerator

    model = "shapes-demo" if run.args.pretrained else run.model
    try:
        gen = VideoGenerator.from_pretrained(model)
    except FileNotFoundError as e:
        raise SystemExit(f"demo: {e}") from None
    entries = generate_all(gen, run.cfg, gallery_sources(run), progress=True)
    write_gallery(run.out, entries, run.cfg.fps, title=f"vidlm demo — {model}")
    return {"model": str(model), "entries": len(entries)}


STAGE_FNS = {"data": stage_data, "text": stage_text, "tokenizer": stage_tokenizer, "tokens": stage_tokens,
             "images": stage_images, "image_lm": stage_image_lm, "lm": stage_lm, "prior": stage_prior,
             "gallery": stage_gallery}


# ----------------------------------------------------------------------------- gallery sources
def gallery_sources(run: Run) -> list[tuple]:
    """Clips [(video (C,T,H,W), caption)] the gallery conditions on: held-out shapes-world clips
    (one object, no bar), or the user's clips with --videos."""
    c = run.cfg
    if not run.args.videos:
        from vidlm.evaluate import heldout_clips

        w, h = c.size
        return [(v, cap) for v, cap, _ in heldout_clips(9, 0, width=w, height=h, frames=c.frames, fps=c.fps)]
    from vidlm.data.buckets import Bucket, resize_crop
    from vidlm.data.shards import find_videos, load_captions
    from vidlm.data.video import VideoDecodeError, read_clip

    captions = load_captions(run.args.captions) if run.args.captions else {}
    w, h = c.size
    out = []
    for path in find_videos(run.args.videos):
        try:
            clip = read_clip(path, c.frames, fps=c.fps, short="pad")
        except VideoDecodeError:
            continue
        out.append((resize_crop(clip, Bucket(width=w, height=h, frames=c.frames)), captions.get(path.name, "")))
    if not out:
        raise SystemExit(f"demo: no readable video in {run.args.videos}")
    return [out[i % len(out)] for i in range(9)]


# ----------------------------------------------------------------------------- shipping
def shown(path: Path) -> str:
    """`path` as a record the repository keeps (shipped info.json, docs/scaling*/scaling.json)
    names it: relative to the working folder, or its name where it lies outside (no record
    carries a path of the machine that made it)."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else path.name


def ship(run: Run, dest: Path, *, recipe: Path) -> Path:
    """Copy OUT/model to `dest` as shipped weights: the LM's weights (and its frame prior's) stored
    as float16 (loading casts them back to float32; this halves the download), everything else
    as is, plus dest/info.json saying how they were made."""
    from safetensors.torch import load_file, save_file

    for part in ("tokenizer", "text", "lm"):
        if not (run.model / part).is_dir():
            raise SystemExit(f"demo: {run.model / part} is missing; run the demo to the end first")
    tmp = Path(str(dest) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run.model, tmp)
    for weights in (tmp / "lm" / "model.safetensors", tmp / "lm" / "prior.safetensors"):  # the LM, its frame prior
        if weights.is_file():
            state = load_file(str(weights))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    stages = {n: run.seconds(n) for n in STAGES if run.done(n)}
    home = RECIPES.resolve().parent
    rel = recipe.resolve().relative_to(home) if recipe.resolve().is_relative_to(home) else Path(shown(recipe))
    info = {"made_by": f"vidlm demo --recipe {rel} --out {shown(run.out)} --ship {shown(dest)}", "recipe": str(rel),
            "stage_seconds": stages, "lm_weights_dtype": "float16",
            "bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())}
    (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    print(f"shipped {run.model} -> {dest} ({info['bytes'] / 2**20:.1f} MiB)")
    return dest


# ----------------------------------------------------------------------------- CLI
def resolve_recipe(name: str) -> Path:
    """A recipe name (recipes/demo/NAME.yaml) or a path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SystemExit(f"demo: recipe {path} not found")
        return path
    path = RECIPES / "demo" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (RECIPES / "demo").glob("*.yaml"))
        raise SystemExit(f"demo: no recipe named {name!r}; known: {known}, or pass a YAML path")
    return path


def check_same_recipe(run: Run, recipe: Path) -> None:
    """OUT/recipe.yaml records what the run was made with; finished stages of another recipe (or
    other --videos) are not silently reused."""
    from vidlm.config import to_dict

    record = {"recipe": str(recipe), "config": to_dict(run.cfg), "videos": run.args.videos,
              "captions": run.args.captions, "pretrained": run.args.pretrained}
    path = run.out / "recipe.json"
    if path.is_file():
        made = json.loads(path.read_text())
        made["config"] = {**to_dict(DemoConfig()), **made["config"]}  # a key added since: its default ran
        if json.loads(json.dumps(made)) != json.loads(json.dumps(record)):
            raise SystemExit(f"demo: {run.out} was made with other settings ({path}); pass another --out, "
                             f"or delete {run.out} to start over")
    run.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidlm demo", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo, "
                   "runs/demo-pretrained with --pretrained, runs/demo-real with --videos)")
    p.add_argument("--pretrained", action="store_true", help="skip training: gallery of the shipped shapes-demo weights")
    p.add_argument("--videos", nargs="+", metavar="DIR", help="train on these video files/folders instead of the shapes world")
    p.add_argument("--captions", metavar="FILE", help='captions JSONL {"file": NAME, "caption": TEXT} for --videos')
    p.add_argument("--fast", action="store_true", help="shorter training (recipe `fast`): a rough model in ~5 minutes")
    p.add_argument("--recipe", help="demo recipe: a name in recipes/demo/ (shapes, fast, real-cpu, debug) or a YAML path")
    p.add_argument("--redo", choices=STAGES, help="forget this stage and the ones after it (a trained "
                   "stage: its run folder and fitted steps too), then run them again")
    p.add_argument("--ship", type=Path, metavar="DIR", help="at the end, copy the model to DIR as shipped "
                   "weights (how vidlm/weights/shapes-demo is made)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.captions and not args.videos:
        raise SystemExit("demo: --captions goes with --videos")
    recipe = resolve_recipe(args.recipe or ("fast" if args.fast else "real-cpu" if args.videos else "shapes"))
    cfg = load_config(recipe)
    if args.videos and cfg.images:
        raise SystemExit(f"demo: recipe {recipe} trains an image LM on synthesized shapes-world images "
                         "(`images`), not on your videos; use a recipe without `images` with --videos")
    out = args.out or Path("runs") / ("demo-pretrained" if args.pretrained else "demo-real" if args.videos else "demo")
    run = Run(out, cfg, args)
    check_same_recipe(run, recipe)
    check_recipe_frames(cfg)
    if args.redo:
        for name in STAGES[STAGES.index(args.redo):]:
            run.forget(name)
    stages = ["gallery"] if args.pretrained else run_stages(cfg)
    print(f"vidlm demo: recipe {recipe}, output {out}")
    started = time.time()
    for i, name in enumerate(stages, 1):
        if run.done(name):
            print(f"[{i}/{len(stages)}] {name}: finished before ({run.seconds(name):.0f} s), skipped")
            continue
        print(f"[{i}/{len(stages)}] {name}", flush=True)
        t0 = time.time()
        info = STAGE_FNS[name](run)
        run.finish(name, time.time() - t0, **info)
        print(f"[{i}/{len(stages)}] {name}: {time.time() - t0:.0f} s", flush=True)
    print("\nstage times (s): " + ", ".join(f"{n} {run.seconds(n):.0f}" for n in stages)
          + f"; this run {time.time() - started:.0f} s")
    print(f"gallery: {out / 'index.html'}  contact sheet: {out / 'contact_sheet.png'}")
    if args.ship and not args.pretrained:
        ship(run, args.ship, recipe=recipe)
    if not args.pretrained:
        print(f"model: {run.model}  (vidlm generate TASK --model {run.model} ...; "
              f"vidlm eval world --model {run.model})")
    return 0


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm demo"))
