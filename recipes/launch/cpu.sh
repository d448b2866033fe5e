#!/usr/bin/env bash
# CPU run: one plain process, or NPROC ranks under the deepspeed launcher (gloo, fp32).
#   recipes/launch/cpu.sh "vidlm.tokenizer.cli train" recipes/tokenizer/debug.yaml
#   NPROC=2 recipes/launch/cpu.sh "vidlm.lm.cli train" recipes/lm/debug.yaml --deepspeed recipes/deepspeed/zero2.json
source "$(dirname "$0")/_common.sh"
NPROC="${NPROC:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}"
if [ "$NPROC" = "1" ]; then
    run "$PYTHON" -m "${ENTRY[@]}" --config "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"}
else
    ds_module --num_gpus "$NPROC"   # on a machine without GPUs this is the number of CPU ranks
fi
