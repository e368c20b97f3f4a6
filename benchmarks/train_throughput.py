r"""Training throughput: images/s, step time, compile time, peak memory, FLOPs per image and MFU.

Times the project's compiled train step (`ddpm_jax.train.compile_train_step`: forward, backward, clipped
Adam, EMA, timestep-sampler update; `steps_per_call` steps per call) on synthetic images already on the
device, so the figure is the model's, not the input pipeline's. After `--warmup_calls` untimed calls,
`--timed_calls` calls run back to back and are timed as a whole (`block_until_ready` on the last result),
as the training loop dispatches them; `--sync_each_call` blocks after every call instead, for a per-call
spread.

FLOPs per image are, by default, the convolutions and matrix products of the step's jaxpr
(`common.matmul_flops`: the whole program, the same count on every platform) and MFU = achieved FLOP/s /
(peak dense FLOP/s per device × devices), the peak from `common.PEAK_FLOPS`. XLA's cost analyses are
recorded beside it (`--flops_source` picks another): the compiled one undercounts on GPUs, where the
convolutions are cuDNN custom calls (0.095 of 1.06 GFLOP per image for the main-job step on an H200).

  python benchmarks/train_throughput.py                                    # CPU-sized default
  python benchmarks/train_throughput.py --preset cifar10 --dtype bfloat16  # one GPU / TPU
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
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddpm_jax import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser)
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Global batch (config.train.batch_size); the CIFAR-10 preset's is 128.")
  parser.add_argument("--steps_per_call", type=int, default=None,
                      help="Train steps per compiled call (config.train.steps_per_call).")
  parser.add_argument("--warmup_calls", type=int, default=2, help="Untimed calls after compiling.")
  parser.add_argument("--timed_calls", type=int, default=None,
                      help="Timed calls (default: 20 on an accelerator, 3 on CPU).")
  parser.add_argument("--sync_each_call", action="store_true",
                      help="Block after every timed call (gives a per-call spread; adds dispatch gaps).")
  parser.add_argument("--flops_source", choices=("matmul", "compiled", "unoptimized"), default="matmul",
                      help="FLOP count behind flops_per_image and MFU: the convolutions and matrix products of "
                           "the step's jaxpr (default), or XLA's cost analysis of the compiled (optimized, per "
                           "device) step, or of the unoptimized lowered HLO (whole program).")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  config, source = common.build_config(args, **{"train.batch_size": args.batch_size,
                                                 "train.steps_per_call": args.steps_per_call})
  if args.warmup_calls < 0:
    raise ValueError(f"--warmup_calls={args.warmup_calls} is invalid: expected an integer >= 0.")
  if args.timed_calls is not None and args.timed_calls < 1:
    raise ValueError(f"--timed_calls={args.timed_calls} is invalid: expected an integer >= 1.")
  timed_calls = args.timed_calls or (20 if common.on_accelerator() else 3)
  exp = common.build_experiment(config, args.num_devices)
  devices = list(exp.mesh.devices.flat)
  n_dev = len(devices)
  batch, k = config.train.batch_size, config.train.steps_per_call
  notes = []

  state = train.create_train_state(exp)
  num_params = common.count_params(state.params)
  step_fn = train.compile_train_step(exp, state)
  batches = common.synthetic_batch(exp, batch, leading=(k,), seed=config.seed)

  t0 = time.perf_counter()
  traced = step_fn.trace(state, batches)  # one trace: the FLOP count below reads it, the compile lowers it
  lowered = traced.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()

  # Compiled cost analysis describes the SPMD-partitioned program of one device; the lowered (unoptimized)
  # one the whole program. Replicated work (optimizer, EMA) is counted once per device in the former.
  flops_compiled = common.cost_flops(common.safe_cost_analysis(compiled))
  flops_unoptimized = common.cost_flops(common.safe_cost_analysis(lowered))
  flops_matmul, count_notes = common.jaxpr_matmul_flops(traced.jaxpr)
  notes.extend(count_notes)
  per_image = lambda f: None if f is None else f / (k * batch)
  flops_per_image_matmul = per_image(flops_matmul) if flops_matmul > 0 else None
  flops_per_image_compiled = per_image(None if flops_compiled is None else flops_compiled * n_dev)
  flops_per_image_unoptimized = per_image(flops_unoptimized)
  if flops_per_image_compiled is None:
    notes.append("the compiled step reports no flops in its cost analysis")
  elif flops_per_image_matmul and abs(flops_per_image_compiled / flops_per_image_matmul - 1) > 0.1:
    notes.append(f"XLA's compiled FLOP count differs from the jaxpr's convolutions and products by "
                 f"{100 * (flops_per_image_compiled / flops_per_image_matmul - 1):+.0f}% "
                 "(custom calls, fusion or replicated work); --flops_source picks the one behind MFU")
  flops_per_image = {"matmul": flops_per_image_matmul, "compiled": flops_per_image_compiled,
                     "unoptimized": flops_per_image_unoptimized}[args.flops_source]

  for _ in range(args.warmup_calls):
    state, metrics = compiled(state, batches)
  jax.block_until_ready(state)

  call_times = []
  start = time.perf_counter()
  for _ in range(timed_calls):
    t = time.perf_counter()
    state, metrics = compiled(state, batches)
    if args.sync_each_call:
      jax.block_until_ready((state, metrics))
      call_times.append(time.perf_counter() - t)
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  finite = bool(np.all(np.asarray(jax.device_get(metrics["finite"]))))
  if not finite:
    notes.append("a timed step had a non-finite loss or gradient (random init, synthetic data)")

  steps = timed_calls * k
  step_time = elapsed / steps
  images_per_sec = steps * batch / elapsed
  achieved = None if flops_per_image is None else flops_per_image * images_per_sec
  peak_device, peak_basis = common.peak_flops_per_device(devices[0].device_kind, config.model.dtype)
  peak_total = None if peak_device is None else peak_device * n_dev
  mfu = None if achieved is None or peak_total is None else achieved / peak_total
  if peak_total is None:
    notes.append(f"MFU is None: {peak_basis}")
  memory = common.peak_memory(devices)
  if memory["peak_memory_kind"].startswith("host"):
    notes.append("peak memory is the host RSS of the whole process, not a device figure")

  record = {
      "benchmark": "train_throughput",
      "images_per_sec": images_per_sec,
      "step_time_mean_s": step_time,
      "step_time_std_s": float(np.std(call_times) / k) if len(call_times) > 1 else None,
      "step_time_min_s": float(min(call_times) / k) if call_times else None,
      "compile_s": t2 - t0,
      "lower_s": t1 - t0,
      "xla_compile_s": t2 - t1,
      "batch_size": batch,
      "steps_per_call": k,
      "warmup_steps": args.warmup_calls * k,
      "timed_steps": steps,
      "sync_each_call": bool(args.sync_each_call),
      **memory,
      "flops_per_image": flops_per_image,
      "flops_source": args.flops_source,
      "flops_per_image_matmul": flops_per_image_matmul,
      "flops_per_image_compiled": flops_per_image_compiled,
      "flops_per_image_unoptimized": flops_per_image_unoptimized,
      "achieved_flops_per_sec": achieved,
      "peak_flops_per_sec": peak_total,
      "peak_flops_basis": peak_basis,
      "mfu": mfu,
      "loss_finite": finite,
      "config": common.config_summary(config, source, exp, num_params),
      "env": common.environment(devices),
      "notes": notes,
  }
  table = common.format_table(("field", "value"), [
      ("config", source),
      ("parameters", f"{num_params:,}"),
      ("batch × steps/call", f"{batch} × {k}  ({config.model.dtype}, {n_dev} device(s))"),
      ("images/s", common.fmt(images_per_sec)),
      ("step time (mean)", common.fmt(step_time, "s")),
      ("step time (std, min)", f"{common.fmt(record['step_time_std_s'], 's')}, "
                               f"{common.fmt(record['step_time_min_s'], 's')}"),
      ("compile (lower + XLA)", f"{common.fmt(t2 - t0, 's')} ({common.fmt(t1 - t0, 's')} + "
                                f"{common.fmt(t2 - t1, 's')})"),
      ("peak memory", f"{common.fmt(memory['peak_memory_bytes'], 'B')} [{memory['peak_memory_kind']}]"),
      ("FLOPs / image", f"{common.fmt(flops_per_image, 'FLOP')} [{args.flops_source}; matmul "
                        f"{common.fmt(flops_per_image_matmul, 'FLOP')}, compiled "
                        f"{common.fmt(flops_per_image_compiled, 'FLOP')}, unoptimized "
                        f"{common.fmt(flops_per_image_unoptimized, 'FLOP')}]"),
      ("achieved", common.fmt(achieved, "FLOP/s")),
      ("peak", f"{common.fmt(peak_total, 'FLOP/s')} [{peak_basis}]"),
      ("MFU", common.fmt(mfu, "%")),
  ])
  common.emit(record, table, args.out)
  return record


if __name__ == "__main__":
  main()
