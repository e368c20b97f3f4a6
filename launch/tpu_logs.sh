#!/usr/bin/env bash
# Follow the training log of one worker (worker 0 by default) of a TPU VM.
#
# Usage: launch/tpu_logs.sh --name NAME --zone ZONE [--project PROJECT] [--worker N|all] [--lines N]
#                           [--no-follow] [--dry-run]
#
# Runs 'tail -n LINES -F ~/ddpm-jax-train.log' on the worker over ssh (Ctrl-C stops following; training
# goes on). --no-follow prints the last LINES lines and returns. Every process of a multi-host run logs
# the same progress, so worker 0 is enough unless one worker fails.
#
# Example: launch/tpu_logs.sh --name ddpm-v3 --zone europe-west4-a

set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args --name --zone --project --worker --lines --no-follow --dry-run -- "$@"
require --name --zone
validate

announce_dry_run
follow="-F"
[[ $FOLLOW == 1 ]] || follow=""
say "show the training log of worker $WORKER of $NAME"
gcloud_scope
run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" "--worker=$WORKER" \
  "--command=tail -n $LINES${follow:+ $follow} $REMOTE_LOG"
