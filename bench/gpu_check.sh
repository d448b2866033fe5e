#!/usr/bin/env bash
# One GPU check, for the day a GPU is lent (<= 8 minutes on one GPU):
#   bench/gpu_check.sh [WORKDIR]
# 1. flash-attn against SDPA on the same bf16 inputs (with document masks): outputs agree;
# 2. both stages train in bf16 under ZeRO-2 on one rank (recipes/launch/1gpu.sh), stop at a
#    checkpoint and resume to the end;
# 3. decode tokens/s of the S preset against the memory-bandwidth bound, the S preset's
#    training MFU, the demo LM's step on packed rows with each attention backend (SDPA per
#    document, FlexAttention, flash-attn; gradients agree), and the shipped weights through
#    VideoGenerator: plain and speculative decoding, eager and with CUDA graphs, the same codes
#    from all (bench/gpu_check.py);
# then one table. Every part runs even when an earlier one failed (one GPU session shows every
# fault); a part that does not work is a FAILED row, its log's tail goes to stderr, and the
# script exits 1. Without CUDA it checks nothing and exits 3. GPU_CHECK_CPU=1 runs parts 2 and
# 3's plumbing on the CPU in fp32 (no flash, no bf16, no MFU): what a CPU can verify of it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
WORK="${1:-$(mktemp -d)}"
CPU="${GPU_CHECK_CPU:-0}"

if [ "$CPU" != "1" ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device; nothing checked (GPU_CHECK_CPU=1 checks the plumbing on the CPU)" >&2
    exit 3
fi
if [ "$CPU" = "1" ]; then PRECISION=fp32; LAUNCH=recipes/launch/cpu.sh; else PRECISION=bf16; LAUNCH=recipes/launch/1gpu.sh; fi
export PYTHON
mkdir -p "$WORK"
: > "$WORK/table.txt"
echo "gpu_check: working in $WORK ($PRECISION, $LAUNCH)"

# --- data and the caption model (seconds)
"$PYTHON" -m vidlm.data.cli synth --out "$WORK/shards" --num 32 --seed 0 --size 32x32 --frames 9 >/dev/null
"$PYTHON" -m vidlm.data.cli train-text-tokenizer --shards "$WORK/shards" --vocab-size 64 --out "$WORK/model/text" >/dev/null

# --- part 2: one stage in $PRECISION under ZeRO-2: stop at step 4 (a checkpoint), resume to the end
train_and_resume() {  # STAGE RECIPE DATA
    local stage=$1 recipe=$2 data=$3 run="$WORK/run-$1"
    sed "s/^precision: .*/precision: $PRECISION/; s/^ckpt_every: .*/ckpt_every: 4/" "$recipe" > "$WORK/$stage.yaml"
    "$LAUNCH" "vidlm.$stage.cli train" "$WORK/$stage.yaml" --data "$data" --run "$run" \
        --steps 8 --stop-at 4 --deepspeed recipes/deepspeed/zero2.json
    "$LAUNCH" "vidlm.$stage.cli train" "$WORK/$stage.yaml" --data "$data" --run "$run" \
        --steps 8 --deepspeed recipes/deepspeed/zero2.json 2>&1 | tee "$WORK/$stage-resumed.log"
    "$PYTHON" - "$run" "$stage" "$WORK/$stage-resumed.log" <<'EOF' >&3
import json, math, re, sys
from pathlib import Path
run, stage, log = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_text()
assert re.search(r"\b4/8 \[", log), f"{stage}: the second run did not resume at step 4:\n{log[-2000:]}"
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
steps = [r["step"] for r in rows]
losses = [v for r in rows for k, v in r.items() if k.endswith("loss") and isinstance(v, float)]
assert max(steps) == 8, f"{stage}: the resumed run ended at step {max(steps)}, not 8"
assert losses and all(math.isfinite(v) for v in losses), f"{stage}: non-finite losses {losses}"
print(f"{stage}: trained to step 4, resumed to step 8; last loss {losses[-1]:.3f}")
EOF
}
lm_stage() {  # the LM on codes of the tokenizer part's model
    "$PYTHON" -m vidlm.tokenizer.cli export --run "$WORK/run-tokenizer" --out "$WORK/model/tokenizer"
    "$PYTHON" -m vidlm.pretokenize --tokenizer "$WORK/model/tokenizer" --text "$WORK/model/text" \
        --shards "$WORK/shards" --out "$WORK/tokens" --frames 9 --area 1024
    train_and_resume lm recipes/lm/debug.yaml "$WORK/tokens"
}

FAILED=()
part() {  # NAME CMD...: run one part with errexit (in the background: errexit holds there); its
    # result lines (fd 3) go to the table; its other output to WORK/NAME.log
    local name=$1; shift
    local rc=0
    ( set -e; "$@" ) 3>> "$WORK/table.txt" > "$WORK/$name.log" 2>&1 &
    wait $! || rc=$?
    [ "$rc" = 0 ] && return
    echo "$name: FAILED (exit $rc; $WORK/$name.log)" >> "$WORK/table.txt"
    echo "gpu_check: part '$name' failed; the end of $WORK/$name.log:" >&2
    tail -n 30 "$WORK/$name.log" >&2
    FAILED+=("$name")
}
part tokenizer train_and_resume tokenizer recipes/tokenizer/debug.yaml "$WORK/shards"
part lm lm_stage
# --- parts 1 and 3: in one process (a check that raises is its own FAILED row there)
bench() { "$PYTHON" bench/gpu_check.py "$@" >&3; }
part bench bench $([ "$CPU" = "1" ] && echo --cpu)

echo
echo "| check | result |"
echo "|---|---|"
sed 's/^\([^:]*\): /| \1 | /; s/$/ |/' "$WORK/table.txt"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
