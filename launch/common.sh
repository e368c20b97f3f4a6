# shellcheck shell=bash
# The flag variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared by launch/tpu_*.sh (sourced, never run): flag parsing and validation, a dry-run aware command
# runner, and the create / setup / train / state steps, kept here so that tpu_watch.sh replays exactly
# what the single-step scripts do.
#
# Every flag has an environment default so a shell session can set the node once:
#   TPU_NAME, TPU_ZONE, TPU_PROJECT, TPU_ACCELERATOR_TYPE, TPU_RUNTIME_VERSION, TPU_SPOT=1, TPU_QUEUED=1,
#   TPU_QUEUED_RESOURCE_ID, DRY_RUN=1.

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
SCRIPT_NAME=$(basename "$0")

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-}
RUNTIME_VERSION=${TPU_RUNTIME_VERSION:-}
SPOT=${TPU_SPOT:-0}
QUEUED=${TPU_QUEUED:-0}
QR_ID=${TPU_QUEUED_RESOURCE_ID:-}
DRY_RUN=${DRY_RUN:-0}
WAIT=0
GIT_URL=""
GIT_REF=""
PYTHON=python3.11
CONFIG=""
WORKDIR=""
RESTART=0
TRAIN_ARGS=()
WORKER=0
LINES=100
FOLLOW=1
YES=0
MAX_CHECKS=0
MAX_RECOVERIES=10
INTERVAL=300

# Paths on every TPU VM worker. Single-quoted on purpose: $HOME expands on the worker, not here.
# shellcheck disable=SC2016
REMOTE_REPO='$HOME/ddpm-jax'
# shellcheck disable=SC2016
REMOTE_VENV='$HOME/ddpm-jax-venv'
# shellcheck disable=SC2016
REMOTE_TARBALL='$HOME/ddpm-jax-src.tar.gz'
# shellcheck disable=SC2016
REMOTE_LOG='$HOME/ddpm-jax-train.log'
# shellcheck disable=SC2016
REMOTE_PID='$HOME/ddpm-jax-train.pid'

# Accepted accelerator types: family -> sizes (TensorCores for v3/v4/v5p, chips for v5litepod = v5e).
# Every family puts at most 8 in one host, so a size above 8 is a multi-host slice.
ACCELERATOR_FAMILIES=(v3 v4 v5litepod v5p)
declare -A ACCELERATOR_SIZES=(
  [v3]="8 32 64 128 256 512 1024 2048"
  [v4]="8 16 32 64 128 256 512 1024 2048 4096"
  [v5litepod]="1 4 8 16 32 64 128 256"
  [v5p]="8 16 32 64 128 256 512 1024 2048 4096 8192 12288"
)
# Default TPU VM runtime (software) version per family; --version overrides.
declare -A DEFAULT_RUNTIME=(
  [v3]=tpu-ubuntu2204-base
  [v4]=tpu-ubuntu2204-base
  [v5litepod]=v2-alpha-tpuv5-lite
  [v5p]=v2-alpha-tpuv5
)

die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  echo "(run '$SCRIPT_NAME --help' for usage)" >&2
  exit 2
}

say() {
  echo "==> $*"
}

usage() {
  # The usage text is the script's leading comment block (after the shebang).
  sed -n '2,/^$/{/^#/!d;s/^# \{0,1\}//;p}' "$0"
}

# Prints one argument quoted for a POSIX shell (bare when it only holds safe characters).
shell_quote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# Prints the command as '+ cmd args...' (copy-pasteable), then runs it unless this is a dry run.
run() {
  local line="+" arg
  for arg in "$@"; do
    line+=" $(shell_quote "$arg")"
  done
  echo "$line"
  if [[ $DRY_RUN == 1 ]]; then
    return 0
  fi
  "$@"
}

# --- flags ------------------------------------------------------------------------------------------------

