r"""Bits/dim throughput: images/s through the full variational bound (all T terms, `calc_bpd_loop`).

Uses the project's `ddpm_jax.likelihood.make_bpd_fn(exp, full_bound=True)` on synthetic
batches, the way `evaluate_bpd` drives it (a fold_in key per batch, per-example values gathered to the host),
with random-init parameters: the cost does not depend on the weights, and the bits/dim value means nothing.
`--bound estimate` times the cheaper unbiased estimate used while training (eval.timesteps_per_example
timesteps per image) instead.

  python benchmarks/bpd_throughput.py                     # CPU-sized default
  python benchmarks/bpd_throughput.py --preset cifar10    # one GPU / TPU, eval batch 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ddpm_jax` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # measure what the CLI runs: the heap on transparent huge pages (ddpm_jax/hugepages.py)
  from ddpm_jax import hugepages  # noqa: E402  pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()

import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddpm_jax import experiment as experiment_lib  # noqa: E402
from ddpm_jax import likelihood  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser)
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Images per call (config.eval.batch_size; the CIFAR-10 preset's is 128).")
  parser.add_argument("--num_batches", type=int, default=None,
                      help="Timed batches (default: 3 on an accelerator, 1 on CPU).")
  parser.add_argument("--warmup_batches", type=int, default=None,
                      help="Untimed batches after compiling (default: 1 on an accelerator, 0 on CPU).")
  parser.add_argument("--bound", choices=("full", "estimate"), default="full",
                      help="full: all T terms of the bound (default); estimate: eval.timesteps_per_example "
                           "sampled terms per image.")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  config, source = common.build_config(args, **{"eval.batch_size": args.batch_size})
  num_batches = args.num_batches or (3 if common.on_accelerator() else 1)
  warmup = args.warmup_batches if args.warmup_batches is not None else (1 if common.on_accelerator() else 0)
  if num_batches < 1 or warmup < 0:
    raise ValueError(f"--num_batches={num_batches} must be >= 1 and --warmup_batches={warmup} >= 0.")
  full_bound = args.bound == "full"
  exp = common.build_experiment(config, args.num_devices)
  devices = list(exp.mesh.devices.flat)
  batch_size = config.eval.batch_size
  batch = common.synthetic_batch(exp, batch_size, seed=config.seed + experiment_lib.STREAMS["eval"], field="eval.batch_size")
  params = exp.init_params(experiment_lib.init_and_run_keys(config.seed)[0])
  num_params = common.count_params(params)
  bpd_fn = likelihood.make_bpd_fn(exp, full_bound=full_bound)
  key = experiment_lib.stream_key(config.seed, "eval")

  t0 = time.perf_counter()
  compiled = bpd_fn.lower(params, batch, key).compile()
  compile_s = time.perf_counter() - t0

  def one_batch(batch_key):
    per_example = compiled(params, batch, batch_key)
    return np.asarray(multihost_utils.process_allgather(per_example, tiled=True))

  for i in range(warmup):  # keys apart from the timed batches'
    one_batch(jax.random.fold_in(experiment_lib.substream_key(key, "warmup"), i))
  values = []
  t0 = time.perf_counter()
  for i in range(num_batches):
    values.append(one_batch(jax.random.fold_in(key, i)))
  wall_s = time.perf_counter() - t0
  values = np.concatenate(values)
  terms = config.diffusion.num_timesteps if full_bound else config.eval.timesteps_per_example
  images = num_batches * batch_size

  record = {
      "benchmark": "bpd_throughput",
      "bound": "full bound (all T terms)" if full_bound else likelihood.bpd_method(config),
      "terms_per_image": terms,
      "images_per_sec": images / wall_s,
      "batch_time_s": wall_s / num_batches,
      "compile_s": compile_s,
      "wall_s": wall_s,
      "batch_size": batch_size,
      "num_batches": num_batches,
      "warmup_batches": warmup,
      "bpd_finite": bool(np.isfinite(values).all()),
      **common.peak_memory(devices),
      "config": common.config_summary(config, source, exp, num_params),
      "env": common.environment(devices),
      "notes": ["random-init parameters on synthetic images: the bits/dim value is not reported"],
  }
  table = common.format_table(("field", "value"), [
      ("config", source),
      ("parameters", f"{num_params:,}"),
      ("bound", f"{record['bound']}, {terms} model evaluations per image"),
      ("batch × batches", f"{batch_size} × {num_batches} ({config.model.dtype}, {len(devices)} device(s))"),
      ("images/s", common.fmt(record["images_per_sec"])),
      ("time per batch", common.fmt(record["batch_time_s"], "s")),
      ("compile", common.fmt(compile_s, "s")),
      ("peak memory", f"{common.fmt(record['peak_memory_bytes'], 'B')} [{record['peak_memory_kind']}]"),
  ])
  common.emit(record, table, args.out)
  return record


if __name__ == "__main__":
  main()
