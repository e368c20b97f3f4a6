"""Fault injection on the command line: what a crash, a damaged checkpoint, a full disk, a second process or a
bad input does to a run, seen from `ddpm-jax` itself (exit status, stderr, the workdir's files).

Most cases run the CLI entry in this process (`ddpm_jax.main.run(argv)`, SystemExit caught, stdout/stderr
captured): same code as the console script, without a JAX start-up per case. Only the crash needs a process
of its own: a training run, stopped while writing a checkpoint, is killed with SIGKILL. All runs use the
tiny config of tests/tiny.py (as `--config.*` flags) and copies of the session's 6-step run (`straight_run`,
checkpoints at steps 4 and 6), so the train step compiles once for the whole file.

Checked:
  * kill -9 during a checkpoint write, with the run holding the workdir's lock: a second run is refused at
    once naming the holder and changes nothing; the next run takes over the dead process's lock and resumes
    from the last committed step, ending bit-identical to an uninterrupted run, metrics.jsonl holding each
    step once;
  * 4 KB of random bytes in the newest checkpoint: training falls back to the previous step, saying why,
    moves the bad step aside (not deleted) and ends bit-identical to the uninterrupted run: never NaNs;
  * truncated array files: --mode sample refuses with one line naming the step and what to do;
  * a checkpoint write failing in the background (an injected "No space left on device", in a run sent back
    to step 4 with --step 4 --discard_later): one line naming the failed and the last good step, exit
    status 1, nothing after it written, the discarded step moved aside;
  * --allow_config_change resumes a checkpoint of another experiment, naming the differing fields;
  * ≥ 30 bad inputs (config fields, flags, paths, workdir state, the lock): exit status 2 (1 for a failure
    while running), one `ddpm-jax: error:` line, no traceback, and the workdir's files unchanged;
  * an unexpected exception keeps its traceback; --verbose shows it for the project's own errors too.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from ddpm_jax import experiment
from ddpm_jax import main as cli

from tiny import CONFIGS
from tiny import tiny_config

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SUBPROCESS_TIMEOUT_S = 300  # a cold compilation cache on 2 busy cores


def tiny_args(data_root, num_steps=6):
  """`--config` flags giving exactly tests/tiny.py's config (checked below)."""
  return [f"--config={os.path.join(CONFIGS, 'mnist_mu.py')}:runlocal",
          f"--config.data.data_dir={data_root / 'tfds'}", "--config.model.attn_resolutions=(14,)",
          "--config.diffusion.num_timesteps=50", "--config.train.batch_size=8", "--config.train.log_every=1",
          "--config.train.checkpoint_every=2", "--config.train.num_grid_samples=4", "--config.sample.steps=5",
          "--config.sample.num_samples=5", "--config.sample.batch_size=8", "--config.eval.num_examples=8",
          "--config.eval.batch_size=8", "--config.eval.timesteps_per_example=2",
          f"--config.train.num_steps={num_steps}"]


class Result:
  def __init__(self, code, out, err):
    self.code, self.out, self.err = code, out, err

  @property
  def error_lines(self):
    return [line for line in self.err.splitlines() if line.startswith("ddpm-jax: error:")]

  def __repr__(self):
    return f"exit {self.code}\n--- stdout:\n{self.out[-3000:]}\n--- stderr:\n{self.err[-3000:]}"


@pytest.fixture
def run_cli(capfd):
  """Runs the command line in this process: run_cli(*args) -> Result(exit status, stdout, stderr)."""
  def run(*args):
    capfd.readouterr()
    try:
      cli.run(["ddpm-jax", *map(str, args)])
      code = 0
    except SystemExit as e:
      code = 0 if e.code is None else e.code
    out, err = capfd.readouterr()
    return Result(code, out, err)
  return run


def snapshot(path):
  """{relative path: sha256} of every file under `path` (what a refused run must leave unchanged)."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def copy_run(straight_run, tmp_path, name):
  _, workdir, _ = straight_run
  target = tmp_path / name
  shutil.copytree(workdir, target)
  return target


def final_params(data_root, workdir, step=6):
  """(params, ema_params) of `workdir`'s checkpoint `step`, as host arrays."""
  exp = experiment.Experiment(tiny_config(data_root, num_steps=6))
  return tuple(jax.device_get(exp.restore_params(str(workdir), step=step, use_ema=ema)[1])
               for ema in (False, True))


