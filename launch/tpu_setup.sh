#!/usr/bin/env bash
# Install ddpm-jax with its TPU extra on every worker of a TPU VM.
#
# Usage: launch/tpu_setup.sh --name NAME --zone ZONE [--project PROJECT]
#                            [--git-url URL [--git-ref REF]] [--python python3.11] [--dry-run]
#
# By default the local working tree (without .git, .venv and what .gitignore names) is packed and copied
# to ~/ddpm-jax on every worker with 'gcloud compute tpus tpu-vm scp --worker=all'; with --git-url the
# workers clone URL (at REF) instead. Then, on all workers at once: install PYTHON if the image lacks it
# (the TPU images are Ubuntu 22.04 with Python 3.10), create ~/ddpm-jax-venv and
# 'pip install -e ~/ddpm-jax[tpu]'. Safe to rerun: the code is replaced, the venv is reused.
#
# Example: launch/tpu_setup.sh --name ddpm-v3 --zone europe-west4-a

set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args --name --zone --project --git-url --git-ref --python --dry-run -- "$@"
require --name --zone
validate

announce_dry_run
if [[ -n $GIT_URL ]]; then
  say "set up every worker of $NAME in $ZONE from $GIT_URL${GIT_REF:+ at $GIT_REF}"
else
  say "set up every worker of $NAME in $ZONE from the working tree $REPO_ROOT"
fi
do_setup
say "next: launch/tpu_train.sh --name $NAME --zone $ZONE --accelerator-type TYPE --config ... --workdir ..."
