"""Launch scripts (launch/): run against stub `gcloud` / `srun` executables that record their argv.

The stub is put first on PATH; it appends one JSON line per call ({"prog", "argv", "distributed"}) and
answers `describe` with the next state of STUB_STATES. A dry run must print the commands and never call
the stub; a normal run must call it with exactly the expected argv. The remote commands the scripts send
over `gcloud ... ssh --command=...` are also executed here with bash in a fake worker home (stub
python/pip), so that their quoting and their effect (files unpacked, trainer started with the right
argv and environment) are checked, not only their text. No network, no real gcloud, TPU or SLURM.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

NODE = ["--name", "ddpm-v3", "--zone", "europe-west4-a"]
SCOPE = ["--zone=europe-west4-a"]
POD = ["--name", "ddpm-v4", "--zone", "us-central2-b"]
POD_SCOPE = ["--zone=us-central2-b"]
CONFIG = "configs/cifar10_mu_vlb_fixed.py"
GS_WORKDIR = "gs://my-bucket/ddpm/cifar10_mu"
GIT = ["--git-url", "https://example.com/ddpm-jax.git"]

_STUB = r'''#!{python} -I
import json, os, sys
log = os.environ["STUB_LOG"]
prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(log, "a") as f:
  f.write(json.dumps({{"prog": prog, "argv": args,
                      "distributed": os.environ.get("DDPM_JAX_DISTRIBUTED")}}) + "\n")

def bump(name):
  path = log + "." + name
  n = int(open(path).read()) if os.path.exists(path) else 0
  open(path, "w").write(str(n + 1))
  return n

if "describe" in args:
  states = os.environ.get("STUB_STATES", "READY").split(",")
  state = states[min(bump("describe"), len(states) - 1)]
  if state == "NOT_FOUND":
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource was not found")
  if state == "ERROR":
    sys.exit("ERROR: (gcloud) PERMISSION_DENIED: credentials expired")
  print(state)
elif "create" in args and bump("create") < int(os.environ.get("STUB_FAIL_CREATE", "0")):
  sys.exit("ERROR: (gcloud) RESOURCE_EXHAUSTED: no more capacity in the zone")
'''


@pytest.fixture
def sandbox(tmp_path):
  """A stub bin directory first on PATH, a clean environment (no TPU_* defaults), a call log."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  stub = bin_dir / "gcloud"
  stub.write_text(_STUB.format(python=sys.executable))
  stub.chmod(0o755)
  (bin_dir / "srun").symlink_to(stub)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path),
         "STUB_LOG": str(tmp_path / "calls.jsonl"), "LANG": "C.UTF-8"}
  return tmp_path, env


def run(sandbox, script, *args, **extra_env):
  tmp, env = sandbox
  return subprocess.run(["bash", str(LAUNCH / script), *args], env={**env, **extra_env}, cwd=tmp,
                        capture_output=True, text=True, timeout=60)


def calls(sandbox, prog="gcloud"):
  log = sandbox[0] / "calls.jsonl"
  if not log.exists():
    return []
  entries = [json.loads(line) for line in log.read_text().splitlines()]
  return [e["argv"] for e in entries if e["prog"] == prog]


def printed(result):
  """The argv of every '+ ...' line the script printed, parsed back the way a shell would."""
  return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def ok(result):
  assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
  return result


def ssh_command(argv):
  """The remote command of a recorded `gcloud compute tpus tpu-vm ssh ... --command=...` call."""
  [cmd] = [a for a in argv if a.startswith("--command=")]
  return cmd[len("--command="):]


# --- dry runs ---------------------------------------------------------------------------------------------

DRY_RUNS = [
    ("tpu_create.sh", [*NODE, "--accelerator-type", "v3-8", "--spot"], "tpu-vm create"),
    ("tpu_create.sh", [*POD, "--accelerator-type", "v4-32", "--queued", "--wait"], "queued-resources create"),
    ("tpu_setup.sh", NODE, "tpu-vm scp"),
    ("tpu_setup.sh", [*NODE, *GIT], "tpu-vm ssh"),
    ("tpu_train.sh", [*NODE, "--accelerator-type", "v3-8", "--config", CONFIG, "--workdir", "runs/x"],
     "tpu-vm ssh"),
    ("tpu_logs.sh", NODE, "tpu-vm ssh"),
    ("tpu_delete.sh", [*NODE, "--yes"], "tpu-vm delete"),
    ("tpu_watch.sh", [*NODE, "--accelerator-type", "v3-8", "--spot", "--config", CONFIG, "--workdir",
                      "runs/x"], "tpu-vm create"),
]