# parse_args ALLOWED_FLAGS... -- "$@": parses the script's arguments; any flag not in ALLOWED_FLAGS is an
# error. Value flags accept both '--flag value' and '--flag=value'. Arguments after a bare '--' go to
# TRAIN_ARGS (extra flags for ddpm_jax.main) when ALLOWED_FLAGS holds the word EXTRA.
parse_args() {
  local -a allowed=()
  while (($#)) && [[ $1 != -- ]]; do
    allowed+=("$1")
    shift
  done
  (($#)) && shift
  local flag value has_inline
  while (($#)); do
    flag=$1
    has_inline=0
    if [[ $flag == --*=* ]]; then
      value=${flag#*=}
      flag=${flag%%=*}
      has_inline=1
    fi
    case $flag in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        _allowed EXTRA "${allowed[@]}" || die "this script takes no extra arguments after '--'"
        shift
        TRAIN_ARGS+=("$@")
        return 0
        ;;
      --*) ;;
      *) die "unexpected argument '$1'" ;;
    esac
    if ! _allowed "$flag" "${allowed[@]}"; then
      local shown=" ${allowed[*]} "
      die "unknown flag '$flag'; accepted:${shown/ EXTRA / }--help"
    fi
    case $flag in
      --dry-run | --spot | --queued | --wait | --restart | --no-follow | --yes | --once)
        ((has_inline == 0)) || die "$flag takes no value (got '$1')"
        case $flag in
          --dry-run) DRY_RUN=1 ;;
          --spot) SPOT=1 ;;
          --queued) QUEUED=1 ;;
          --wait) WAIT=1 ;;
          --restart) RESTART=1 ;;
          --no-follow) FOLLOW=0 ;;
          --yes) YES=1 ;;
          --once) MAX_CHECKS=1 ;;
        esac
        shift
        continue
        ;;
    esac
    if ((has_inline == 0)); then
      (($# >= 2)) || die "$flag needs a value"
      value=$2
      shift
    fi
    shift
    case $flag in
      --name) NAME=$value ;;
      --zone) ZONE=$value ;;
      --project) PROJECT=$value ;;
      --accelerator-type) ACCELERATOR_TYPE=$value ;;
      --version) RUNTIME_VERSION=$value ;;
      --qr-id) QR_ID=$value ;;
      --git-url) GIT_URL=$value ;;
      --git-ref) GIT_REF=$value ;;
      --python) PYTHON=$value ;;
      --config) CONFIG=$value ;;
      --workdir) WORKDIR=$value ;;
      --worker) WORKER=$value ;;
      --lines) LINES=$value ;;
      --max-checks) MAX_CHECKS=$value ;;
      --max-recoveries) MAX_RECOVERIES=$value ;;
      --interval) INTERVAL=$value ;;
      *) die "internal: flag '$flag' is allowed but not handled" ;;
    esac
  done
}

_allowed() {
  local needle=$1 f
  shift
  for f in "$@"; do
    [[ $f == "$needle" ]] && return 0
  done
  return 1
}

# --- validation -------------------------------------------------------------------------------------------

