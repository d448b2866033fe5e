"""Faults a training run survives, in one place: each test injects one fault into a real run
(debug presets, CPU, DeepSpeed as in training) and checks that nothing is lost.

Elsewhere: a half-written checkpoint is never loaded (tests/test_runtime.py), bad samples are
skipped and counted (tests/test_data.py), bad input answers in one line (tests/test_errors.py).
"""

from __future__ import annotations

import errno
import json
import math
import os

import pytest
import torch
import yaml
from conftest import launch
from test_lm_train import REPO, debug_cfg, synth_tokens


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return synth_tokens(tmp_path_factory.mktemp("faults") / "tokens")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from vidlm.data.synthetic import synth_shards

    out = tmp_path_factory.mktemp("shards")
    synth_shards(out, 4, seed=0, width=32, height=32, frames=9)
    return out


@pytest.fixture(scope="module")
def dist():
    from vidlm import runtime as rt

    return rt.init_distributed()


def poison(monkeypatch, cursors: set[int]):
    """Make the LM's loss NaN on the micro-batches that start at these stream positions (a pure
    function of the data position, so a resumed run meets the same fault)."""
    import vidlm.lm.train as lt

    micro_batch, token_losses = lt.micro_batch, lt.token_losses

    def poisoned_batch(stream, cursor, rows, row_len):
        batch, nxt = micro_batch(stream, cursor, rows, row_len)
        batch["poison"] = cursor in cursors
        return batch, nxt

    def poisoned_losses(model, batch, device):
        ce, mask = token_losses(model, batch, device)
        return (ce * float("nan") if batch.get("poison") else ce), mask

    monkeypatch.setattr(lt, "micro_batch", poisoned_batch)
    monkeypatch.setattr(lt, "token_losses", poisoned_losses)


def cursors_of(cfg, tokens, n: int) -> list[int]:
    """The stream positions of the first n micro-batches of a one-rank run."""
    from vidlm.lm.stream import TaskStream, load_data, micro_batch

    train, _, vocab = load_data(cfg, str(tokens))
    stream = TaskStream(train, vocab, cfg.data, seed=cfg.seed, rank=0, world=1, row_len=cfg.row_len)
    out, cursor = [], 0
    for _ in range(n):
        out.append(cursor)
        _, cursor = micro_batch(stream, cursor, cfg.micro_batch_size, cfg.row_len)
    return out


@pytest.mark.parametrize("stage", [0, 2])
def test_a_nan_micro_batch_under_grad_accumulation(dist, tokens, tmp_path, monkeypatch, stage):
    # Before: the skipped micro-batch skipped engine.step too, the accumulation window shifted
    # by one, and the next save_checkpoint raised "in the middle of a gradient accumulation window".
    from vidlm.lm.train import main

    from vidlm.runtime import NonFiniteLossError

    cfg = debug_cfg(steps=6, grad_accum=2, ckpt_every=2)
    bad = cursors_of(cfg, tokens, 12)[5]  # the second micro-batch of step 3 (steps count from 1)
    poison(monkeypatch, {bad})
    ds = str(REPO / f"recipes/deepspeed/zero{stage}.json")
    straight = main(cfg, run_dir=str(tmp_path / "straight"), data=str(tokens), deepspeed=ds)
    assert straight["last"]["skipped_steps"] == 1 and all(math.isfinite(v) for v in straight["losses"])
    assert (tmp_path / "straight" / "step-6").is_dir()  # checkpoints after the fault saved
    main(cfg, run_dir=str(tmp_path / "resumed"), data=str(tokens), deepspeed=ds, stop_at=2)
    resumed = main(cfg, run_dir=str(tmp_path / "resumed"), data=str(tokens), deepspeed=ds)
    assert resumed["first_step"] == 2 and resumed["losses"] == straight["losses"][2:]
    assert resumed["last"]["skipped_steps"] == 1
    # more faults than the limit stop the run with its message
    strict = debug_cfg(steps=6, grad_accum=2, ckpt_every=2, nonfinite_limit=0)
    with pytest.raises(NonFiniteLossError, match="more than the limit of 0"):
        main(strict, run_dir=str(tmp_path / "strict"), data=str(tokens), deepspeed=ds)