@pytest.mark.parametrize("script,args,expected", DRY_RUNS, ids=[f"{s}-{i}" for i, (s, _, _) in
                                                               enumerate(DRY_RUNS)])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_dry_run_prints_commands_and_calls_nothing(sandbox, script, args, expected, how):
  if how == "flag":
    result = ok(run(sandbox, script, *args, "--dry-run"))
  else:
    result = ok(run(sandbox, script, *args, DRY_RUN="1"))
  assert "dry run" in result.stdout
  gcloud_lines = [" ".join(argv[:5]) for argv in printed(result) if argv[0] == "gcloud"]
  assert f"gcloud compute tpus {expected}" in gcloud_lines
  assert calls(sandbox) == []
  assert not list(sandbox[0].glob("*.tar.gz"))  # setup's local packing is also only printed


# --- create -----------------------------------------------------------------------------------------------

def test_create_spot_v3_records_exact_argv_and_prints_it(sandbox):
  result = ok(run(sandbox, "tpu_create.sh", *NODE, "--accelerator-type", "v3-8", "--spot"))
  expected = ["compute", "tpus", "tpu-vm", "create", "ddpm-v3", *SCOPE, "--accelerator-type=v3-8",
              "--version=tpu-ubuntu2204-base", "--spot"]
  assert calls(sandbox) == [expected]
  assert printed(result) == [["gcloud", *expected]]


@pytest.mark.parametrize("accel,extra,runtime", [
    ("v4-8", [], "tpu-ubuntu2204-base"),
    ("v5litepod-8", [], "v2-alpha-tpuv5-lite"),
    ("v5p-8", [], "v2-alpha-tpuv5"),
    ("v4-32", ["--version", "tpu-vm-v4-base"], "tpu-vm-v4-base"),
])
def test_create_on_demand_runtime_per_accelerator(sandbox, accel, extra, runtime):
  ok(run(sandbox, "tpu_create.sh", *NODE, f"--accelerator-type={accel}", "--project", "my-proj", *extra))
  assert calls(sandbox) == [["compute", "tpus", "tpu-vm", "create", "ddpm-v3", *SCOPE, "--project=my-proj",
                             f"--accelerator-type={accel}", f"--version={runtime}"]]


def test_create_queued_spot_waits_until_active(sandbox):
  ok(run(sandbox, "tpu_create.sh", *POD, "--accelerator-type", "v4-32", "--spot", "--queued", "--wait",
         "--interval", "0", STUB_STATES="WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE"))
  describe = ["compute", "tpus", "queued-resources", "describe", "ddpm-v4-qr", *POD_SCOPE,
              "--format=value(state.state)"]
  assert calls(sandbox) == [
      ["compute", "tpus", "queued-resources", "create", "ddpm-v4-qr", "--node-id=ddpm-v4", *POD_SCOPE,
       "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot"],
      describe, describe, describe]


def test_create_queued_wait_fails_when_the_request_fails(sandbox):
  result = run(sandbox, "tpu_create.sh", *POD, "--accelerator-type", "v4-32", "--queued", "--qr-id", "my-qr",
               "--wait", "--interval", "0", STUB_STATES="FAILED")
  assert result.returncode == 2
  assert "queued resource my-qr is FAILED" in result.stderr


# --- setup ------------------------------------------------------------------------------------------------

def _fake_worker(tmp):
  """A worker home with a stub python3.11 whose `-m venv DIR` makes a pip that logs its arguments."""
  home, wbin = tmp / "worker", tmp / "worker_bin"
  home.mkdir()
  wbin.mkdir()
  py = wbin / "python3.11"
  py.write_text('#!/bin/bash\n[ "$1 $2" = "-m venv" ] || exit 3\nmkdir -p "$3/bin"\n'
                'printf \'#!/bin/bash\\nprintf "%%s\\\\n" "$*" >>"$HOME/pip.log"\\n\' >"$3/bin/pip"\n'
                'chmod +x "$3/bin/pip"\n')
  py.chmod(0o755)
  return home, {"PATH": f"{wbin}:/usr/bin:/bin", "HOME": str(home)}


