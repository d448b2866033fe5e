#!/usr/bin/env bash
# The two commands of the README, on a fresh clone:
#   ./run.sh demo [vidlm demo options]   end-to-end demo on the embedded shapes world
#   ./run.sh test [pytest options]       the test suite
# Both create (or reuse) a virtual environment in .venv and install what they need.
# VIDLM_VENV overrides where the environment lives.
set -euo pipefail
cd "$(dirname "$0")"
venv=${VIDLM_VENV:-.venv}

setup() {
    local stamp="$venv/.installed"
    if [[ -f $stamp && ! pyproject.toml -nt $stamp && ! constraints.txt -nt $stamp ]]; then
        return
    fi
    echo "vidlm: installing into $venv (CPU build of torch; see README for GPUs)" >&2
    python3 -m venv "$venv"
    local index=()
    # The CPU wheel index keeps pip from pulling a multi-GB CUDA torch where it is reachable.
    if curl -sfI --max-time 5 https://download.pytorch.org/whl/cpu/torch/ >/dev/null 2>&1; then
        index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    "$venv/bin/python" -m pip install -q -c constraints.txt "${index[@]}" -e ".[dev,bench,serve]"
    touch "$stamp"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    demo) setup; exec "$venv/bin/vidlm" demo "$@" ;;
    test) setup; exec "$venv/bin/python" -m pytest "$@" ;;
    setup) setup ;;
    *) echo "usage: ./run.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
