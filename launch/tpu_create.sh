#!/usr/bin/env bash
# Create a Cloud TPU VM (on-demand, --spot, or through a --queued resource) for ddpm-jax.
#
# Usage: launch/tpu_create.sh --name NAME --zone ZONE --accelerator-type TYPE [--version RUNTIME]
#                             [--project PROJECT] [--spot] [--queued [--qr-id ID] [--wait]] [--dry-run]
#
#   --accelerator-type  v3-8, v4-8, v4-32, v5litepod-8, v5p-8, ... (a wrong one lists all accepted)
#   --version           TPU VM runtime; default tpu-ubuntu2204-base (v3, v4), v2-alpha-tpuv5-lite
#                       (v5litepod = v5e), v2-alpha-tpuv5 (v5p)
#   --spot              spot capacity: much cheaper, can be preempted at any time (tpu_watch.sh resumes)
#   --queued            ask through a queued resource (ID --qr-id, default NAME-qr) that is filled when
#                       capacity frees up; --wait polls every --interval seconds (default 300) until ACTIVE
#   --dry-run           print the gcloud commands without running them (or DRY_RUN=1)
#
# Example: launch/tpu_create.sh --name ddpm-v3 --zone europe-west4-a --accelerator-type v3-8 --spot

set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args --name --zone --project --accelerator-type --version --spot --queued --qr-id --wait --interval \
  --dry-run -- "$@"
require --name --zone --accelerator-type
validate
[[ $WAIT == 0 || $QUEUED == 1 ]] || die "--wait only applies to --queued (a plain create already waits)"

announce_dry_run
say "create $(describe_node)"
do_create
if [[ $QUEUED == 1 ]]; then
  if [[ $WAIT == 1 ]]; then
    wait_for_queued
  else
    say "queued: check with 'gcloud compute tpus queued-resources describe $QR_ID --zone=$ZONE'" \
      "(state ACTIVE = ready), then run launch/tpu_setup.sh"
  fi
fi
say "next: launch/tpu_setup.sh --name $NAME --zone $ZONE"