def test_setup_copies_the_working_tree_to_all_workers_and_installs_the_tpu_extra(sandbox):
  tmp, _ = sandbox
  ok(run(sandbox, "tpu_setup.sh", *NODE))
  tarball = str(tmp / "ddpm-jax-src-ddpm-v3.tar.gz")
  scp, ssh = calls(sandbox)
  assert scp == ["compute", "tpus", "tpu-vm", "scp", tarball, "ddpm-v3:ddpm-jax-src.tar.gz", *SCOPE,
                 "--worker=all"]
  assert ssh[:6] == ["compute", "tpus", "tpu-vm", "ssh", "ddpm-v3", *SCOPE] and "--worker=all" in ssh
  with tarfile.open(tarball) as tar:
    names = {n.removeprefix("./") for n in tar.getnames()}
    link = tar.getmember("./configs")
  # The configs live in the package; the top-level configs/ travels as the link to them.
  assert {"setup.py", "launch/common.sh", "ddpm_jax/main.py", "ddpm_jax/" + CONFIG} <= names
  assert link.issym() and link.linkname == "ddpm_jax/configs"
  assert not any(n.split("/")[0] in (".git", ".venv") or "__pycache__" in n for n in names)

  # What the workers would run: unpack into ~/ddpm-jax, make the venv, pip install -e ".[tpu]".
  home, worker_env = _fake_worker(tmp)
  (home / "ddpm-jax-src.tar.gz").write_bytes(pathlib.Path(tarball).read_bytes())
  (home / "ddpm-jax").mkdir()
  (home / "ddpm-jax" / "stale.py").write_text("old code")
  ok(subprocess.run(["bash", "-c", ssh_command(ssh)], env=worker_env, capture_output=True, text=True,
                    timeout=60))
  assert (home / "ddpm-jax" / "setup.py").read_bytes() == (REPO / "setup.py").read_bytes()
  assert (home / "ddpm-jax" / CONFIG).read_bytes() == (REPO / CONFIG).read_bytes()  # through the link
  assert not (home / "ddpm-jax" / "stale.py").exists()
  assert (home / "pip.log").read_text().splitlines() == [
      "install -q -U pip", f"install -q -e {home}/ddpm-jax[tpu]"]


def test_setup_from_git_clones_on_every_worker(sandbox):
  ok(run(sandbox, "tpu_setup.sh", *NODE, *GIT, "--git-ref", "v0.1"))
  [ssh] = calls(sandbox)
  assert "--worker=all" in ssh
  assert ("rm -rf $HOME/ddpm-jax && git clone --depth=1 --branch v0.1 https://example.com/ddpm-jax.git "
          "$HOME/ddpm-jax;") in ssh_command(ssh)
  assert not list(sandbox[0].glob("*.tar.gz"))


# --- train ------------------------------------------------------------------------------------------------

def test_train_v4_32_sets_distributed_and_passes_config_and_workdir(sandbox):
  ok(run(sandbox, "tpu_train.sh", *POD, "--accelerator-type", "v4-32", "--config", CONFIG, "--workdir",
         GS_WORKDIR))
  [ssh] = calls(sandbox)
  assert ssh[:7] == ["compute", "tpus", "tpu-vm", "ssh", "ddpm-v4", *POD_SCOPE, "--worker=all"]
  command = ssh_command(ssh)
  assert "export DDPM_JAX_DISTRIBUTED=1;" in command
  assert (f"nohup setsid $HOME/ddpm-jax-venv/bin/python -m ddpm_jax.main --config={CONFIG} "
          f"--workdir={GS_WORKDIR} >>$HOME/ddpm-jax-train.log") in command


def test_train_v3_8_is_single_host(sandbox):
  ok(run(sandbox, "tpu_train.sh", *NODE, "--accelerator-type", "v3-8", "--config", CONFIG, "--workdir",
         "runs/cifar10_mu"))
  [ssh] = calls(sandbox)
  assert "--worker=all" in ssh
  assert "DDPM_JAX_DISTRIBUTED" not in ssh_command(ssh)
  assert f"--config={CONFIG} --workdir=runs/cifar10_mu" in ssh_command(ssh)


def _start(command, env, home):
  result = ok(subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30))
  for _ in range(200):
    if (home / "trainer_args").exists():
      break
    time.sleep(0.05)
  return result


