#!/usr/bin/env bash
# Keep a (spot) TPU training run alive: poll the node state; after a preemption recreate the node and
# rerun setup and training, which resumes from the latest checkpoint in the workdir.
#
# Usage: launch/tpu_watch.sh --name NAME --zone ZONE --accelerator-type TYPE --config CONFIG
#                            --workdir WORKDIR [--project PROJECT] [--version RUNTIME] [--spot]
#                            [--queued [--qr-id ID]] [--git-url URL [--git-ref REF]] [--python PY]
#                            [--interval SECONDS] [--max-recoveries N] [--max-checks N | --once]
#                            [--dry-run] [-- EXTRA ddpm_jax.main FLAGS]
#
# Every --interval seconds (default 300) it reads the state with
#   gcloud compute tpus tpu-vm describe NAME --format='value(state)'            (READY, PREEMPTED, ...)
#   gcloud compute tpus queued-resources describe ID --format='value(state.state)'   (with --queued)
# READY / ACTIVE: nothing to do, unless the node just came up, then setup + train run on it.
# PREEMPTED, TERMINATED or gone (queued: SUSPENDED, FAILED or gone): delete what is left, create it again
# with the same flags as tpu_create.sh, then run tpu_setup.sh and tpu_train.sh steps (for a queued
# resource once it is ACTIVE again). Anything else (CREATING, WAITING_FOR_RESOURCES, ...): wait.
# A failed gcloud call is retried at the next check. It gives up (exit 1) after --max-recoveries
# recreations (default 10); --max-checks N stops after N checks (default 0: never), --once = 1 check.
# A dry run prints one check and the recovery it would run after a preemption.
#
# Example (run it in tmux or screen on a machine that stays up):
#   launch/tpu_watch.sh --name ddpm-v4 --zone us-central2-b --accelerator-type v4-32 --spot \
#     --config configs/cifar10_mu_vlb_fixed.py --workdir gs://my-bucket/ddpm/cifar10_mu

set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args --name --zone --project --accelerator-type --version --spot --queued --qr-id --git-url --git-ref \
  --python --config --workdir --interval --max-recoveries --max-checks --once --dry-run EXTRA -- "$@"
require --name --zone --accelerator-type --config --workdir
validate
validate_workdir

recoveries=0
pending_start=0

# Deletes what is left of the node (unless it is gone) and creates it again.
recover() {
  local state=$1
  if ((recoveries >= MAX_RECOVERIES)); then
    echo "$SCRIPT_NAME: error: giving up: $NAME is $state and $recoveries recreations (--max-recoveries)" \
      "are used up" >&2
    exit 1
  fi
  recoveries=$((recoveries + 1))
  say "recovery $recoveries/$MAX_RECOVERIES: $NAME is $state; recreating it"
  if [[ $state != NOT_FOUND ]]; then
    do_delete_quiet || say "delete failed; creating anyway"
  fi
  # The node (or queued resource) must be set up and trained on once it is up again.
  pending_start=1
  if ! do_create; then
    say "create failed; trying again at the next check"
    return 1
  fi
}

start_training() {
  say "$NAME is up: installing ddpm-jax and starting training (it resumes from $WORKDIR)"
  if do_setup && do_train; then
    pending_start=0
  else
    say "setup or training start failed; trying again at the next check"
  fi
}

announce_dry_run
say "watch $(describe_node)"
say "training: $CONFIG into $WORKDIR; check every ${INTERVAL}s, at most $MAX_RECOVERIES recreations"

if [[ $DRY_RUN == 1 ]]; then
  state_cmd
  run "${STATE_CMD[@]}"
  assumed=PREEMPTED
  [[ $QUEUED == 1 ]] && assumed=SUSPENDED
  say "dry run: showing the recovery after the state becomes $assumed"
  recover "$assumed"
  [[ $QUEUED == 1 ]] && wait_for_queued
  start_training
  exit 0
fi

watched="TPU VM $NAME"
[[ $QUEUED == 1 ]] && watched="queued resource $QR_ID"
checks=0
while true; do
  state=$(query_state)
  checks=$((checks + 1))
  say "check $checks: $watched is $state"
  case "$QUEUED:$state" in
    0:READY | 1:ACTIVE)
      ((pending_start == 0)) || start_training
      ;;
    0:PREEMPTED | 0:TERMINATED | 0:NOT_FOUND)
      # A plain create returns once the node is READY, so training can start right away.
      if recover "$state"; then
        start_training
      fi
      ;;
    1:SUSPENDED | 1:FAILED | 1:NOT_FOUND)
      # Setup and training wait for the queued resource to become ACTIVE (a later check).
      recover "$state" || true
      ;;
    *:UNKNOWN)
      say "could not read the state; asking again at the next check"
      ;;
    *)
      # Coming up (CREATING, WAITING_FOR_RESOURCES, PROVISIONING, ...) or down for repair: whatever ran
      # there is gone, so set up and train once it is READY / ACTIVE.
      pending_start=1
      ;;
  esac
  if ((MAX_CHECKS > 0 && checks >= MAX_CHECKS)); then
    say "stopping after $checks check(s) (--max-checks)"
    exit 0
  fi
  sleep "$INTERVAL"
done
