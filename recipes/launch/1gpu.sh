#!/usr/bin/env bash
# One GPU under the deepspeed launcher (NCCL, bf16 when the run config says so).
#   recipes/launch/1gpu.sh "vidlm.lm.cli train" recipes/lm/S.yaml --deepspeed recipes/deepspeed/zero1.json
source "$(dirname "$0")/_common.sh"
ds_module --num_gpus 1