def assert_bit_identical(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def loss_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["step"] for line in f if '"loss"' in line]


def test_tiny_args_give_the_tiny_config(data_root):
  cli._parse_flags(["ddpm-jax", *tiny_args(data_root), "--workdir=/tmp/x"])
  assert cli.FLAGS.config.to_dict() == tiny_config(data_root, num_steps=6).to_dict()


# ------------------------------------------------------------------------------------------------------------
# Crash during a checkpoint write, the lock, and resuming.
# ------------------------------------------------------------------------------------------------------------

# A training run whose step-4 checkpoint write never finishes: the background write stalls (so step 4 is
# never committed) and the main thread waits after starting it, holding the workdir's lock, to be killed.
_STALLED_SAVE_DRIVER = textwrap.dedent("""
    import os, sys, time
    import jax
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))
    import orbax.checkpoint as ocp
    from ddpm_jax import checkpointing, main

    marker = sys.argv[1]
    json_save = ocp.JsonCheckpointHandler._save_fn

    async def stalled_json_save(self, item, directory):  # runs in Orbax's background thread
      if item.get("step") == 4:
        time.sleep(3600)
      return await json_save(self, item, directory)

    ocp.JsonCheckpointHandler._save_fn = stalled_json_save
    save = checkpointing.CheckpointManager.save

    def save_then_wait(self, step, *args, **kwargs):
      started = save(self, step, *args, **kwargs)
      if step == 4:
        with open(marker + ".tmp", "w") as f:
          f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        time.sleep(3600)
      return started

    checkpointing.CheckpointManager.save = save_then_wait
    main.run(["ddpm-jax"] + sys.argv[2:])
""")


def test_kill_9_during_a_save_lock_then_resume_bit_exact(data_root, straight_run, tmp_path, run_cli):
  workdir, marker = tmp_path / "killed", tmp_path / "saving_step_4"
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  with open(tmp_path / "driver.out", "wb") as out, open(tmp_path / "driver.err", "wb") as err:
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_SAVE_DRIVER, str(marker), *tiny_args(data_root),
                             f"--workdir={workdir}"], env=env, stdout=out, stderr=err)
  try:
    deadline = time.monotonic() + _SUBPROCESS_TIMEOUT_S
    while not marker.exists():
      assert proc.poll() is None and time.monotonic() < deadline, (
          f"the training subprocess ended or timed out before saving step 4 (exit {proc.poll()}):\n"
          + (tmp_path / "driver.err").read_text(errors="replace")[-4000:])
      time.sleep(0.2)
    assert int(marker.read_text()) == proc.pid
    holder = json.loads((workdir / ".lock").read_text())
    assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()

    # A second run on the workdir in use: refused at once, naming the holder; nothing changes (but the
    # holder's own checkpoint write in progress).
    def files():
      return {k: v for k, v in snapshot(workdir).items() if ".orbax-checkpoint-tmp" not in k}
    before = files()
    second = run_cli(*tiny_args(data_root), f"--workdir={workdir}")
    assert second.code == 2, second
    assert len(second.error_lines) == 1 and "Traceback" not in second.err, second
    assert f"is in use by another run (pid {proc.pid} on host {socket.gethostname()}, started" in second.err
    assert files() == before

    proc.send_signal(signal.SIGKILL)  # mid-save: step 4's arrays are written, its commit never happens
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4.orbax-checkpoint-tmp"]

  # The same command again: takes over the dead process's lock, resumes from step 2, ends like the
  # uninterrupted run, bit for bit, and metrics.jsonl has every step once.
  resumed = run_cli(*tiny_args(data_root), f"--workdir={workdir}")
  assert resumed.code == 0, resumed
  assert f"Took over the lock of a run that is gone (pid {proc.pid} on host" in resumed.out
  assert "Resumed from" in resumed.out and "at step 2 (verified)" in resumed.out
  assert not (workdir / ".lock").exists()
  assert_bit_identical(final_params(data_root, workdir), final_params(data_root, straight_run[1]))
  assert loss_steps(workdir) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------------------------
# Damaged checkpoints.
# ------------------------------------------------------------------------------------------------------------


