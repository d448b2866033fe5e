#!/usr/bin/env bash
# One node, NGPUS GPUs (default 8), under the deepspeed launcher.
#   recipes/launch/8gpu.sh "vidlm.lm.cli train" recipes/lm/M.yaml --deepspeed recipes/deepspeed/zero2.json
source "$(dirname "$0")/_common.sh"
ds_module --num_gpus "${NGPUS:-8}"
