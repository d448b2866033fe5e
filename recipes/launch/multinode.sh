#!/usr/bin/env bash
# Several nodes from a DeepSpeed hostfile ("host slots=8" per line; passwordless ssh + pdsh by
# default, LAUNCHER=openmpi|slurm|... otherwise). The run dir must be on a shared filesystem.
#   HOSTFILE=hosts recipes/launch/multinode.sh "vidlm.lm.cli train" recipes/lm/L.yaml --deepspeed recipes/deepspeed/zero3.json
# MASTER_ADDR defaults to the first host in the hostfile.
source "$(dirname "$0")/_common.sh"
: "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile (lines: 'hostname slots=N')}"
[ -f "$HOSTFILE" ] || { echo "hostfile $HOSTFILE not found" >&2; exit 2; }
MASTER_ADDR="${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}"
ds_module --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --launcher "${LAUNCHER:-pdsh}"