def test_train_remote_command_starts_one_background_trainer_per_worker(sandbox):
  """Runs the recorded remote command with bash in a fake worker: argv, env, pid file, log, restart."""
  tmp, _ = sandbox
  ok(run(sandbox, "tpu_train.sh", *POD, "--accelerator-type", "v4-32", "--config", CONFIG, "--workdir",
         GS_WORKDIR, "--", "--config.train.num_steps=10", "--note=it's a $HOME test"))
  ok(run(sandbox, "tpu_train.sh", *POD, "--accelerator-type", "v4-32", "--config", CONFIG, "--workdir",
         GS_WORKDIR, "--restart"))
  start, restart = (ssh_command(c) for c in calls(sandbox))
  home, worker_env = _fake_worker(tmp)
  (home / "ddpm-jax").mkdir()
  venv_bin = home / "ddpm-jax-venv" / "bin"
  venv_bin.mkdir(parents=True)
  trainer = venv_bin / "python"
  # Records how it was started, writes a log line, then "trains" until signalled.
  trainer.write_text('#!/bin/bash\necho "step 1"\n'
                     'printf "%s\\n" "$PWD" "DDPM_JAX_DISTRIBUTED=$DDPM_JAX_DISTRIBUTED" "$@" >"$HOME/args.tmp"\n'
                     'mv "$HOME/args.tmp" "$HOME/trainer_args"\nexec sleep 60\n')
  trainer.chmod(0o755)
  pids = []
  try:
    out = _start(start, worker_env, home).stdout
    assert "training started" in out
    pids.append(int((home / "ddpm-jax-train.pid").read_text()))
    assert (home / "trainer_args").read_text().splitlines() == [
        str(home / "ddpm-jax"), "DDPM_JAX_DISTRIBUTED=1", "-m", "ddpm_jax.main", f"--config={CONFIG}",
        f"--workdir={GS_WORKDIR}", "--config.train.num_steps=10", "--note=it's a $HOME test"]
    assert (home / "ddpm-jax-train.log").read_text() == "step 1\n"

    # Running it again leaves the running trainer alone.
    (home / "trainer_args").unlink()
    out = ok(subprocess.run(["bash", "-c", start], env=worker_env, capture_output=True, text=True,
                            timeout=30)).stdout
    assert "training already running on" in out and f"(pid {pids[0]})" in out
    assert int((home / "ddpm-jax-train.pid").read_text()) == pids[0]

    # --restart stops it with SIGTERM and starts a new one.
    out = _start(restart, worker_env, home).stdout
    assert "training started" in out
    pids.append(int((home / "ddpm-jax-train.pid").read_text()))
    assert pids[1] != pids[0]
    assert (home / "trainer_args").exists()
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pids[0])], capture_output=True, text=True)
    assert state.stdout.strip()[:1] in ("", "Z")  # gone (or a zombie nobody reaps in this container)
  finally:
    for pid in pids:
      try:
        os.kill(pid, 15)
      except ProcessLookupError:
        pass


def test_train_multihost_needs_a_shared_workdir(sandbox):
  result = run(sandbox, "tpu_train.sh", *POD, "--accelerator-type", "v4-32", "--config", CONFIG,
               "--workdir", "runs/x")
  assert result.returncode == 2
  assert "--workdir 'runs/x' is not shared storage" in result.stderr and "gs://" in result.stderr
  assert calls(sandbox) == []


# --- logs, delete -----------------------------------------------------------------------------------------

def test_logs_follows_worker_0(sandbox):
  ok(run(sandbox, "tpu_logs.sh", *NODE))
  ok(run(sandbox, "tpu_logs.sh", *NODE, "--worker", "3", "--lines=20", "--no-follow"))
  assert calls(sandbox) == [
      ["compute", "tpus", "tpu-vm", "ssh", "ddpm-v3", *SCOPE, "--worker=0",
       "--command=tail -n 100 -F $HOME/ddpm-jax-train.log"],
      ["compute", "tpus", "tpu-vm", "ssh", "ddpm-v3", *SCOPE, "--worker=3",
       "--command=tail -n 20 $HOME/ddpm-jax-train.log"]]


def test_delete_node_and_queued_resource(sandbox):
  ok(run(sandbox, "tpu_delete.sh", *NODE))
  ok(run(sandbox, "tpu_delete.sh", *NODE, "--yes"))
  ok(run(sandbox, "tpu_delete.sh", *POD, "--queued", "--yes"))
  assert calls(sandbox) == [
      ["compute", "tpus", "tpu-vm", "delete", "ddpm-v3", *SCOPE],
      ["compute", "tpus", "tpu-vm", "delete", "ddpm-v3", *SCOPE, "--quiet"],
      ["compute", "tpus", "queued-resources", "delete", "ddpm-v4-qr", *POD_SCOPE, "--force", "--quiet"]]


