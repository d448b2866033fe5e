"""Faults a training run survives, in one place: each test injects one fault into a real run
(debug presets, CPU, DeepSpeed as in training) and checks that nothing is lost.

Elsewhere: a half-written checkpoint is never loaded (tests/test_runtime.py), bad samples are
skipped and counted (tests/test_data.py), bad input answers in one line (tests/test_errors.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_lm_train import REPO, debug_cfg, synth_tokens


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return synth_tokens(tmp_path_factory.mktemp("faults") / "tokens")


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
    from vidlm.lm.train import TaskStream, load_data, micro_batch

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
    first, second = cursors_of(cfg, tokens, 2)
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
