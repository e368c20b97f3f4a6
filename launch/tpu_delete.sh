#!/usr/bin/env bash
# Delete a TPU VM (or, with --queued, its queued resource together with the node).
#
# Usage: launch/tpu_delete.sh --name NAME --zone ZONE [--project PROJECT] [--queued [--qr-id ID]] [--yes]
#                             [--dry-run]
#
# gcloud asks for confirmation unless --yes. Checkpoints in a gs:// workdir stay; anything written to
# the workers' disks (the training logs) is lost. A TPU bills while it exists, busy or idle.
#
# Example: launch/tpu_delete.sh --name ddpm-v3 --zone europe-west4-a --yes

set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args --name --zone --project --queued --qr-id --yes --dry-run -- "$@"
require --name --zone
validate

announce_dry_run
gcloud_scope
quiet=()
[[ $YES == 1 ]] && quiet=(--quiet)
if [[ $QUEUED == 1 ]]; then
  say "delete queued resource $QR_ID and its TPU VM $NAME in $ZONE"
  run gcloud compute tpus queued-resources delete "$QR_ID" "${SCOPE[@]}" --force "${quiet[@]}"
else
  say "delete TPU VM $NAME in $ZONE"
  run gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}" "${quiet[@]}"
fi