def _array_files(step_dir):
  """The OCDBT data files of a step's state item, largest first."""
  files = [os.path.join(root, f) for root, _, fs in os.walk(step_dir / "state") for f in fs
           if os.path.basename(root) == "d"]
  return sorted(files, key=os.path.getsize, reverse=True)


def test_random_bytes_in_the_newest_checkpoint_fall_back_to_the_previous_one(data_root, straight_run, tmp_path,
                                                                             run_cli):
  workdir = copy_run(straight_run, tmp_path, "random_bytes")
  target = _array_files(workdir / "checkpoints" / "6")[0]
  size = os.path.getsize(target)
  with open(target, "r+b") as f:
    f.seek(size // 2 - 2048)
    f.write(np.random.default_rng(17).bytes(4096))
  result = run_cli(*tiny_args(data_root), f"--workdir={workdir}")
  assert result.code == 0, result
  assert "Traceback" not in result.err, result
  assert f"Checkpoint step 6 is unusable (checkpoint {workdir}/checkpoints/6 is corrupt: " in result.out
  assert "Fell back to step 4, the newest checkpoint that verifies." in result.out
  aside = os.listdir(workdir / "checkpoints_set_aside")
  assert len(aside) == 1 and aside[0].startswith("6-corrupt-")  # moved, not deleted
  assert_bit_identical(final_params(data_root, workdir), final_params(data_root, straight_run[1]))
  assert loss_steps(workdir) == [1, 2, 3, 4, 5, 6]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["step"] == 6 and np.isfinite(summary["test_bpd"])


def test_truncated_checkpoint_files_are_refused_by_name(data_root, straight_run, tmp_path, run_cli):
  workdir = copy_run(straight_run, tmp_path, "truncated")
  for path in _array_files(workdir / "checkpoints" / "6"):
    os.truncate(path, os.path.getsize(path) // 2)
  before = snapshot(workdir)
  result = run_cli(*tiny_args(data_root), f"--workdir={workdir}", "--mode=sample")
  assert result.code == 1, result
  assert "Traceback" not in result.err and len(result.error_lines) == 1, result
  assert f"checkpoint {workdir}/checkpoints/6 is corrupt" in result.error_lines[0]
  assert "Available steps: [4, 6]; pass step= to restore an earlier one (--step N" in result.err
  assert snapshot(workdir) == before


def test_a_failed_background_write_stops_the_run_naming_the_last_good_step(data_root, straight_run, tmp_path,
                                                                           run_cli, monkeypatch):
  workdir = copy_run(straight_run, tmp_path, "disk_full")
  summary = (workdir / "summary.json").read_bytes()
  from etils import epath  # pylint: disable=g-import-not-at-top
  path_class = type(epath.Path("/"))
  write_text = path_class.write_text

  def failing_write_text(self, *args, **kwargs):  # Orbax writes step 5's metadata in its background thread
    if "/5.orbax-checkpoint-tmp/metadata" in str(self):
      raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(path_class, "write_text", failing_write_text)
  # Back to step 4 (step 6 moved aside, not deleted), saving every step: step 5's write fails.
  result = run_cli(*tiny_args(data_root), f"--workdir={workdir}", "--step=4", "--discard_later",
                   "--config.train.checkpoint_every=1")
  assert result.code == 1, result
  assert "--discard_later: moved checkpoint step 6 to" in result.out and "at step 4 (verified)" in result.out
  assert "Traceback" not in result.err and len(result.error_lines) == 1, result
  assert (f"ddpm-jax: error: writing checkpoint step 5 to {workdir}/checkpoints failed: OSError: [Errno 28] "
          "No space left on device") in result.err
  assert "the last committed checkpoint is step 4 (intact)" in result.err
  assert [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()] == ["4"]
  assert [d.split("-")[:2] for d in os.listdir(workdir / "checkpoints_set_aside")] == [["6", "discarded"]]
  assert (workdir / "summary.json").read_bytes() == summary and not (workdir / ".lock").exists()


def test_allow_config_change_resumes_another_experiments_checkpoint(data_root, bad_input_workdir, run_cli):
  before = snapshot(bad_input_workdir)
  result = run_cli(*tiny_args(data_root), f"--workdir={bad_input_workdir}", "--config.diffusion.mse_weight=x0",
                   "--allow_config_change")
  assert result.code == 0, result
  assert ("--allow_config_change: resuming step 6 of" in result.out
          and "with other fields: diffusion.mse_weight: 'eps' → 'x0'." in result.out), result
  assert "already trained to step 6" in result.out  # and so nothing to do: nothing written
  assert snapshot(bad_input_workdir) == before


# ------------------------------------------------------------------------------------------------------------
# Bad inputs: one line, the right exit status, no traceback, nothing changed.
# ------------------------------------------------------------------------------------------------------------

_W = "{workdir}"  # replaced by a copy of the trained run
_FILE = "{a_file}"  # replaced by a path to an existing plain file

# (case id, the flags after the tiny config's (or None: only these flags), exit status, message regex)
BAD_INPUTS = [
    ("missing config file", None, ["--config=nope.py", f"--workdir={_W}"], 2,
     r"--config='nope.py' is neither a config file nor a shipped config name"),
    ("empty config", None, ["--config=", f"--workdir={_W}"], 2, r"--config='' is empty"),
    ("unknown config variant", None, ["--config=mnist_mu:fast", f"--workdir={_W}"], 2,
     r"--config=.*mnist_mu.py:fast: config variant 'fast' is not known; accepted: runlocal"),
    ("config file with a syntax error", None, ["--config={syntax_error}", f"--workdir={_W}"], 2,
     r"--config: .*syntax_error.py line 1 is not valid Python"),
    ("config file without get_config", None, ["--config={no_get_config}", f"--workdir={_W}"], 2,
     r"the config file has no get_config\(\) function"),
    ("get_config returns None", None, ["--config={returns_none}", f"--workdir={_W}"], 2,
     r"get_config\(\) returned None"),
    ("unknown field, close match", [], ["--config.train.num_step=3"], 2,
     r"config.train.num_step is not a field; did you mean config.train.num_steps\?"),
    ("unknown section", [], ["--config.trian.num_steps=3"], 2, r"config.trian is not a field; did you mean "
     r"config.train\?"),
    ("unknown field, no close match", [], ["--config.model.foo=1"], 2,
     r"config.model.foo is not a field; the fields of config.model are: attn_resolutions, ch"),
    ("field of the wrong type", [], ["--config.train.batch_size=abc"], 2,
     r"flag --config.train.batch_size=abc: invalid literal for int"),
    ("unknown flag", [], ["--num_stpes=3"], 2, r"Unknown command line flag 'num_stpes'"),
    ("unknown mode", [], ["--mode=fit"], 2, r"flag --mode=fit: value should be one of <train\|sample"),
    ("missing --workdir", None, ["--config=mnist_mu:runlocal"], 2, r"Flag --workdir must have a value"),
    ("empty --workdir", [], ["--workdir="], 2, r"--workdir='' is invalid: expected a local folder"),
    ("workdir is a file", [], [f"--workdir={_FILE}"], 2, r"exists and is not a folder"),
    ("workdir cannot be created", [], ["--workdir=/sys/ddpm_jax_fault_test/run"], 2,
     r"cannot create --workdir /sys/ddpm_jax_fault_test/run: "),
    ("stray argument", [], ["train"], 2, r"unexpected arguments \['train'\]"),
    ("T = 1", [], ["--config.diffusion.num_timesteps=1"], 2,
     r"config.diffusion.num_timesteps=1 is invalid: expected an integer >= 2"),
    ("beta_start > beta_end", [], ["--config.diffusion.beta_start=0.5"], 2,
     r"config.diffusion.beta_start=0.5 is invalid: expected at most diffusion.beta_end=0.02"),
    ("beta_end > 1", [], ["--config.diffusion.beta_end=1.5"], 2,
     r"config.diffusion.beta_end=1.5 is invalid: expected a number in \(0.0, 1.0\]"),
    ("beta_start = 0", [], ["--config.diffusion.beta_start=0"], 2,
     r"config.diffusion.beta_start=0.0 is invalid: expected a number in \(0.0, 1.0\]"),
    ("batch size 0", [], ["--config.train.batch_size=0"], 2,
     r"config.train.batch_size=0 is invalid: expected an integer >= 1"),
    ("train batch not divisible by the devices", [], ["--config.train.batch_size=12"], 2,
     r"config.train.batch_size=12 is invalid: it must be divisible by the number of devices \(8\)"),
    ("eval batch not divisible by the devices", [], ["--config.eval.batch_size=12"], 2,
     r"config.eval.batch_size=12 is invalid: it must be divisible by the number of devices \(8\)"),
    ("unknown mean type", [], ["--config.diffusion.mean_type=mean"], 2,
     r"config.diffusion.mean_type='mean' is invalid: expected one of 'xprev'"),
    ("negative learning rate", [], ["--config.optim.learning_rate=-1"], 2,
     r"config.optim.learning_rate=-1.0 is invalid"),
    ("data_dir is a file", [], [f"--config.data.data_dir={_FILE}"], 2,
     r"config.data.data_dir=.* is invalid: expected a folder"),
    ("split that does not exist", [], ["--config.data.train_split=validation", "--config.train.num_steps=8"],
     2, r"split 'validation' does not exist in dataset 'mnist5k'; available splits: \['test', 'train'\]"),
    ("dataset not prepared", [], ["--config.data.name=cifar10", "--workdir={fresh_dir}"], 2,
     r"Dataset 'cifar10' .* is not prepared in data dir"),
    ("another variance type", [], ["--config.diffusion.var_type=fixedlarge"], 2,
     r"diffusion.var_type: 'fixedsmall' → 'fixedlarge'"),
    ("missing Inception weights", [], ["--config.eval.inception_weights=/nonexistent/fid.npz"], 2,
     r"config.eval.inception_weights='/nonexistent/fid.npz' is invalid: expected an existing file"),
    ("another experiment's workdir", [],
     ["--config.diffusion.mean_type=eps", "--config.diffusion.mse_weight=none", "--config.data.image_size=32"],
     2, r"belong to another experiment; fields that differ \(checkpoint → this command\): data.image_size: "
     r"None → 32; diffusion.mean_type: 'xprev' → 'eps'; diffusion.mse_weight: 'eps' → 'none'"),
    ("another network", [], ["--config.model.ch=64"], 2, r"model.ch: 32 → 64"),
    ("num_steps below the checkpoint", [], ["--config.train.num_steps=4"], 2,
     r"config.train.num_steps=4 is below the step of the checkpoint to resume \(6 in .*\): nothing to train"),
    ("--step with later checkpoints", [], ["--step=4"], 2,
     r"--step 4: .* holds later checkpoints \[6\]; add --discard_later"),
    ("--step that does not exist", [], ["--step=5"], 2, r"--step 5: no such checkpoint .* available steps: "
     r"\[4, 6\]"),
    ("sample --step that does not exist", [], ["--mode=sample", "--step=99"], 2,
     r"no checkpoint for step 99 in .*; available steps: \[4, 6\]"),
    ("negative --step", [], ["--mode=sample", "--step=-1"], 2, r"--step=-1 is invalid"),
    ("--step for a sweep", [], ["--mode=sweep", "--step=4"], 2, r"--mode sweep takes --steps"),
    ("--steps that are not steps", [], ["--mode=sweep", "--steps=x:y"], 2, r"--steps='x:y' is invalid"),
    ("--steps without sweep", [], ["--mode=eval", "--steps=4"], 2, r"--steps applies to --mode sweep"),
    ("--discard_later without --step", [], ["--discard_later"], 2, r"--discard_later needs --step N"),
    ("--params in train mode", [], ["--params=/nonexistent"], 2, r"--params applies to --mode sample"),
    ("--params that does not exist", [], ["--mode=sample", "--params=/nonexistent"], 2,
     r"--params /nonexistent does not exist"),
    ("--params with --step", [], ["--mode=sample", "--params=/nonexistent", "--step=4"], 2,
     r"--step=4 selects a workdir checkpoint, but --params"),
    ("sample without checkpoints", [], ["--mode=sample", "--workdir={empty_dir}"], 2,
     r"--workdir .*empty holds no checkpoints/ folder: train first"),
    ("eval of a workdir that does not exist", [], ["--mode=eval", "--workdir={missing_dir}"], 2,
     r"--workdir .*missing does not exist: train first"),
    ("workdir locked by a live process", [], ["--workdir={locked_dir}"], 2,
     r"--workdir .*locked is in use by another run \(pid \d+ on host .*, started 2026-01-01 00:00:00"),
    ("workdir locked from another host", [], ["--workdir={other_host_dir}"], 2,
     r"is in use by another run \(pid 1 on host elsewhere.example"),
    ("distributed flags incomplete", [], ["--coordinator_address=localhost:1234"], 2,
     r"--coordinator_address needs --num_processes and --process_id"),
]


@pytest.fixture(scope="module")
def bad_input_paths(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_inputs")
  (root / "a_file").write_text("not a folder")
  (root / "syntax_error.py").write_text("def get_config(:\n")
  (root / "no_get_config.py").write_text("x = 1\n")
  (root / "returns_none.py").write_text("def get_config(arg=None):\n  return None\n")
  (root / "empty").mkdir()
  for name, holder in (("locked", {"pid": os.getpid(), "host": socket.gethostname()}),
                       ("other_host", {"pid": 1, "host": "elsewhere.example"})):
    (root / name).mkdir()
    (root / name / ".lock").write_text(json.dumps(dict(holder, started="2026-01-01 00:00:00")))
  return {"a_file": root / "a_file", "syntax_error": root / "syntax_error.py",
          "no_get_config": root / "no_get_config.py", "returns_none": root / "returns_none.py",
          "empty_dir": root / "empty", "missing_dir": root / "missing", "fresh_dir": root / "fresh",
          "locked_dir": root / "locked",
          "other_host_dir": root / "other_host"}


@pytest.fixture(scope="module")
def bad_input_workdir(straight_run, tmp_path_factory):
  return copy_run(straight_run, tmp_path_factory.mktemp("bad_input_run"), "run")


def test_at_least_30_bad_inputs_are_listed():
  assert len(BAD_INPUTS) >= 30 and len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("name, base, args, status, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_with_its_exit_status_and_changes_nothing(
    name, base, args, status, message, data_root, bad_input_workdir, bad_input_paths, run_cli):
  del name
  if "/sys/" in " ".join(args) and os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
    pytest.skip("/sys is writable here")
  values = {k: str(v) for k, v in bad_input_paths.items()}
  values["workdir"] = str(bad_input_workdir)
  argv = [a.format(**values) for a in args]
  if base is not None:  # the tiny config on the trained workdir, then the case's flags (later ones win)
    argv = tiny_args(data_root) + [f"--workdir={bad_input_workdir}"] + argv
  watched = [bad_input_workdir] + [p for p in bad_input_paths.values() if os.path.isdir(p)]
  before = [snapshot(p) for p in watched]
  result = run_cli(*argv)
  assert result.code == status, result
  assert "Traceback" not in result.err, result
  assert len(result.error_lines) == 1, result
  import re  # pylint: disable=g-import-not-at-top
  assert re.search(message, result.err), result
  assert [snapshot(p) for p in watched] == before, "a refused run changed files"
  assert not os.path.exists(bad_input_paths["missing_dir"]) and not os.path.exists(bad_input_paths["fresh_dir"])
  assert not os.path.exists("/sys/ddpm_jax_fault_test")


def test_unexpected_errors_keep_their_traceback_and_verbose_shows_ours(tmp_path, run_cli, monkeypatch):
  buggy = tmp_path / "buggy.py"
  buggy.write_text("def get_config(arg=None):\n  return undefined_name\n")
  with pytest.raises(NameError):  # not turned into a one-line error: the interpreter prints its traceback
    run_cli(f"--config={buggy}", f"--workdir={tmp_path / 'w'}")
  verbose = run_cli("--config=mnist_mu:runlocal", f"--workdir={tmp_path / 'w'}",
                    "--config.diffusion.num_timesteps=1", "--verbose")
  assert verbose.code == 2 and "Traceback" in verbose.err, verbose
  assert verbose.error_lines == ["ddpm-jax: error: config.diffusion.num_timesteps=1 is invalid: expected an "
                                 "integer >= 2."]
  monkeypatch.setenv(cli.VERBOSE_ENV, "1")
  by_env = run_cli("--config=mnist_mu:runlocal", f"--workdir={tmp_path / 'w'}", "--config.train.num_step=1")
  assert by_env.code == 2 and "Traceback" in by_env.err, by_env
  assert not (tmp_path / "w").exists()
