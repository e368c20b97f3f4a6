#!/usr/bin/env bash
# Start training on every worker of a TPU VM: one config, one workdir, in the background.
#
# Usage: launch/tpu_train.sh --name NAME --zone ZONE --accelerator-type TYPE --config CONFIG
#                            --workdir WORKDIR [--project PROJECT] [--restart] [--dry-run]
#                            [-- EXTRA ddpm_jax.main FLAGS]
#
# Each worker runs 'python -m ddpm_jax.main --config=CONFIG --workdir=WORKDIR EXTRA' under nohup/setsid
# (it survives the ssh session), appending to ~/ddpm-jax-train.log on that worker; follow it with
# launch/tpu_logs.sh. On multi-host slices (v4-32, v5litepod-16, ...) DDPM_JAX_DISTRIBUTED=1 is set so
# that every process calls jax.distributed.initialize(), and WORKDIR must be gs://... (shared by all
# hosts). Training resumes from the latest checkpoint in WORKDIR by itself. If training already runs on a
# worker it is left alone; --restart sends it SIGTERM (it saves a checkpoint and exits) and starts anew.
# CONFIG is a path relative to the repository on the workers, e.g. configs/cifar10_mu_vlb_fixed.py.
#
# Example: launch/tpu_train.sh --name ddpm-v3 --zone europe-west4-a --accelerator-type v3-8 \
#            --config configs/cifar10_mu_vlb_fixed.py --workdir gs://my-bucket/ddpm/cifar10_mu

set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args --name --zone --project --accelerator-type --config --workdir --restart --dry-run EXTRA -- "$@"
require --name --zone --accelerator-type --config --workdir
validate
validate_workdir

announce_dry_run
mode="single-host"
is_multihost && mode="multi-host, DDPM_JAX_DISTRIBUTED=1"
say "train $CONFIG into $WORKDIR on all workers of $NAME ($ACCELERATOR_TYPE, $mode)"
do_train
say "follow the log: launch/tpu_logs.sh --name $NAME --zone $ZONE"
