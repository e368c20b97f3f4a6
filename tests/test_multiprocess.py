"""Multi-process training on a local CPU cluster: two processes × 2 devices against one process × 4 devices.

tests/multiprocess_driver.py runs `train.train_and_evaluate` (tiny config, global batch 8) as a subprocess:
twice as a 2-process cluster on 127.0.0.1 (gloo collectives, 2 CPU devices each, one shared workdir), and
once alone on 4 CPU devices, all three at the same time. Each process dumps its own device copies of the
final parameters and, for every step, the positions and pixel sums of the global-batch rows it held.

Checked:
  * the cluster is one run: both processes, and every device in them, end with bit-identical parameters;
    metrics.jsonl holds each step once (process 0 alone writes it);
  * per-process data sharding rebuilds exactly the one-process global batch, step by step (an exact
    check of the data, independent of arithmetic);
  * the cluster trains like the one-process run: the same losses per step and the same test bits/dim, and
    final parameters equal up to float32 rounding. They are not bit-identical, by design: XLA:CPU sums a
    cross-device all-reduce in device order inside one process, but across processes the gloo
    collectives use a ring reduce-scatter, which sums each quarter of the gradient starting from a
    different device. The few-ulp gradient differences this leaves are then scaled by Adam (m / √v is
    sensitive where the gradient is near zero), hence the absolute tolerance below (a few 1e-6 seen for
    three lr ≤ 6e-4 updates);
  * the cluster's checkpoint restores in this (8-device, one-process) pytest process with
    `Experiment.restore_params`, bit-identical to the cluster's final parameters.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from ddpm_jax import experiment
from ddpm_jax.data import pipeline

from tiny import tiny_config

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_driver.py")
NUM_STEPS = 4
TIMEOUT_S = 300  # per subprocess; a cold compilation cache on 2 busy cores needs ~100 s
# Final parameters, one-process vs cluster: float32 rounding of the gradient all-reduce, through Adam.
PARAMS_ATOL = 5e-5
PARAMS_RTOL = 1e-5


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_local_devices):
  env = dict(os.environ)
  env.pop("DDPM_JAX_DISTRIBUTED", None)
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_local_devices}")
  return env


class _Procs:
  """Subprocesses started together, waited for under one deadline, reported together when one fails."""

  def __init__(self, tmp_path):
    self._tmp = tmp_path
    self._procs = {}

  def start(self, name, args, num_local_devices):
    out = open(self._tmp / f"{name}.out", "wb")
    err = open(self._tmp / f"{name}.err", "wb")
    proc = subprocess.Popen([sys.executable, DRIVER, *args], env=_env(num_local_devices), stdout=out,
                            stderr=err)
    self._procs[name] = (proc, out, err)

  def _report(self, why):
    lines = [why]
    for name, (proc, _, _) in self._procs.items():
      lines.append(f"----- {name}: exit code {proc.returncode}")
      for kind in ("out", "err"):
        text = (self._tmp / f"{name}.{kind}").read_text(errors="replace").replace("\r", "\n")
        lines.append(f"--- {name} std{kind} (last 6000 characters):\n{text[-6000:]}")
    return "\n".join(lines)

  def wait(self, timeout_s):
    """Waits for all; if one fails, the others are stopped at once (a cluster peer would hang)."""
    deadline = time.monotonic() + timeout_s
    try:
      while True:
        codes = {name: proc.poll() for name, (proc, _, _) in self._procs.items()}
        failed = [name for name, code in codes.items() if code not in (None, 0)]
        if failed:
          self._kill()
          raise AssertionError(self._report(f"subprocess(es) {failed} failed"))
        if all(code == 0 for code in codes.values()):
          return
        if time.monotonic() > deadline:
          self._kill()
          running = [name for name, code in codes.items() if code is None]
          raise AssertionError(self._report(f"subprocess(es) {running} still running after {timeout_s} s"))
        time.sleep(0.2)
    finally:
      for _, out, err in self._procs.values():
        out.close()
        err.close()

  def _kill(self):
    for proc, _, _ in self._procs.values():
      if proc.poll() is None:
        proc.kill()
    for proc, _, _ in self._procs.values():
      proc.wait()


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _losses(records):
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == list(range(1, NUM_STEPS + 1)), f"one loss record per step expected; got steps {steps}"
  return np.asarray([r["loss"] for r in records if "loss" in r])


def _global_batches(dumps):
  """[steps, B] pixel sums of each step's global batch, assembled from the processes' rows."""
  first = dumps[0]["batch_sums"]
  size = sum(d["batch_index"].shape[1] for d in dumps)
  out = np.full((first.shape[0], size), np.nan)
  for d in dumps:
    assert (d["batch_index"] == d["batch_index"][0]).all(), "a process changed its rows between steps"
    out[:, d["batch_index"][0]] = d["batch_sums"]
  assert not np.isnan(out).any(), "the processes' rows do not cover the global batch"
  return out


def test_two_process_cpu_cluster_matches_one_process_and_its_checkpoint_restores(data_root, tmp_path):
  config = tiny_config(data_root, num_steps=NUM_STEPS)
  assert config.train.batch_size == 8 and config.train.steps_per_call == 1
  # Prepare the bundled digits once, here: the three subprocesses then only read them.
  pipeline.get_image_shape(config.data)

  cluster_dir, single_dir = str(tmp_path / "cluster"), str(tmp_path / "single")
  cluster_out, single_out = str(tmp_path / "cluster_out"), str(tmp_path / "single_out")
  common = ["--data_root", str(data_root), "--num_steps", str(NUM_STEPS)]
  address = f"127.0.0.1:{_free_port()}"
  procs = _Procs(tmp_path)
  for pid in range(2):
    procs.start(f"cluster_process_{pid}",
                common + ["--workdir", cluster_dir, "--out", cluster_out, "--coordinator_address", address,
                          "--num_processes", "2", "--process_id", str(pid)], num_local_devices=2)
  procs.start("single_process", common + ["--workdir", single_dir, "--out", single_out], num_local_devices=4)
  procs.wait(TIMEOUT_S)

  p0, p1 = (dict(np.load(os.path.join(cluster_out, f"process_{i}.npz"))) for i in range(2))
  single = dict(np.load(os.path.join(single_out, "process_0.npz")))
  for pid, d in enumerate((p0, p1)):
    assert (int(d["process_index"]), int(d["process_count"]), int(d["device_count"]),
            int(d["local_device_count"]), int(d["step"])) == (pid, 2, 4, 2, NUM_STEPS)
  assert (int(single["process_count"]), int(single["device_count"]), int(single["step"])) == (1, 4, NUM_STEPS)

  # One run: every device of both processes holds the same bits.
  reference = p0["params_0"]
  for d in (p0, p1):
    for j in range(2):
      np.testing.assert_array_equal(d[f"params_{j}"], reference)
      np.testing.assert_array_equal(d[f"ema_{j}"], p0["ema_0"])
  s0, s1 = (_read_json(os.path.join(cluster_out, f"summary_{i}.json")) for i in range(2))
  assert s0["test_bpd"] == s1["test_bpd"] and s0["test_num_examples"] == 8
  assert os.path.exists(os.path.join(cluster_dir, "summary.json"))
  assert os.path.exists(os.path.join(cluster_dir, "samples.png"))

  # The same global batches, exactly: process p holds rows [4p, 4p + 4) of what one process reads alone.
  np.testing.assert_array_equal(p0["batch_index"][0], np.arange(4))
  np.testing.assert_array_equal(p1["batch_index"][0], np.arange(4, 8))
  np.testing.assert_array_equal(_global_batches([p0, p1]), _global_batches([single]))

  # The same training: losses per step (written once, by process 0), bits/dim, final parameters.
  cluster_losses, single_losses = _losses(_metrics(cluster_dir)), _losses(_metrics(single_dir))
  np.testing.assert_allclose(cluster_losses, single_losses, rtol=1e-5)
  single_summary = _read_json(os.path.join(single_out, "summary_0.json"))
  np.testing.assert_allclose(s0["test_bpd"], single_summary["test_bpd"], rtol=1e-4)
  for name in ("params_0", "ema_0"):
    np.testing.assert_allclose(p0[name], single[name], rtol=PARAMS_RTOL, atol=PARAMS_ATOL,
                               err_msg=f"{name}: cluster vs one process")

  # The cluster's checkpoint restores here: one process, 8 devices.
  assert jax.process_count() == 1 and jax.device_count() == 8
  exp = experiment.Experiment(config)
  step, params = exp.restore_params(cluster_dir, use_ema=False)
  _, ema_params = exp.restore_params(cluster_dir, use_ema=True)
  assert step == NUM_STEPS
  assert len(params["conv_in"]["kernel"].sharding.device_set) == 8
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  assert paths == list(p0["leaf_paths"])
  np.testing.assert_array_equal(_flat(params), reference)
  np.testing.assert_array_equal(_flat(ema_params), p0["ema_0"])

  # The tolerance above is tight where it matters: training moved the parameters (lr > 0 from step 2) far
  # more than it (about 1.2e-3 against 5e-5; the two runs differ by at most about 5e-6).
  moved = np.abs(single["params_0"] - _flat(exp.init_params(experiment.init_and_run_keys(config.seed)[0]))).max()
  assert moved > 20 * PARAMS_ATOL, moved


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(jax.device_get(tree))])
