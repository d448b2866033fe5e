"""bench/gpu_check.sh: its plumbing on the CPU (GPU_CHECK_CPU=1), the whole check on a GPU."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_check(tmp_path, **env):
    from conftest import child_env

    return subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), str(tmp_path)], cwd=REPO, env=child_env(**env),
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_gpu_check_plumbing_on_the_cpu(tmp_path):
    r = run_check(tmp_path, GPU_CHECK_CPU="1", OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout[r.stdout.index("| check | result |"):]
    for row in ("| tokenizer | trained to step 4, resumed to step 8", "| lm | trained to step 4, resumed to step 8",
                "| decode debug", "| decode debug compiled", "| training step debug", "| packed rows, sdpa"):
        assert row in table, table


@pytest.mark.slow
def test_gpu_check_runs_every_part_and_fails_loudly(tmp_path):
    """A part that fails (here both stages: two ranks and no deepspeed launcher) is a FAILED row
    with its log's tail on stderr; the parts after it still run; the exit status is 1."""
    r = run_check(tmp_path, GPU_CHECK_CPU="1", OMP_NUM_THREADS="1", NPROC="2", DEEPSPEED="false")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| tokenizer | FAILED" in r.stdout and "| lm | FAILED" in r.stdout, r.stdout
    assert "| training step debug (fp32) |" in r.stdout and "| training step debug (fp32) | FAILED" not in r.stdout
    assert "part 'tokenizer' failed" in r.stderr and "gpu_check: FAILED: tokenizer lm" in r.stderr, r.stderr


@pytest.mark.gpu
def test_gpu_check(tmp_path):
    r = run_check(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| flash vs SDPA |" in r.stdout and "MFU" in r.stdout
