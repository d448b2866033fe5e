"""The training runtime: exact resume (ZeRO 0-3, 1 and 2 ranks), crash-safe checkpoints,
the non-finite guard, DeepSpeed config checks, EMA and the run logger."""

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import runtime_worker as toy
import torch
from conftest import launch

from vidlm import checkpoint as ckpt
from vidlm import runtime as rt

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "recipes" / "launch"
STEPS, RESUME_AT = 5, 2
# DeepSpeed 0.19 calls torch collectives by deprecated names (init_distributed silences these
# outside pytest, which resets warning filters per test).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.distributed.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def dist():
    torch.set_num_threads(1)
    return rt.init_distributed()


def test_init_distributed_single_process(dist):
    assert (dist.rank, dist.world_size, dist.local_rank, dist.is_main) == (0, 1, 0, True)
    assert dist.device == torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert torch.distributed.get_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    assert rt.init_distributed() == dist  # idempotent
    assert "MASTER_PORT" not in os.environ  # no port: two runs started together once raced for one
    if not torch.cuda.is_available():  # the shm comm op was never built
        from deepspeed.comm import comm

        assert comm.cdb.shm_comm_op is None


@pytest.mark.parametrize(("stage", "precision"), [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"),
                                                (2, "bf16")])
def test_exact_resume_single_process(dist, tmp_path, stage, precision):
    straight = toy.run_straight(stage, dist, tmp_path, STEPS, RESUME_AT, precision)
    at, resumed = toy.run_resumed(stage, dist, tmp_path, STEPS, precision)
    assert at == RESUME_AT
    assert resumed == straight[RESUME_AT:]  # bitwise: float equality of every loss
    assert (tmp_path / "latest").read_text().strip() == f"step-{RESUME_AT}"
    assert {p.name for p in (tmp_path / f"step-{RESUME_AT}").iterdir()} >= {"gen", "disc", "rank-0.pt", "meta.json"}


