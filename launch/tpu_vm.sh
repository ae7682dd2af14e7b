#!/usr/bin/env bash
# TPU VM pod slices for mtf: create, set up, run, follow, stop, delete (gcloud underneath).
#
#   launch/tpu_vm.sh [--dry-run] create --name NAME --zone ZONE --accelerator v4-64
#                    [--runtime tpu-ubuntu2204-base] [--spot] [--queued] [--project ID]
#   launch/tpu_vm.sh [--dry-run] setup  --name NAME --zone ZONE [--commit REF]
#                    [--repo URL] [--project ID]
#   launch/tpu_vm.sh [--dry-run] run    --name NAME --zone ZONE [--gin_file gin/mt0_xxl.gin]
#                    [--env NAME=VALUE ...] [--project ID] -- --gin.MODEL_DIR=gs://... ...
#   launch/tpu_vm.sh [--dry-run] logs   --name NAME --zone ZONE [--worker 0] [--project ID]
#   launch/tpu_vm.sh [--dry-run] stop   --name NAME --zone ZONE [--project ID]
#   launch/tpu_vm.sh [--dry-run] delete --name NAME --zone ZONE [--queued] [--project ID]
#   launch/tpu_vm.sh --help
#
# `run` starts the same `python -m mtf.launch` on every worker, detached from the ssh
# session (it survives a dropped connection), writes ~/mtf-run.log on each worker and
# streams worker output until the run ends. `stop` sends SIGTERM: mtf saves a checkpoint
# and exits, and `run` again resumes from it. --dry-run (before or after the verb) prints
# the exact commands instead.
set -euo pipefail

help() {
  sed -n '2,19p' "$0"
  exit 0
}

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
case "${1:-}" in
  -h|--help) help ;;
esac
COMMAND=${1:-}
shift || true

NAME="" ZONE="" PROJECT="" ACCELERATOR="" RUNTIME="tpu-ubuntu2204-base" SPOT=0 QUEUED=0
COMMIT="" REPO="" GIN_FILE="gin/mt0_xxl.gin" WORKER=0
ENVS=()
BINDINGS=()
LOG="\"\$HOME\"/mtf-run.log"  # expanded by the worker's shell

usage() {
  sed -n '2,19p' "$0" >&2
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --accelerator) ACCELERATOR=${2:?--accelerator needs a value}; shift 2 ;;
    --runtime) RUNTIME=${2:?--runtime needs a value}; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --commit) COMMIT=${2:?--commit needs a value}; shift 2 ;;
    --repo) REPO=${2:?--repo needs a value}; shift 2 ;;
    --gin_file) GIN_FILE=${2:?--gin_file needs a value}; shift 2 ;;
    --env) [[ "${2:-}" == *=* ]] || die "--env takes NAME=VALUE, got '${2:-}'"
           ENVS+=("$2"); shift 2 ;;
    --worker) WORKER=${2:?--worker needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) help ;;
    --) shift; BINDINGS=("$@"); break ;;
    *) die "unknown option '$1' (bindings for mtf.launch go after --)" ;;
  esac
done

[[ -n "$COMMAND" ]] || usage
[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"

GCLOUD_FLAGS=("--zone=$ZONE")
if [[ -n "$PROJECT" ]]; then
  GCLOUD_FLAGS+=("--project=$PROJECT")
fi

# Runs (or, with --dry-run, prints shell-quoted) one command.
invoke() {
  if [[ $DRY_RUN -eq 1 ]]; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
  else
    "$@"
  fi
}

# The same shell script on every worker (or on one, with a worker number).
on_workers() {
  local worker=$1 script=$2
  invoke gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" "--worker=$worker" \
    "--command=$script"
}

case "$COMMAND" in
  create)
    [[ -n "$ACCELERATOR" ]] || die "create needs --accelerator (e.g. v4-64); first check the
fit: python -m mtf.plan --gin_file=gin/mt0_xxl.gin --topology=v4-64"
    extra=()
    if [[ $SPOT -eq 1 ]]; then extra+=("--spot"); fi
    if [[ $QUEUED -eq 1 ]]; then
      invoke gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" \
        "${GCLOUD_FLAGS[@]}" "--accelerator-type=$ACCELERATOR" \
        "--runtime-version=$RUNTIME" "${extra[@]}"
    else
      invoke gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" \
        "--accelerator-type=$ACCELERATOR" "--version=$RUNTIME" "${extra[@]}"
    fi
    ;;
  setup)
    if [[ -z "$REPO" ]]; then
      REPO=$(git -C "$(dirname "$0")" remote get-url origin 2>/dev/null) ||
        die "setup needs --repo URL (this checkout has no 'origin' remote)"
    fi
    if [[ -z "$COMMIT" ]]; then
      COMMIT=$(git -C "$(dirname "$0")" rev-parse HEAD)
    fi
    printf -v script '%s' "set -euo pipefail
if [ ! -d ~/mtf/.git ]; then git clone $(printf '%q' "$REPO") ~/mtf; fi
cd ~/mtf
git fetch --quiet origin
git checkout --quiet $(printf '%q' "$COMMIT")
python3 -m venv .venv
.venv/bin/pip install --quiet -e '.[tpu]'
echo \"\$(hostname): mtf at \$(git rev-parse --short HEAD)\""
    on_workers all "$script"
    ;;
  run)
    launch=(.venv/bin/python -m mtf.launch "--gin_file=$GIN_FILE" "${BINDINGS[@]}")
    printf -v quoted_launch '%q ' "${launch[@]}"
    quoted_env=""
    if [[ ${#ENVS[@]} -gt 0 ]]; then
      printf -v quoted_env '%q ' "${ENVS[@]}"
    fi
    script="set -euo pipefail
cd ~/mtf
: > $LOG  # made before tail opens it (the background job's redirect may come later)
nohup env ${quoted_env}${quoted_launch% } >> $LOG 2>&1 < /dev/null &
pid=\$!
tail -n +1 -f --pid=\"\$pid\" $LOG
wait \"\$pid\""
    on_workers all "$script"
    ;;
  logs)
    on_workers "$WORKER" "tail -n 200 -f $LOG"
    ;;
  stop)
    on_workers all "pkill -TERM -f 'mtf[.]launch' || echo \"\$(hostname): no mtf run\""
    ;;
  delete)
    if [[ $QUEUED -eq 1 ]]; then
      invoke gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" \
        --force --quiet
    else
      invoke gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
    fi
    ;;
  *)
    usage
    ;;
esac
