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


LAYERS = {  # docs/ARCHITECTURE.md: each layer may import its own and those listed
    "floor": {"floor"},
    "data": {"floor", "data"},
    "tokenizer": {"floor", "data", "tokenizer"},
    "lm": {"floor", "data", "lm"},
    "join": {"floor", "data", "tokenizer", "lm", "join"},
    "cli": {"floor", "data", "tokenizer", "lm", "join", "cli"},
}
FLOOR = {"vidlm.errors", "vidlm.config", "vidlm.logging", "vidlm.runtime", "vidlm.checkpoint"}
JOIN = {"vidlm.pipeline", "vidlm.pretokenize", "vidlm.demo", "vidlm.gallery", "vidlm.evaluate"}


def layer(module: str) -> str | None:
    if module in FLOOR:
        return "floor"
    if module in JOIN:
        return "join"
    if module == "vidlm.cli" or module.endswith(".cli") or module in ("vidlm.generate", "vidlm.serve", "vidlm.bench", "vidlm.__main__"):
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("data", "tokenizer", "lm") else None


def library_modules():
    """(module name, path) of every library file, as installed (data/ -> vidlm.data, ...)."""
    for folder, package in (("vidlm", "vidlm"), ("data", "vidlm.data"), ("tokenizer", "vidlm.tokenizer"), ("lm", "vidlm.lm")):
        for path in sorted((REPO / folder).glob("*.py")):
            yield (package if path.stem == "__init__" else f"{package}.{path.stem}"), path


def imports_of(module: str, path: Path):
    """Every vidlm module `path` imports, at the top or inside a function."""
    import ast

    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("vidlm"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base == "vidlm":  # from vidlm import runtime
                yield from (f"vidlm.{a.name}" for a in node.names)
            elif base.startswith("vidlm"):
                yield base


def test_imports_run_one_way():
    wrong = []
    for module, path in library_modules():
        mine = layer(module)
        if mine is None:
            continue
        for target in imports_of(module, path):
            theirs = layer(target)
            if theirs is not None and theirs not in LAYERS[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)
    assert {layer(m) for m, _ in library_modules()} >= set(LAYERS)