# --- watch ------------------------------------------------------------------------------------------------

WATCH_V3 = [*NODE, "--accelerator-type", "v3-8", "--spot", "--config", CONFIG, "--workdir", "runs/mu",
            *GIT, "--interval", "0"]
DESCRIBE_V3 = ["compute", "tpus", "tpu-vm", "describe", "ddpm-v3", *SCOPE, "--format=value(state)"]
DELETE_V3 = ["compute", "tpus", "tpu-vm", "delete", "ddpm-v3", *SCOPE, "--quiet"]
CREATE_V3 = ["compute", "tpus", "tpu-vm", "create", "ddpm-v3", *SCOPE, "--accelerator-type=v3-8",
             "--version=tpu-ubuntu2204-base", "--spot"]


def _kinds(recorded):
  """Each call named by its verb; ssh calls by what their remote command does."""
  out = []
  for argv in recorded:
    verb = argv[3]
    if verb == "ssh":
      verb = "ssh-train" if "ddpm_jax.main" in ssh_command(argv) else "ssh-setup"
    out.append(verb)
  return out


def test_watch_once_recreates_after_preemption_and_restarts_training(sandbox):
  ok(run(sandbox, "tpu_watch.sh", *WATCH_V3, "--once", STUB_STATES="PREEMPTED"))
  recorded = calls(sandbox)
  assert recorded[:3] == [DESCRIBE_V3, DELETE_V3, CREATE_V3]
  assert _kinds(recorded) == ["describe", "delete", "create", "ssh-setup", "ssh-train"]
  assert all("--worker=all" in argv for argv in recorded[3:])
  train = ssh_command(recorded[4])
  assert f"--config={CONFIG} --workdir=runs/mu" in train and "DDPM_JAX_DISTRIBUTED" not in train


def test_watch_leaves_a_ready_node_alone(sandbox):
  ok(run(sandbox, "tpu_watch.sh", *WATCH_V3, "--once", STUB_STATES="READY"))
  assert calls(sandbox) == [DESCRIBE_V3]


def test_watch_loop_retries_a_failed_create_and_ignores_unreadable_states(sandbox):
  ok(run(sandbox, "tpu_watch.sh", *WATCH_V3, "--max-checks", "5",
         STUB_STATES="READY,ERROR,PREEMPTED,NOT_FOUND,READY", STUB_FAIL_CREATE="1"))
  assert _kinds(calls(sandbox)) == [
      "describe",  # READY: nothing to do
      "describe",  # gcloud error: wait, never recreate on an unknown state
      "describe", "delete", "create",  # PREEMPTED: the create fails (no capacity)
      "describe", "create", "ssh-setup", "ssh-train",  # gone: no delete; created; setup + train
      "describe"]  # READY again


def test_watch_queued_pod_recreates_then_starts_once_active(sandbox):
  ok(run(sandbox, "tpu_watch.sh", *POD, "--accelerator-type", "v4-32", "--spot", "--queued", "--config",
         CONFIG, "--workdir", GS_WORKDIR, *GIT, "--interval", "0", "--max-checks", "4",
         STUB_STATES="SUSPENDED,WAITING_FOR_RESOURCES,ACTIVE,ACTIVE"))
  recorded = calls(sandbox)
  assert _kinds(recorded) == ["describe", "delete", "create", "describe", "describe", "ssh-setup",
                              "ssh-train", "describe"]
  assert recorded[0] == ["compute", "tpus", "queued-resources", "describe", "ddpm-v4-qr", *POD_SCOPE,
                         "--format=value(state.state)"]
  assert recorded[1] == ["compute", "tpus", "queued-resources", "delete", "ddpm-v4-qr", *POD_SCOPE, "--force",
                         "--quiet"]
  assert recorded[2] == ["compute", "tpus", "queued-resources", "create", "ddpm-v4-qr", "--node-id=ddpm-v4",
                         *POD_SCOPE, "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base",
                         "--spot"]
  assert "export DDPM_JAX_DISTRIBUTED=1;" in ssh_command(recorded[6])


def test_watch_gives_up_after_max_recoveries(sandbox):
  result = run(sandbox, "tpu_watch.sh", *WATCH_V3, "--max-recoveries", "2", STUB_STATES="PREEMPTED")
  assert result.returncode == 1
  assert "giving up" in result.stderr
  assert _kinds(calls(sandbox)).count("create") == 2


