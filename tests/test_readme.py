"""The README's examples run as written: every ```python block, in order, each in a fresh
namespace, from the repo root; and its two set-up commands are the ones run.sh and .ci/run know."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2, "README.md lost its Python examples"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, monkeypatch, tmp_path):
    if "gradio_client" in BLOCKS[index]:
        pytest.importorskip("gradio_client", reason="the serve extra is not installed (pip install 'vidlm[serve]')")
    monkeypatch.chdir(tmp_path)  # examples write their files here, not into the repo
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})  # noqa: S102 (the README's own examples)


def test_readme_setup_commands_are_what_ci_runs():
    assert "./run.sh demo" in README and "./run.sh test" in README
    assert "./run.sh test" in (REPO / ".ci" / "run").read_text()
