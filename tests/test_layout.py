"""Package layout: vidlm.data is the repo's data/ folder; the CLI entry points answer --help."""

import importlib
import subprocess
import sys
from pathlib import Path

import vidlm.data

REPO = Path(__file__).resolve().parents[1]


def test_vidlm_data_is_the_repo_folder():
    assert Path(vidlm.data.__file__).resolve().parent == REPO / "data"
    video = importlib.import_module("vidlm.data.video")
    assert Path(video.__file__).resolve() == REPO / "data" / "video.py"


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def test_every_subcommand_answers_help_with_examples():
    from vidlm.cli import COMMANDS

    vidlm = Path(sys.executable).parent / "vidlm"
    assert run(str(vidlm), "--help").returncode == 0
    for name, (module, _) in COMMANDS.items():
        for cmd in ([str(vidlm), name, "--help"], [sys.executable, "-m", module, "--help"]):
            r = run(*cmd)
            assert r.returncode == 0, (cmd, r.stderr)
            assert "usage" in r.stdout.lower() and "examples" in r.stdout.lower(), cmd
    assert "usage" in run(str(vidlm), "data", "synth", "--help").stdout


def test_import_is_cheap():
    code = "import sys, vidlm.data.video, vidlm.data.loader; print('decord' in sys.modules, 'av' in sys.modules)"
    r = run(sys.executable, "-c", code)
    assert r.stdout.split() == ["False", "False"]
