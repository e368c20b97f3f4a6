r"""One process of a (possibly multi-process) tiny training run on CPU, for tests/test_multiprocess.py.

  python tests/multiprocess_driver.py --data_root D --workdir W --out O --num_steps N \
      [--coordinator_address 127.0.0.1:PORT --num_processes 2 --process_id I]

The parent sets the environment before JAX starts: JAX_PLATFORMS=cpu, the local device count
(XLA_FLAGS=--xla_force_host_platform_device_count=n) and JAX_COMPILATION_CACHE_DIR. With
--coordinator_address the process joins the cluster the way the command line does
(`ddpm_jax.main.initialize_distributed`, from the same flags), with gloo as the CPU collectives.

It runs `train.train_and_evaluate(tiny_config(D, num_steps=N), W)` and writes O/process_<I>.npz:
  params_<j>, ema_<j>   the final parameters / EMA parameters as held on local device j (every leaf flattened,
                        float64, concatenated in tree order), for each of this process's devices;
  leaf_paths            the leaves' paths, in that order;
  batch_index, batch_sums
                        for every step and every example of the global batch this process holds, its
                        position in the global batch and the float64 sum of its pixels (so the test can
                        rebuild each step's global batch from the processes' parts);
  process_index, process_count, device_count, local_device_count;
and O/summary_<I>.json, the summary `train_and_evaluate` returned. The final state is taken from the
compiled train step, wrapped here (the train loop keeps it to itself).
"""

import argparse
import json
import os
import pathlib
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_root", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_steps", type=int, required=True)
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  return parser.parse_args(argv)


def _join_cluster(args):
  """Joins through the command line's own code path: main.py's flags and `initialize_distributed`."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddpm_jax import main  # pylint: disable=g-import-not-at-top
  # Cross-process collectives on CPU; gloo is jax 0.10's default, set here so that a jaxlib without it
  # fails at once instead of at the first collective.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  main.FLAGS([sys.argv[0], f"--config={os.path.join(REPO, 'configs', 'mnist_mu.py')}:runlocal",
              f"--workdir={args.workdir}", f"--coordinator_address={args.coordinator_address}",
              f"--num_processes={args.num_processes}", f"--process_id={args.process_id}"])
  main.initialize_distributed()
  if jax.process_count() != args.num_processes or jax.process_index() != args.process_id:
    raise RuntimeError(f"joined as process {jax.process_index()} of {jax.process_count()}; expected "
                       f"{args.process_id} of {args.num_processes}")


def _local_copies(tree):
  """{local device index: float64 vector of every leaf's copy on that device}, for a replicated tree."""
  import jax  # pylint: disable=g-import-not-at-top
  per_device = {}
  for leaf in jax.tree.leaves(tree):
    if not leaf.sharding.is_fully_replicated:
      raise AssertionError(f"parameter {leaf.shape} is not replicated: {leaf.sharding}")
    shards = sorted(leaf.addressable_shards, key=lambda s: s.device.id)
    for j, shard in enumerate(shards):
      per_device.setdefault(j, []).append(np.asarray(shard.data, np.float64).ravel())
  return {j: np.concatenate(parts) for j, parts in per_device.items()}


def main(argv):
  args = _parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))
  if args.coordinator_address:
    _join_cluster(args)

  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, TESTS)
  from tiny import tiny_config  # pylint: disable=g-import-not-at-top

  captured = {"state": None, "batch_index": [], "batch_sums": []}
  compile_train_step = train.compile_train_step

  def capturing_compile_train_step(*a, **kw):
    step_fn = compile_train_step(*a, **kw)

    def step(state, batches):
      # This process's part of the global batch: its rows' positions and pixel sums (host data, no
      # collective). Batches are [k, B, H, W, C], sharded on B.
      index, sums = [], []
      for shard in batches["image"].addressable_shards:
        rows = shard.index[1]
        data = np.asarray(shard.data, np.float64)
        index.append(np.arange(rows.start or 0, rows.stop or batches["image"].shape[1]))
        sums.append(data.reshape(data.shape[0], data.shape[1], -1).sum(-1))
      captured["batch_index"].append(np.concatenate(index))
      captured["batch_sums"].append(np.concatenate(sums, axis=1))
      new_state, metrics = step_fn(state, batches)
      captured["state"] = new_state
      return new_state, metrics
    return step

  train.compile_train_step = capturing_compile_train_step
  config = tiny_config(pathlib.Path(args.data_root), num_steps=args.num_steps)
  summary = train.train_and_evaluate(config, args.workdir)
  state = captured["state"]
  if state is None:
    raise RuntimeError("train_and_evaluate never called the train step")

  pid = jax.process_index()
  os.makedirs(args.out, exist_ok=True)
  params, ema = _local_copies(state.params), _local_copies(state.ema_params)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]
  np.savez(os.path.join(args.out, f"process_{pid}.npz"),
           **{f"params_{j}": v for j, v in params.items()}, **{f"ema_{j}": v for j, v in ema.items()},
           leaf_paths=np.asarray(paths), step=int(jax.device_get(state.step)),
           batch_index=np.stack(captured["batch_index"]), batch_sums=np.concatenate(captured["batch_sums"]),
           process_index=pid, process_count=jax.process_count(), device_count=jax.device_count(),
           local_device_count=jax.local_device_count())
  with open(os.path.join(args.out, f"summary_{pid}.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, default=str)
  print(f"process {pid} of {jax.process_count()}: done, step {summary['step']}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
