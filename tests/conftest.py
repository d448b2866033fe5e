from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real clips live beside a developer's checkout (never committed); a user's clone has none.
REAL_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("real clips not found at ../shared/data/real (only in the team's checkout)")
    return REAL_DATA


@pytest.fixture(scope="session")
def debug_model_dir(tmp_path_factory) -> Path:
    """A model folder (tokenizer/ text/ lm/) with the debug presets' random weights, seed 0."""
    import torch

    from vidlm.pipeline import VideoGenerator

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("debug-model")
    VideoGenerator.random("debug", tokenizer="debug").save_pretrained(root)
    return root


def two_level_config():
    """The debug tokenizer with two-level codes (refine_rows 2): a code per 8x8-pixel cell and two
    rows of finer codes for the chosen cells; at 16x16 pixels a 2x2 grid and one cell's 2x2 fine codes."""
    from vidlm.tokenizer.config import TokenizerConfig

    return TokenizerConfig.from_name("debug", patch=2, spatial_factor=8, latent_dim=8, refine_rows=2)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def child_env(**extra) -> dict:
    """The environment of a run started as a user starts it: this venv's python first on PATH,
    and none of this process's distributed variables (once a test has called init_distributed,
    they describe this process's group, not the child's)."""
    import os
    import sys

    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHON=sys.executable, DEEPSPEED=str(venv_bin / "deepspeed"), PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}")
    return {**env, **extra}


def launch(entry: str, config, *args, nproc: int = 1, env: dict | None = None, timeout: int = 300):
    """`recipes/launch/cpu.sh ENTRY CONFIG ARGS...` as a user runs it: one plain process, or
    `nproc` CPU ranks under the deepspeed launcher. Returns the CompletedProcess (not checked)."""
    import subprocess

    full = child_env(NPROC=str(nproc), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(["bash", REPO / "recipes/launch/cpu.sh", entry, str(config), *map(str, args)],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout, check=False)
