"""The package as a user installs it: `pip install .` (not editable) into a fresh virtual
environment, then `vidlm demo --pretrained` from an empty folder, far from any clone."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "vidlm", "data", "tokenizer", "lm", "recipes")


@pytest.mark.slow
def test_an_installed_vidlm_runs_the_pretrained_demo_from_an_empty_folder(tmp_path):
    if not (REPO / "vidlm" / "weights" / "shapes-demo").is_dir():
        pytest.skip("shipped weights not built")
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies come from this environment (nothing is downloaded); vidlm itself does not
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", src]
    subprocess.run(pip, check=True, capture_output=True)
    shutil.rmtree(src)  # nothing may read the sources any more

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = subprocess.run([py, "-c", "import vidlm, vidlm.demo as d; print(vidlm.__file__, d.RECIPES)"], cwd=empty,
                           check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    run = subprocess.run([venv / "bin" / "vidlm", "demo", "--pretrained", "--out", "demo"], cwd=empty, check=False,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (empty / "demo" / "index.html").is_file() and (empty / "demo" / "contact_sheet.png").is_file()
