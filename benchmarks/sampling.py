r"""Sampling wall time: N images through the full ancestral chain (T steps) and through DDIM (50 steps).

Uses the project's sampler (`ddpm_jax.sampling.make_sample_fn`, one compiled `lax.scan` over the chain, sharded
over the devices on the batch axis) and `generate_samples` (batches of `--batch_size`, gathered to the host),
with random-init parameters: the cost of a chain does not depend on the weights. Compilation is done ahead of
time and reported on its own; the wall time covers drawing all N images and fetching them to the host.

  python benchmarks/sampling.py                      # CPU-sized default (8 images)
  python benchmarks/sampling.py --preset cifar10     # one GPU / TPU: 256 images, 1000 and 50 steps
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ddpm_jax` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # measure what the CLI runs: the heap on transparent huge pages (ddpm_jax/hugepages.py)
  from ddpm_jax import hugepages  # noqa: E402  pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddpm_jax import config_lib  # noqa: E402
from ddpm_jax import experiment as experiment_lib  # noqa: E402
from ddpm_jax import sampling  # noqa: E402
from ddpm_jax import sharding  # noqa: E402

SAMPLERS = ("ancestral", "ddim")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser)
  parser.add_argument("--num_images", type=int, default=None,
                      help="Images to draw per sampler (default: 256 on an accelerator, 8 on CPU).")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Images per compiled call (default: all of --num_images in one batch; rounded "
                           "down to a multiple of the device count, as generate_samples does).")
  parser.add_argument("--samplers", default="ancestral,ddim",
                      help=f"Comma-separated subset of {','.join(SAMPLERS)}.")
  parser.add_argument("--ancestral_steps", type=int, default=0,
                      help="Ancestral chain length (0: all diffusion.num_timesteps steps, the DDPM sampler).")
  parser.add_argument("--ddim_steps", type=int, default=50, help="DDIM chain length (a respaced chain).")
  parser.add_argument("--ddim_eta", type=float, default=0.0, help="DDIM eta (0: deterministic).")
  parser.add_argument("--warmup_batches", type=int, default=None,
                      help="Untimed batches after compiling (default: 1 on an accelerator, 0 on CPU).")
  return parser.parse_args(argv)


def _variant_config(config, sampler: str, steps: int, eta: float, batch_size: int):
  cfg = config.copy_and_resolve_references()
  cfg.sample.sampler = sampler
  cfg.sample.steps = steps
  cfg.sample.eta = eta
  cfg.sample.batch_size = batch_size
  config_lib.validate(cfg)
  return cfg


def main(argv=None) -> dict:
  args = parse_args(argv)
  samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
  unknown = [s for s in samplers if s not in SAMPLERS]
  if not samplers or unknown:
    raise ValueError(f"--samplers={args.samplers!r} is invalid: expected a comma-separated subset of {SAMPLERS}.")
  config, source = common.build_config(args)
  num_images = args.num_images or (256 if common.on_accelerator() else 8)
  warmup = args.warmup_batches if args.warmup_batches is not None else (1 if common.on_accelerator() else 0)
  if num_images < 1 or warmup < 0:
    raise ValueError(f"--num_images={num_images} must be >= 1 and --warmup_batches={warmup} >= 0.")
  exp = common.build_experiment(config, args.num_devices)
  devices = list(exp.mesh.devices.flat)
  n_dev = len(devices)
  batch_size = args.batch_size or num_images
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)  # what generate_samples will use
  num_batches = math.ceil(num_images / batch_size)
  notes = []
  if num_batches * batch_size != num_images:
    notes.append(f"{num_batches} batches of {batch_size} draw {num_batches * batch_size} images; "
                 f"{num_images} are kept")

  params = exp.init_params(experiment_lib.init_and_run_keys(config.seed)[0])
  num_params = common.count_params(params)
  key = experiment_lib.stream_key(config.seed, "sample")
  T = config.diffusion.num_timesteps
  runs = []
  for sampler in samplers:
    if sampler == "ancestral":
      steps, eta = args.ancestral_steps or T, None
    else:
      steps, eta = args.ddim_steps, args.ddim_eta
    cfg = _variant_config(config, sampler, steps if steps != T else 0, eta or 0.0, batch_size)
    sample_fn = sampling.make_sample_fn(exp, cfg)

    t0 = time.perf_counter()
    labels = sampling.sample_labels(cfg, exp.model, num_images)
    batch_labels = None if labels is None else jax.device_put(  # as generate_samples places them
        np.resize(labels, batch_size).astype(np.int32), sharding.batch_sharding(exp.mesh))
    compiled = sample_fn.lower(params, key, batch_size, batch_labels).compile()
    compile_s = time.perf_counter() - t0

    def run(p, k, b, y, compiled=compiled):
      if b != batch_size:
        raise ValueError(f"compiled for batch {batch_size}, called with {b}")
      return compiled(p, k, y)

    if warmup:
      sampling.generate_samples(run, params, key=experiment_lib.substream_key(key, "warmup"),
                                num_samples=warmup * batch_size, batch_size=batch_size, mesh=exp.mesh,
                                labels=labels)
    t0 = time.perf_counter()
    images = sampling.generate_samples(run, params, key=key, num_samples=num_images, batch_size=batch_size,
                                       mesh=exp.mesh, labels=labels)
    wall_s = time.perf_counter() - t0
    runs.append({
        "sampler": sampler,
        "chain_steps": steps,
        "eta": eta,
        "compile_s": compile_s,
        "wall_s": wall_s,
        "images_per_sec": num_images / wall_s,
        "step_time_s": wall_s / (num_batches * steps),  # one chain step of one batch
        "images_finite": bool(np.isfinite(images).all()),
        "output_shape": list(images.shape),
    })

  record = {
      "benchmark": "sampling",
      "num_images": num_images,
      "batch_size": batch_size,
      "num_batches": num_batches,
      "warmup_batches": warmup,
      "runs": runs,
      **common.peak_memory(devices),
      "config": common.config_summary(config, source, exp, num_params),
      "env": common.environment(devices),
      "notes": notes,
  }
  table = common.format_table(
      ("sampler", "chain steps", "images", "batch", "compile", "wall", "images/s", "per chain step"),
      [(r["sampler"] + ("" if r["eta"] is None else f" (eta {r['eta']:g})"), r["chain_steps"], num_images,
        batch_size, common.fmt(r["compile_s"], "s"), common.fmt(r["wall_s"], "s"), common.fmt(r["images_per_sec"]),
        common.fmt(r["step_time_s"], "s")) for r in runs])
  table += (f"\n{source}, {num_params:,} parameters, {config.model.dtype}, {n_dev} device(s); peak memory "
            f"{common.fmt(record['peak_memory_bytes'], 'B')} [{record['peak_memory_kind']}]")
  common.emit(record, table, args.out)
  return record


if __name__ == "__main__":
  main()