# --- bad arguments ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("script,args,message", [
    ("tpu_create.sh", [*NODE, "--accelerator-type", "v3-16"], "unknown --accelerator-type 'v3-16'; accepted: "
     "v3-8 v3-32"),
    ("tpu_create.sh", [*NODE, "--accelerator-type", "tpu9"], "v5litepod-8"),
    ("tpu_create.sh", ["--name", "ddpm-v3", "--accelerator-type", "v3-8"], "missing required flag --zone"),
    ("tpu_create.sh", [*NODE, "--accelerator-type", "v3-8", "--worker", "1"], "unknown flag '--worker'"),
    ("tpu_create.sh", [*NODE, "--accelerator-type"], "--accelerator-type needs a value"),
    ("tpu_create.sh", [*NODE, "--accelerator-type", "v3-8", "--wait"], "--wait only applies to --queued"),
    ("tpu_create.sh", [*NODE, "--accelerator-type", "v3-8", "--spot=yes"], "--spot takes no value"),
    ("tpu_create.sh", ["--name", "Bad_Name", "--zone", "us-central2-b", "--accelerator-type", "v3-8"],
     "--name 'Bad_Name' is not a valid TPU name"),
    ("tpu_create.sh", ["--name", "x", "--zone", "central", "--accelerator-type", "v3-8"],
     "--zone 'central' does not look like a zone"),
    ("tpu_setup.sh", [*NODE, "--git-ref", "main"], "--git-ref needs --git-url"),
    ("tpu_setup.sh", [*NODE, "stray"], "unexpected argument 'stray'"),
    ("tpu_setup.sh", [*NODE, "--", "--x"], "takes no extra arguments"),
    ("tpu_train.sh", [*NODE, "--accelerator-type", "v3-8", "--workdir", "w"], "missing required flag --config"),
    ("tpu_logs.sh", [*NODE, "--worker", "first"], "--worker must be a worker index or 'all'"),
    ("tpu_watch.sh", [*NODE, "--accelerator-type", "v3-8", "--config", CONFIG, "--workdir", "w",
                      "--interval", "-5"], "--interval must be a non-negative integer"),
])
def test_bad_arguments_fail_clearly_and_call_nothing(sandbox, script, args, message):
  result = run(sandbox, script, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert "--help" in result.stderr
  assert calls(sandbox) == []


def test_help_prints_usage(sandbox):
  result = ok(run(sandbox, "tpu_watch.sh", "--help"))
  assert result.stdout.startswith("Keep a (spot) TPU training run alive")
  assert "Usage: launch/tpu_watch.sh" in result.stdout
  assert calls(sandbox) == []


# --- SLURM ------------------------------------------------------------------------------------------------

SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "8"}


def test_slurm_example_runs_one_srun_with_distributed_set(sandbox):
  tmp, _ = sandbox
  result = ok(run(sandbox, "slurm_gpu.sbatch", CONFIG, "/shared/runs/mu", "--config.train.num_steps=5",
                  DDPM_JAX_REPO=str(tmp), DDPM_JAX_PYTHON="/opt/venv/bin/python", **SLURM_ENV))
  log = [json.loads(line) for line in (tmp / "calls.jsonl").read_text().splitlines()]
  assert log == [{"prog": "srun", "distributed": "1",
                  "argv": ["--kill-on-bad-exit=1", "/opt/venv/bin/python", "-m", "ddpm_jax.main",
                           f"--config={CONFIG}", "--workdir=/shared/runs/mu", "--config.train.num_steps=5"]}]
  assert "2 node(s) x 8 process(es)" in result.stdout


def test_slurm_example_dry_run_and_errors(sandbox):
  tmp, _ = sandbox
  result = ok(run(sandbox, "slurm_gpu.sbatch", CONFIG, "/shared/runs/mu", DRY_RUN="1",
                  DDPM_JAX_REPO=str(tmp), **SLURM_ENV))
  assert "+ DDPM_JAX_DISTRIBUTED=1 srun --kill-on-bad-exit=1" in result.stdout
  outside = run(sandbox, "slurm_gpu.sbatch", CONFIG, "/shared/runs/mu")
  assert outside.returncode == 2 and "submit this with sbatch" in outside.stderr
  missing = run(sandbox, "slurm_gpu.sbatch", CONFIG, **SLURM_ENV)
  assert missing.returncode == 2 and "usage: sbatch launch/slurm_gpu.sbatch CONFIG WORKDIR" in missing.stderr
  assert calls(sandbox, "srun") == []