def test_half_written_checkpoint_is_ignored(dist, tmp_path):
    straight = toy.run_straight(1, dist, tmp_path, STEPS, RESUME_AT)
    # A crash in the middle of saving step 4: its dir exists, partly written; latest untouched.
    partial = tmp_path / "step-4"
    (partial / "gen").mkdir(parents=True)
    (partial / "gen" / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 truncated")
    (partial / "rank-0.pt").write_bytes(b"")
    at, resumed = toy.run_resumed(1, dist, tmp_path, STEPS)
    assert at == RESUME_AT and resumed == straight[RESUME_AT:]
    # Saving step 4 again replaces the stale dir whole, then moves latest.
    engines, ema = toy.build(1, dist)
    ckpt.save_checkpoint(tmp_path, 4, engines, toy.client_state(4, ema))
    assert (tmp_path / "latest").read_text().strip() == "step-4"
    assert (partial / "gen" / "mp_rank_00_model_states.pt").stat().st_size > 100


def test_fresh_run_and_untrusted_latest(dist, tmp_path):
    engines, _ = toy.build(1, dist)
    assert ckpt.load_checkpoint(tmp_path, engines) is None  # no latest: fresh run
    assert ckpt.load_checkpoint(tmp_path / "missing", engines) is None
    outside = tmp_path.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    for tag in ("../elsewhere", "/etc", "step-x", "step-7"):  # outside, absolute, malformed, absent
        (tmp_path / "latest").write_text(tag)
        with pytest.raises(RuntimeError, match="not a step-N dir inside"):
            ckpt.load_checkpoint(tmp_path, engines)


def test_checkpoint_refuses_bad_state(dist, tmp_path):
    engines, _ = toy.build(1, dist)
    with pytest.raises(TypeError, match=r"client_state\['loader'\] is a PosixPath"):
        ckpt.save_checkpoint(tmp_path, 0, engines, {"loader": Path("x")})
    engines["gen"].micro_steps = 1  # mid-accumulation (ACCUM = 2)
    with pytest.raises(RuntimeError, match="gradient accumulation window"):
        ckpt.save_checkpoint(tmp_path, 0, engines, {})
    engines["gen"].micro_steps = 0
    ckpt.save_checkpoint(tmp_path, 0, engines, {"step": 0})
    with pytest.raises(RuntimeError, match=r"holds engines \['disc', 'gen'\]"):
        ckpt.load_checkpoint(tmp_path, {"gen": engines["gen"]})
    assert not list(tmp_path.glob(".latest.tmp*"))


def test_keep_last(dist, tmp_path):
    engines, _ = toy.build(0, dist)
    for step in range(4):
        ckpt.save_checkpoint(tmp_path, step, engines, {"step": step}, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-2", "step-3"]
    assert ckpt.load_checkpoint(tmp_path, engines) == {"step": 3}


def test_non_finite_guard(dist):
    guard = rt.NonFiniteGuard(limit=2)
    assert guard.guard(torch.tensor(1.5)) and guard.skipped == 0
    assert not guard.guard(torch.tensor(float("nan")))
    assert not guard.guard(torch.tensor([1.0, float("inf")]))
    assert guard.skipped == 2 and guard.guard(torch.tensor(0.0))
    with pytest.raises(rt.NonFiniteLossError, match="3 steps skipped, more than the limit of 2"):
        guard.guard(torch.tensor(float("nan")), step=17)
    again = rt.NonFiniteGuard(limit=2)
    again.load_state_dict(guard.state_dict())
    assert again.skipped == 3


def _write(tmp_path, obj, name="ds.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_deepspeed_config(tmp_path):
    kw = {"micro_batch_size": 4, "grad_accum": 2, "grad_clip": 1.0, "world_size": 3}
    for stage in range(4):  # every recipe JSON validates
        cfg = rt.deepspeed_config(REPO / f"recipes/deepspeed/zero{stage}.json", precision="fp32", **kw)
        assert cfg["zero_optimization"]["stage"] == stage
        assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"],
                cfg["train_batch_size"], cfg["gradient_clipping"]) == (4, 2, 24, 1.0)
        assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False
    with warnings.catch_warnings():  # bf16 warns on a CPU without it (test_precision_auto)
        warnings.simplefilter("ignore")
        assert rt.deepspeed_config(None, precision="bf16", **kw)["bf16"]["enabled"] is True
    refused = {
        "train_batch_size": {"train_batch_size": 32},
        "set micro_batch_size": {"train_micro_batch_size_per_gpu": 2},
        "gradient_clipping": {"gradient_clipping": 0.5},
        "bf16.enabled=True": {"bf16": {"enabled": True}},
        "not valid JSON": "{stage: 1",
        "must be a JSON object": "[1, 2]",
    }
    for message, content in refused.items():
        with pytest.raises(ValueError, match=message):
            rt.deepspeed_config(_write(tmp_path, content), precision="fp32", **kw)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rt.deepspeed_config(tmp_path / "nope.json", precision="fp32", **kw)
    with pytest.raises(ValueError, match="precision"):
        rt.deepspeed_config(None, precision="fp8", **kw)
    if not torch.cuda.is_available():
        fp16 = _write(tmp_path, {"fp16": {"enabled": True}})
        for path, precision in ((fp16, "fp16"), (None, "fp16")):
            with pytest.raises(ValueError, match="fp16 is not supported by DeepSpeed on CPU"):
                rt.deepspeed_config(path, precision=precision, **kw)


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto(monkeypatch, native):
    """"auto" trains in bf16 only where the hardware has it; an explicit bf16 without it warns."""
    monkeypatch.setattr(rt, "native_bf16", lambda: native)
    kw = {"micro_batch_size": 1, "grad_accum": 1, "grad_clip": 1.0, "world_size": 1}
    assert rt.deepspeed_config(None, precision="auto", **kw)["bf16"]["enabled"] is native
    assert rt.resolve_precision("fp32") == "fp32"
    if native:
        assert rt.resolve_precision("bf16") == "bf16"
    else:
        with pytest.warns(UserWarning, match="torch emulates it"):
            assert rt.resolve_precision("bf16") == "bf16"


def test_add_launcher_args():
    import argparse

    parser = rt.add_launcher_args(argparse.ArgumentParser())
    args = parser.parse_args(["--local_rank=1", "--deepspeed", "recipes/deepspeed/zero2.json"])
    assert (args.local_rank, args.deepspeed) == (1, "recipes/deepspeed/zero2.json")
    assert parser.parse_args([]).local_rank is None


def test_ema(dist):
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = rt.EMA(net, decay=0.75)
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(4.0)
    net(torch.randn(5, 3))  # moves the BatchNorm running stats (buffers are copied)
    ema.update()
    torch.testing.assert_close(ema.shadow["0.weight"], 0.75 * before + 0.25 * (before + 4.0))
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema2 = rt.EMA(other, decay=0.5)
    ema2.load_state_dict(ema.state_dict())
    ema2.copy_to(other)
    assert torch.equal(other[0].weight, ema.shadow["0.weight"])
    assert torch.equal(other[1].running_mean, net[1].running_mean)
    engines, _ = toy.build(3, dist)
    with pytest.raises(RuntimeError, match="partitioned by ZeRO-3"):
        rt.EMA(engines["gen"].module)


def test_run_logger(dist, tmp_path):
    log = rt.RunLogger(tmp_path, total_steps=10, dist=dist, start_step=2, desc="toy")
    log.log(3, {"loss": torch.tensor(1.25), "lr": 1e-3})
    log.log(4, {"loss": float("nan")})
    log.image("img", 4, torch.rand(3, 8, 8) * 2 - 1)
    log.video("clip", 4, torch.rand(3, 5, 8, 8) * 2 - 1)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 3 and rows[0]["loss"] == 1.25 and rows[1]["loss"] == "nan"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    quiet = rt.RunLogger(tmp_path / "r1", 10, rt.Dist(rank=1, world_size=2, local_rank=1,
                                                       device=torch.device("cpu")))
    quiet.log(1, {"loss": 1.0})
    assert not (tmp_path / "r1").exists()


def test_progress_bars_write_plain_lines_where_stderr_is_not_a_terminal(capsys):
    import io

    from vidlm.logging import progress_bar

    out = io.StringIO()  # a log file, CI, nohup: not a terminal
    for _ in progress_bar(range(5000), file=out, desc="work", unit="it"):
        pass
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) <= 3 and "work" in lines[-1] and "5000/5000" in lines[-1]
    # every command's bars go through it: a generation logged to a file stays a few lines
    from vidlm.pipeline import VideoGenerator

    VideoGenerator.random("debug", tokenizer="debug").t2v("a red circle", frames=5, size=(16, 16), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and 0 < len(err.splitlines()) <= 3


def test_launch_scripts():
    for script in ("cpu.sh", "1gpu.sh", "8gpu.sh", "multinode.sh"):
        subprocess.run(["bash", "-n", LAUNCH / script], check=True)
        usage = subprocess.run(["bash", LAUNCH / script], capture_output=True, text=True, check=False)
        assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.slow
def test_exact_resume_two_ranks_deepspeed_launcher(tmp_path):
    """One `deepspeed` launch (via recipes/launch/cpu.sh, NPROC=2) checks ZeRO 1, 2 and 3."""
    if torch.cuda.is_available():
        pytest.skip("CPU-rank launch test")
    job = {"out": str(tmp_path / "result.json"), "run_root": str(tmp_path / "runs"),
           "stages": [1, 2, 3], "steps": STEPS, "resume_at": RESUME_AT}
    (tmp_path / "job.json").write_text(json.dumps(job))
    shm_before = _deepspeed_shm_files()
    proc = launch("tests.runtime_worker", tmp_path / "job.json", nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    for stage in ("1", "2", "3"):
        r = result[stage]
        assert r["resumed_at"] == RESUME_AT and len(r["resumed"]) == STEPS - RESUME_AT
        assert r["resumed"] == r["straight"], f"ZeRO-{stage}"
        assert r["rank_losses_differ"], "both ranks saw the same data: not a real 2-rank run"
    assert _deepspeed_shm_files() - shm_before == set()  # no shm comm op, no /dev/shm leftovers


def _deepspeed_shm_files() -> set:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("deepspeed_allreduce_buffer*")} if shm.is_dir() else set()