require() {
  local flag var
  for flag in "$@"; do
    var=${flag#--}
    var=${var//-/_}
    var=${var^^}
    [[ -n ${!var} ]] || die "missing required flag $flag"
  done
}

accepted_accelerator_types() {
  local family size out=""
  for family in "${ACCELERATOR_FAMILIES[@]}"; do
    for size in ${ACCELERATOR_SIZES[$family]}; do
      out+="$family-$size "
    done
  done
  echo "${out% }"
}

accelerator_family() {
  echo "${ACCELERATOR_TYPE%-*}"
}

accelerator_size() {
  echo "${ACCELERATOR_TYPE##*-}"
}

is_multihost() {
  (($(accelerator_size) > 8))
}

_is_int() {
  [[ $1 =~ ^[0-9]+$ ]]
}

# Checks every flag that is set; fills RUNTIME_VERSION and QR_ID defaults.
validate() {
  if [[ -n $NAME && ! $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    die "--name '$NAME' is not a valid TPU name: lowercase letters, digits and hyphens, starting with a" \
      "letter, at most 63 characters"
  fi
  if [[ -n $ZONE && ! $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]]; then
    die "--zone '$ZONE' does not look like a zone (e.g. us-central2-b, europe-west4-a)"
  fi
  if [[ -n $ACCELERATOR_TYPE ]]; then
    local family size ok=0
    family=$(accelerator_family)
    size=$(accelerator_size)
    if [[ -n ${ACCELERATOR_SIZES[$family]+set} ]] && _is_int "$size"; then
      local -a sizes
      read -ra sizes <<<"${ACCELERATOR_SIZES[$family]}"
      _allowed "$size" "${sizes[@]}" && ok=1
    fi
    ((ok)) || die "unknown --accelerator-type '$ACCELERATOR_TYPE'; accepted: $(accepted_accelerator_types)"
    [[ -n $RUNTIME_VERSION ]] || RUNTIME_VERSION=${DEFAULT_RUNTIME[$family]}
  fi
  [[ -n $NAME && -z $QR_ID ]] && QR_ID="$NAME-qr"
  [[ $SPOT == 0 || $SPOT == 1 ]] || die "TPU_SPOT must be 0 or 1, got '$SPOT'"
  [[ $QUEUED == 0 || $QUEUED == 1 ]] || die "TPU_QUEUED must be 0 or 1, got '$QUEUED'"
  [[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "DRY_RUN must be 0 or 1, got '$DRY_RUN'"
  [[ $WORKER == all ]] || _is_int "$WORKER" || die "--worker must be a worker index or 'all', got '$WORKER'"
  local pair
  for pair in "--lines:$LINES" "--max-checks:$MAX_CHECKS" "--max-recoveries:$MAX_RECOVERIES" \
    "--interval:$INTERVAL"; do
    _is_int "${pair#*:}" || die "${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
  done
  if [[ -n $GIT_REF && -z $GIT_URL ]]; then
    die "--git-ref needs --git-url"
  fi
  [[ $PYTHON =~ ^python3(\.[0-9]+)?$ ]] || die "--python must look like python3.11, got '$PYTHON'"
  return 0
}

# Multi-host slices read and write one checkpoint directory from every host, so it must be shared storage.
validate_workdir() {
  if is_multihost && [[ $WORKDIR != gs://* ]]; then
    die "--workdir '$WORKDIR' is not shared storage; the multi-host slice $ACCELERATOR_TYPE needs a" \
      "workdir every host can reach, e.g. gs://BUCKET/ddpm/cifar10_mu"
  fi
  return 0
}

# --- gcloud pieces ----------------------------------------------------------------------------------------

# Flags every gcloud call here takes: the zone, and the project when one is given (else gcloud's default).
gcloud_scope() {
  SCOPE=("--zone=$ZONE")
  [[ -n $PROJECT ]] && SCOPE+=("--project=$PROJECT")
  return 0
}

ssh_all() {
  local remote=$1
  gcloud_scope
  run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" --worker=all "--command=$remote"
}

do_create() {
  gcloud_scope
  local -a spot=()
  [[ $SPOT == 1 ]] && spot=(--spot)
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources create "$QR_ID" "--node-id=$NAME" "${SCOPE[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" "${spot[@]}"
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${SCOPE[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" "${spot[@]}"
  fi
}

# Deletes the node (or the queued resource and its node); never prompts (used by the watch loop).
do_delete_quiet() {
  gcloud_scope
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$QR_ID" "${SCOPE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}" --quiet
  fi
}

# Fills STATE_CMD with the gcloud call that prints the node state (READY, PREEMPTED, ...) or, with
# --queued, the queued resource state (ACTIVE, SUSPENDED, ...).
state_cmd() {
  gcloud_scope
  if [[ $QUEUED == 1 ]]; then
    STATE_CMD=(gcloud compute tpus queued-resources describe "$QR_ID" "${SCOPE[@]}"
      "--format=value(state.state)")
  else
    STATE_CMD=(gcloud compute tpus tpu-vm describe "$NAME" "${SCOPE[@]}" "--format=value(state)")
  fi
}

# Prints the state; NOT_FOUND when gcloud says the resource does not exist, UNKNOWN (with gcloud's error
# on stderr) when the call failed for another reason (network, credentials): callers wait and ask again
# rather than recreate a node that may still be running.
query_state() {
  state_cmd
  local state err
  err=$(mktemp)
  if state=$("${STATE_CMD[@]}" 2>"$err") && [[ -n $state ]]; then
    echo "$state"
  elif grep -qi 'not[_ ]found' "$err"; then
    echo NOT_FOUND
  else
    sed 's/^/gcloud: /' "$err" >&2
    echo UNKNOWN
  fi
  rm -f "$err"
}

# Waits until the queued resource is ACTIVE, polling every --interval seconds; fails on FAILED or when
# it disappears. A dry run prints the polling call once.
wait_for_queued() {
  if [[ $DRY_RUN == 1 ]]; then
    state_cmd
    say "would poll every ${INTERVAL}s until the state is ACTIVE:"
    run "${STATE_CMD[@]}"
    return 0
  fi
  local state
  while true; do
    state=$(query_state)
    say "queued resource $QR_ID: $state"
    case $state in
      ACTIVE) return 0 ;;
      FAILED | NOT_FOUND) die "queued resource $QR_ID is $state" ;;
    esac
    sleep "$INTERVAL"
  done
}

do_setup() {
  local py=$PYTHON
  local fetch
  if [[ -n $GIT_URL ]]; then
    local -a branch=()
    [[ -n $GIT_REF ]] && branch=(--branch "$GIT_REF")
    fetch="rm -rf $REMOTE_REPO && git clone --depth=1"
    local arg
    for arg in "${branch[@]}" "$GIT_URL"; do
      fetch+=" $(shell_quote "$arg")"
    done
    fetch+=" $REMOTE_REPO"
  else
    # One tarball of the working tree (without .git, the local venv and what .gitignore names) goes to
    # every worker; unpacking into a fresh directory avoids scp --recurse nesting into an existing one.
    # tar reads .gitignore's directory patterns (`__pycache__/`, `build/`) only at the top, so the build
    # and cache folders are also excluded by name.
    local tarball="${TMPDIR:-/tmp}/ddpm-jax-src-$NAME.tar.gz"
    run tar -C "$REPO_ROOT" --exclude-vcs --exclude-vcs-ignores --exclude=.venv --exclude=__pycache__ \
      --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=.pytest_cache --exclude=./runs \
      -czf "$tarball" . || return
    gcloud_scope
    run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:ddpm-jax-src.tar.gz" "${SCOPE[@]}" --worker=all ||
      return
    fetch="rm -rf $REMOTE_REPO && mkdir -p $REMOTE_REPO && tar -xzf $REMOTE_TARBALL -C $REMOTE_REPO"
  fi
  # The TPU VM images are Ubuntu 22.04 (Python 3.10); ddpm-jax needs Python >= 3.11.
  local remote="set -e; "
  remote+="if ! command -v $py >/dev/null; then sudo apt-get update -qq && "
  remote+="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py $py-venv; fi; "
  remote+="$fetch; "
  remote+="[ -x $REMOTE_VENV/bin/python ] || $py -m venv $REMOTE_VENV; "
  remote+="$REMOTE_VENV/bin/pip install -q -U pip; "
  remote+="$REMOTE_VENV/bin/pip install -q -e \"${REMOTE_REPO}[tpu]\"; "
  remote+="echo \"ddpm-jax installed on \$(hostname)\""
  ssh_all "$remote"
}

do_train() {
  local main_cmd="$REMOTE_VENV/bin/python -m ddpm_jax.main"
  local arg
  for arg in "--config=$CONFIG" "--workdir=$WORKDIR" "${TRAIN_ARGS[@]}"; do
    main_cmd+=" $(shell_quote "$arg")"
  done
  # A trainer counts as running while its pid is alive and not a zombie (left unreaped by some inits).
  local remote="set -e; cd $REMOTE_REPO; "
  remote+="alive() { kill -0 \"\$1\" 2>/dev/null && ! ps -o stat= -p \"\$1\" | grep -q Z; }; "
  remote+="pid=\$(cat $REMOTE_PID 2>/dev/null || true); "
  if [[ $RESTART == 1 ]]; then
    # SIGTERM makes the trainer save a checkpoint and exit; wait (up to 10 minutes) for that before
    # starting again. Orbax writes a checkpoint under a temporary name first, so SIGKILL after that
    # cannot leave a half-written latest checkpoint.
    remote+="if [ -n \"\$pid\" ] && alive \"\$pid\"; then kill -TERM \"\$pid\"; n=0; "
    remote+="while alive \"\$pid\" && [ \$n -lt 600 ]; do sleep 1; n=\$((n + 1)); done; "
    remote+="if alive \"\$pid\"; then kill -KILL \"\$pid\"; fi; fi; "
  else
    remote+="if [ -n \"\$pid\" ] && alive \"\$pid\"; then echo \"training already running on "
    remote+="\$(hostname) (pid \$pid); use --restart to restart it\"; exit 0; fi; "
  fi
  if is_multihost; then
    remote+="export DDPM_JAX_DISTRIBUTED=1; "
  fi
  remote+="nohup setsid $main_cmd >>$REMOTE_LOG 2>&1 </dev/null & "
  remote+="echo \$! >$REMOTE_PID; "
  remote+="echo \"training started on \$(hostname): pid \$!, log $REMOTE_LOG\""
  ssh_all "$remote"
}

describe_node() {
  local kind="on-demand"
  [[ $SPOT == 1 ]] && kind="spot"
  local hosts="single-host"
  is_multihost && hosts="multi-host"
  local how="TPU VM $NAME"
  [[ $QUEUED == 1 ]] && how="queued resource $QR_ID for TPU VM $NAME"
  echo "$kind $how ($ACCELERATOR_TYPE, $hosts, runtime $RUNTIME_VERSION) in $ZONE"
}

announce_dry_run() {
  if [[ $DRY_RUN == 1 ]]; then
    say "dry run: printing the commands without running them"
  fi
  return 0
}
