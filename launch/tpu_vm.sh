#!/usr/bin/env bash
# Runs one mtf command on every host of a TPU VM pod slice (jax.distributed is detected).
#   launch/tpu_vm.sh TPU_NAME ZONE [gin file] [--gin.NAME=VALUE ...]
#   launch/tpu_vm.sh my-v4-64 us-central2-b gin/mt0_xxl.gin --gin.MODEL_DIR=gs://bucket/mt0_xxl
# Each host needs this repository at ~/mtf and XP3_DIR pointing at the data (gs:// works).
set -euo pipefail
TPU_NAME=${1:?TPU name}; ZONE=${2:?zone}; GIN_FILE=${3:-gin/mt0_xxl.gin}; shift $(( $# < 3 ? $# : 3 ))
BINDINGS=$(printf " %q" "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/mtf && (test -d .venv || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]')) &&
  XP3_DIR=\${XP3_DIR:-} .venv/bin/python -m mtf.launch --gin_file=$GIN_FILE $BINDINGS"
