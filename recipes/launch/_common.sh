# Shared by the launch scripts (sourced, not run). Usage of every script:
#   SCRIPT "ENTRY" CONFIG [ARGS...]
# ENTRY is the stage's entry module, optionally followed by its subcommand, e.g.
#   "vidlm.lm.cli train" or "vidlm.tokenizer.cli train"; CONFIG is the run YAML; ARGS pass through
#   (e.g. --deepspeed recipes/deepspeed/zero2.json). Environment knobs:
#   PYTHON (python), DEEPSPEED (deepspeed), MASTER_PORT (a free port), DRY_RUN=1 prints the command.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 \"ENTRY_MODULE [SUBCOMMAND]\" CONFIG [ARGS...]" >&2
    echo "  e.g. $0 \"vidlm.lm.cli train\" recipes/lm/demo.yaml --deepspeed recipes/deepspeed/zero2.json" >&2
    exit 2
fi
read -r -a ENTRY <<< "$1"
CONFIG="$2"
shift 2
EXTRA=("$@")
PYTHON="${PYTHON:-python}"
DEEPSPEED="${DEEPSPEED:-deepspeed}"
MASTER_PORT="${MASTER_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"

# The deepspeed launcher would append --local_rank=N right after the module, before a
# subcommand; --no_local_rank keeps argv clean (each rank still gets LOCAL_RANK in its env).
ds_module() {  # ds_module LAUNCHER_ARGS... : run ENTRY under the deepspeed launcher
    run "$DEEPSPEED" "$@" --master_port "$MASTER_PORT" --no_local_rank --module "${ENTRY[0]}" \
        "${ENTRY[@]:1}" --config "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"}
}

run() {
    if [ "${DRY_RUN:-0}" = "1" ]; then
        printf '%q ' "$@"; echo
    else
        exec "$@"
    fi
}
