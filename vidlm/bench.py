"""usage: vidlm bench NAME [options]   (runs bench/NAME.py of a source checkout)

examples:
    vidlm bench data --real ../shared/data/real   loader clips/s, decord vs PyAV
    vidlm bench tokenizer                         encode/decode frames/s, memory, GFLOP/s
    vidlm bench lm                                VideoLM vs Hugging Face Llama: train, prefill, decode
    vidlm bench lm --model shapes-demo --out r.json   ... and speculative decoding on trained weights
    vidlm bench tokens                            LM token data: in RAM vs the flat store, 1k-100k clips

The benchmarks live in the repository (bench/), not in the installed package: they compare
against peers (Hugging Face transformers, PyAV) that a user of vidlm does not need.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py")) if BENCH.is_dir() else []


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + f"\n\navailable here: {', '.join(names) or 'none'} "
              "(`vidlm bench NAME --help` for each)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        where = f"in {BENCH}" if BENCH.is_dir() else f"({BENCH} is missing: run from a clone of the repository)"
        print(f"vidlm bench: no benchmark {name!r} {where}; available: {names}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [str(BENCH / f"{name}.py"), *rest]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:  # the benchmark's own argparse / exit code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