def test_a_skipped_micro_batch_adds_nothing_to_the_step(dist, tokens, tmp_path, monkeypatch):
    # Two micro-batches per step, the second poisoned: the step's update is the first one's alone.
    # Checked against a run whose second micro-batch has a zero loss by construction.
    from vidlm.lm.train import main

    cfg = debug_cfg(steps=1, grad_accum=2, ckpt_every=1)
    _, second = cursors_of(cfg, tokens, 2)
    poison(monkeypatch, {second})
    main(cfg, run_dir=str(tmp_path / "a"), data=str(tokens))

    import vidlm.lm.train as lt

    token_losses = lt.token_losses

    def zero_second(model, batch, device):
        ce, mask = token_losses(model, batch, device)
        return (ce * 0.0 if batch.get("poison") else ce), mask

    monkeypatch.setattr(lt, "token_losses", zero_second)
    main(cfg, run_dir=str(tmp_path / "b"), data=str(tokens))
    a = torch.load(next((tmp_path / "a" / "step-1" / "model").glob("*model_states.pt")), weights_only=True)["module"]
    b = torch.load(next((tmp_path / "b" / "step-1" / "model").glob("*model_states.pt")), weights_only=True)["module"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_resume_with_another_zero_stage_is_refused_before_any_step(dist, tokens, tmp_path, capsys):
    import yaml

    from vidlm.cli import main as vidlm

    cfg = tmp_path / "lm.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "debug", "steps": 4, "seq_len": 128, "threads": 1}))
    run = tmp_path / "run"
    zero = lambda n: str(REPO / f"recipes/deepspeed/zero{n}.json")
    argv = ["lm", "train", "--config", str(cfg), "--data", str(tokens), "--run", str(run)]
    assert vidlm([*argv, "--deepspeed", zero(1), "--stop-at", "2"]) == 0
    metrics = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert vidlm([*argv, "--deepspeed", zero(2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved with ZeRO stage 1, this run uses stage 2" in err[0]
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "latest").read_text().strip() == "step-2"


# ----------------------------------------------------------------------------- kill -9 mid-save
def step_losses(run) -> dict:
    """{step: its losses} from metrics.jsonl; a step logged twice (redone after a resume) keeps
    its last row, so a resumed run reads as one run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if "loss" in k} for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("stage", ["tokenizer", "lm"])
def test_kill_9_in_the_middle_of_a_save_resumes_exactly(stage, nproc, shards, tokens, tmp_path):
    # A rank dies (SIGKILL) after it wrote the first file of step-4, before `latest` moved: the
    # restarted run resumes from step-2 and its losses equal an uninterrupted run's, bit for bit.
    if torch.cuda.is_available():
        pytest.skip("CPU-rank launch test")
    recipe = yaml.safe_load((REPO / f"recipes/{stage}/debug.yaml").read_text())
    recipe.update(steps=6, ckpt_every=2, log_every=1, val_every=100, threads=1)
    if stage == "lm":
        recipe.update(seq_len=128)
    else:
        recipe["loss"]["disc_start"] = 2  # the GAN, its engine and LeCAM are in the checkpoint
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    data = tokens if stage == "lm" else shards
    args = ["--data", data, "--deepspeed", REPO / "recipes/deepspeed/zero2.json"]
    train = lambda run, **env: launch(f"tests.fault_worker {stage}", cfg, *args, "--run", run, nproc=nproc, env=env)

    killed = train(tmp_path / "run", KILL_AT_SAVE="step-4", KILL_RANK=str(nproc - 1))
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert (tmp_path / "run" / "latest").read_text().strip() == "step-2"
    assert (tmp_path / "run" / "step-4").is_dir()  # half written, never loaded
    if nproc == 1:  # another world size is refused in one line before any step
        other = launch(f"vidlm.{stage}.cli train", cfg, *args, "--run", tmp_path / "run", nproc=2)
        assert other.returncode != 0 and "was saved by 1 ranks, this job has 2" in other.stderr
        assert max(step_losses(tmp_path / "run")) == 4
    for run in ("run", "straight"):
        done = train(tmp_path / run)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed, straight = step_losses(tmp_path / "run"), step_losses(tmp_path / "straight")
    assert sorted(straight) == list(range(1, 7)) and resumed == straight
    meta = json.loads((tmp_path / "run" / "step-6" / "meta.json").read_text())
    assert meta["world_size"] == nproc and meta["engines"] == (["model"] if stage == "lm" else ["discriminator", "generator"])
    assert {p.name for p in (tmp_path / "run" / "step-6").iterdir()} >= {f"rank-{r}.pt" for r in range(nproc)}


def test_a_full_disk_during_a_save(dist, tokens, tmp_path, monkeypatch):
    # The disk fills up while step-4 is written: the run stops with one clear message, `latest`
    # still names step-2, and once there is space again the same command resumes from it.
    from vidlm.lm.train import main

    from vidlm.checkpoint import CheckpointError

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if f"{os.sep}step-4{os.sep}" in str(f):
            with open(f, "wb") as out:
                out.write(b"\0" * 64)  # what fitted
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    cfg, run = debug_cfg(steps=6, ckpt_every=2), tmp_path / "run"
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left on device.*'latest' still names step-2.*same --run"):
        main(cfg, run_dir=str(run), data=str(tokens))
    assert (run / "latest").read_text().strip() == "step-2"
    monkeypatch.setattr(torch, "save", real_save)
    resumed = main(cfg, run_dir=str(run), data=str(tokens))
    straight = main(cfg, run_dir=str(tmp_path / "straight"), data=str(tokens))
    assert resumed["first_step"] == 2 and resumed["losses"] == straight["losses"][2:]


# ----------------------------------------------------------------------------- data
def members(shard) -> list:
    import tarfile

    with tarfile.open(shard) as tar:
        return tar.getmembers()


def damage(overwritten, truncated) -> set[str]:
    """Garbage over the start of the 3rd video of one shard; the other cut inside its 6th video.
    Returns the keys of the samples that are no longer whole."""
    def videos(p):
        return [m for m in members(p) if m.name.endswith(".mp4")]

    bad, cut = videos(overwritten)[2:3], videos(truncated)[5:]
    with open(overwritten, "r+b") as f:
        f.seek(bad[0].offset_data)
        f.write(b"\xff" * 256)
    os.truncate(truncated, cut[0].offset_data + cut[0].size // 2)
    return {m.name.split(".")[0] for m in bad + cut}


def test_shards_damaged_in_the_middle_of_an_epoch(tmp_path):
    # Three shards; after the first batch, the two unread ones are damaged. The epoch runs to its
    # end, the damaged samples are skipped and counted by reason, and no good sample is lost.
    from vidlm.data.loader import LoaderConfig, VideoLoader
    from vidlm.data.synthetic import synth_shards

    synth_shards(tmp_path, 24, seed=3, shard_size=8)
    shards = sorted(tmp_path.glob("*.tar"))
    shard_of = {m.name.split(".")[0]: p for p in shards for m in members(p)}
    it = iter(loader := VideoLoader(tmp_path, LoaderConfig(batch_size=1, shuffle_buffer=1)))
    seen = next(it)["key"]
    lost = damage(*[p for p in shards if p != shard_of[seen[0]]])
    seen += [k for batch in it for k in batch["key"]]
    assert sorted(seen) == sorted(set(shard_of) - lost)  # every whole sample, each once
    # the overwritten video does not decode; the cut video's sample arrives without it, and
    # webdataset's tar reader reports the cut (twice: the member, then the stream)
    assert loader.counts == {"unreadable": 1, "no_video": 1, "bad_tar": 2}, loader.counts


def test_a_tokenizer_run_whose_shards_are_damaged_while_it_trains(dist, tmp_path, monkeypatch):
    import dataclasses

    import vidlm.data.loader as dl
    from vidlm.data.synthetic import synth_shards
    from vidlm.tokenizer import train as tt

    from vidlm.config import load_yaml

    synth_shards(tmp_path / "shards", 24, seed=3, shard_size=8, width=32, height=32, frames=9)
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    done = []

    class DamagedAfterOneBatch(dl.VideoLoader):
        def __iter__(self):
            for batch in super().__iter__():
                yield batch
                if not done:
                    done.append(damage(*shards[1:]))

    monkeypatch.setattr(dl, "VideoLoader", DamagedAfterOneBatch)
    cfg = dataclasses.replace(load_yaml(tt.TrainConfig, REPO / "recipes/tokenizer/debug.yaml"), steps=12,
                              log_every=4, val_every=100, ckpt_every=100)
    last = tt.main(cfg, run_dir=str(tmp_path / "run"), data=str(tmp_path / "shards"))
    assert done and last["step"] == 12 and last["skipped_samples"] > 0  # counted, and the run finished
