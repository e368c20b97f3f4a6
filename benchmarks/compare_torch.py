r"""JAX vs PyTorch on the same CPU: the project's compiled train step and network against a torch re-implementation.

One process runs both implementations interleaved (A B A B ...): each round times `--steps_per_round` steps
of JAX, then as many of torch, on the same batch with the same number of threads; warm-up and compilation
are outside the timed rounds. Prints images/s for each (median over rounds), the ratio JAX / torch (> 1:
JAX is faster) and GFLOP/s, the FLOPs being XLA's cost analysis of the compiled JAX program (the same
count is applied to both sides, so the GFLOP/s ratio is the speed ratio).

Rows (`--rows`, default all):
  train_mnist     main-job net (configs/mnist_mu.py, 1,112,801 parameters), batch 32, one train step
  train_cifar10   CIFAR-10 net (configs/cifar10_mu_vlb_fixed.py, 35,746,307 parameters), batch 8
  sample_mnist    main-job net, batch 64, one network evaluation (the work of one sampling step)
  sample_cifar10  CIFAR-10 net, batch 64, one network evaluation (the slowest row on a small CPU)

What each side runs:
  JAX train: `ddpm_jax.train.compile_train_step` with the config's diffusion and loss (the real step:
    timestep sampler, q_sample, the config's loss, backward, clipped Adam, EMA, sampler update), one step
    per call, on a synthetic batch already on the device; a round is timed to `block_until_ready`.
  JAX sample: `jax.jit` of the experiment's `model_fn(params)` (eval mode) at random t.
  torch train: `torch_reference.TorchTrainer.step` (random t, q_sample, forward, MSE against a random
    target, backward, clip_grad_norm_, Adam, `torch._foreach_lerp_` EMA), eager, NCHW.
  torch sample: `torch_reference.TorchSampler.step`, eval mode under torch.no_grad().
  Both start from the same weights (the Flax init, copied into the torch net) and see the same images.

Threads: JAX on CPU runs on XLA's intra-op pool, which is sized from the CPUs this process may run on, so
`--threads N` (default: all of them) pins the process to N CPUs before JAX starts and calls
`torch.set_num_threads(N)`; both are printed. JAX is forced onto its CPU backend.

  python benchmarks/compare_torch.py                                   # all rows, all cores
  python benchmarks/compare_torch.py --rows train_mnist,sample_mnist --rounds 7 --steps_per_round 5
  python benchmarks/compare_torch.py --threads 1 --out benchmarks/results/torch_cpu.jsonl

Needs torch: pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ddpm_jax` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import torch_reference  # noqa: E402
from ddpm_jax import train  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
  kind: str  # "train" | "sample"
  config: str  # relative to the repository root
  batch_size: int


ROWS = {
    "train_mnist": Row("train", "configs/mnist_mu.py", 32),
    "train_cifar10": Row("train", "configs/cifar10_mu_vlb_fixed.py", 8),
    "sample_mnist": Row("sample", "configs/mnist_mu.py", 64),
    "sample_cifar10": Row("sample", "configs/cifar10_mu_vlb_fixed.py", 64),
}


def _available_cpus() -> list[int]:
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", default="all",
                      help=f"Comma-separated rows, or 'all' (default): {', '.join(ROWS)}.")
  parser.add_argument("--rounds", type=int, default=5, help="Timed A/B rounds (default 5); medians are reported.")
  parser.add_argument("--steps_per_round", type=int, default=2,
                      help="Steps per implementation per round (default 2).")
  parser.add_argument("--warmup_steps", type=int, default=2,
                      help="Untimed steps of each implementation after compiling (default 2).")
  parser.add_argument("--threads", type=int, default=None,
                      help="Threads for both: torch.set_num_threads, and the CPUs JAX's XLA pool runs on "
                           "(default: every CPU this process may use).")
  parser.add_argument("--out", default=None, help="Also append the JSON record as one line to this file.")
  args = parser.parse_args(argv)
  names = list(ROWS) if args.rows.strip() == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = [r for r in names if r not in ROWS]
  if unknown or not names:
    parser.error(f"--rows: unknown row(s) {unknown}; choose from {list(ROWS)} or 'all'.")
  args.rows = names
  for field, minimum in (("rounds", 1), ("steps_per_round", 1), ("warmup_steps", 0)):
    if getattr(args, field) < minimum:
      parser.error(f"--{field}={getattr(args, field)} is invalid: expected an integer >= {minimum}.")
  cpus = _available_cpus()
  if args.threads is not None and not 1 <= args.threads <= len(cpus):
    parser.error(f"--threads={args.threads} is invalid: expected 1..{len(cpus)} (CPUs available).")
  return args


def _jax_backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (private; absent: assume not)
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def _set_threads(threads: int, notes: list[str]) -> dict[str, Any]:
  """Pins the process to `threads` CPUs (XLA sizes its pool from them when the backend starts) and sets torch's."""
  import torch  # pylint: disable=g-import-not-at-top  (require_torch has passed)
  cpus = _available_cpus()
  if threads < len(cpus):
    if _jax_backend_started():
      notes.append(f"JAX's backend had started before --threads={threads} pinned the process: its XLA pool "
                   f"keeps the {len(cpus)} CPUs it started with (run the script in a fresh process)")
    if hasattr(os, "sched_setaffinity"):
      os.sched_setaffinity(0, cpus[:threads])
    else:
      notes.append(f"cannot pin to {threads} CPUs on this platform: JAX uses all {len(cpus)}")
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  info = {"requested": threads, "os_cpu_count": os.cpu_count(), "cpus_pinned": len(_available_cpus()),
          "torch_num_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
          "jax": "XLA:CPU intra-op pool over the pinned CPUs"}
  print(f"threads: torch.set_num_threads({threads}) -> torch.get_num_threads() = {info['torch_num_threads']}; "
        f"JAX: XLA:CPU intra-op pool over {info['cpus_pinned']} pinned CPU(s) (os.cpu_count() = "
        f"{info['os_cpu_count']})", file=sys.stderr)
  return info


def _load_config(row: Row):
  args = argparse.Namespace(config=os.path.join(common.REPO_ROOT, row.config), preset=None, dtype=None,
                            image_size=None, overrides=[])
  fields = {"train.steps_per_call": 1}
  if row.kind == "train":
    fields["train.batch_size"] = row.batch_size
  return common.build_config(args, **fields)


def _setup_row(name: str, row: Row) -> dict[str, Any]:
  """Builds both sides of a row; returns their step runners, FLOPs and compile time."""
  import torch  # pylint: disable=g-import-not-at-top
  config, _ = _load_config(row)
  exp = common.build_experiment(config, num_devices=1)
  state = train.create_train_state(exp)
  num_params = common.count_params(state.params)
  known = torch_reference.KNOWN_PARAM_COUNTS.get(row.config)
  if known is not None and num_params != known:
    raise AssertionError(f"{row.config}: the Flax model has {num_params:,} parameters, expected {known:,}.")
  b = row.batch_size
  field = "train.batch_size" if row.kind == "train" else "sample.batch_size"
  batches = common.synthetic_batch(exp, b, leading=(1,), seed=config.seed, field=field)
  host_images = np.asarray(jax.device_get(batches["image"]))[0]

  model = torch_reference.build_model(config, exp.image_shape, expected_params=num_params)
  torch_reference.load_flax_params(model, jax.device_get(state.params))
  x_torch = torch_reference.to_torch_images(host_images)

  t0 = time.perf_counter()
  if row.kind == "train":
    step_fn = train.compile_train_step(exp, state)
    compiled = step_fn.lower(state, batches).compile()
    holder = {"state": state, "metrics": None}

    def run_jax(n: int) -> None:
      for _ in range(n):
        holder["state"], holder["metrics"] = compiled(holder["state"], batches)
      jax.block_until_ready(holder["state"])

    def jax_finite() -> bool:
      return bool(np.all(np.asarray(jax.device_get(holder["metrics"]["finite"]))))

    trainer = torch_reference.TorchTrainer(model, config)
    target = torch.randn(x_torch.shape[0], model.conv_out.out_channels, *x_torch.shape[2:])
    torch_out = {"loss": None}

    def run_torch(n: int) -> None:
      for _ in range(n):
        torch_out["loss"] = trainer.step(x_torch, target)

    def torch_finite() -> bool:
      return bool(torch.isfinite(torch_out["loss"]).item())

    extra = {"torch_adam": trainer.adam_impl, "torch_ema": "torch._foreach_lerp_"}
  else:
    apply = jax.jit(lambda params, x, t: exp.model_fn(params)(x, t))
    x_jax = batches["image"][0]
    t_jax = jax.random.randint(jax.random.PRNGKey(0), (b,), 0, config.diffusion.num_timesteps)
    params = state.params
    compiled = apply.lower(params, x_jax, t_jax).compile()
    holder = {"out": None}

    def run_jax(n: int) -> None:
      for _ in range(n):
        holder["out"] = compiled(params, x_jax, t_jax)
      jax.block_until_ready(holder["out"])

    def jax_finite() -> bool:
      return bool(np.all(np.isfinite(np.asarray(jax.device_get(holder["out"])))))

    sampler = torch_reference.TorchSampler(model, config)
    torch_out = {"out": None}

    def run_torch(n: int) -> None:
      for _ in range(n):
        torch_out["out"] = sampler.step(x_torch)

    def torch_finite() -> bool:
      return bool(torch.isfinite(torch_out["out"]).all().item())

    extra = {}
  compile_s = time.perf_counter() - t0
  flops = common.cost_flops(common.safe_cost_analysis(compiled))
  return {"name": name, "row": row, "config": config, "exp": exp, "num_params": num_params,
          "run_jax": run_jax, "run_torch": run_torch, "jax_finite": jax_finite, "torch_finite": torch_finite,
          "flops_per_image": None if flops is None else flops / b, "jax_compile_s": compile_s, "extra": extra}


def _time(fn: Callable[[int], None], n: int) -> float:
  start = time.perf_counter()
  fn(n)
  return time.perf_counter() - start


def run_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
  row = ROWS[name]
  print(f"[{name}] building and compiling ({row.config}, batch {row.batch_size})...", file=sys.stderr, flush=True)
  s = _setup_row(name, row)
  b, n = row.batch_size, args.steps_per_round
  if args.warmup_steps:
    s["run_jax"](args.warmup_steps)
    s["run_torch"](args.warmup_steps)
  jax_ips, torch_ips = [], []
  for r in range(args.rounds):
    jax_ips.append(n * b / _time(s["run_jax"], n))
    torch_ips.append(n * b / _time(s["run_torch"], n))
    print(f"[{name}] round {r + 1}/{args.rounds}: JAX {jax_ips[-1]:.2f} img/s, torch {torch_ips[-1]:.2f} img/s",
          file=sys.stderr, flush=True)
  jax_med, torch_med = statistics.median(jax_ips), statistics.median(torch_ips)
  fpi = s["flops_per_image"]
  gflops = lambda ips: None if fpi is None else fpi * ips / 1e9
  return {
      "row": name,
      "kind": row.kind,
      "config": row.config,
      "batch_size": b,
      "num_params": s["num_params"],
      "jax_images_per_sec": jax_med,
      "torch_images_per_sec": torch_med,
      "ratio_jax_over_torch": jax_med / torch_med,
      "jax_images_per_sec_rounds": jax_ips,
      "torch_images_per_sec_rounds": torch_ips,
      "flops_per_image": fpi,
      "flops_source": "compiled JAX HLO cost analysis",
      "jax_gflops_per_sec": gflops(jax_med),
      "torch_gflops_per_sec": gflops(torch_med),
      "jax_compile_s": s["jax_compile_s"],
      "jax_finite": s["jax_finite"](),
      "torch_finite": s["torch_finite"](),
      "torch_layout": "nchw",
      **s["extra"],
      "model_config": common.config_summary(s["config"], row.config, s["exp"], s["num_params"]),
  }


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  torch_reference.require_torch()  # before any work: exits with the install command
  import torch  # pylint: disable=g-import-not-at-top
  notes: list[str] = []
  threads = _set_threads(args.threads or len(_available_cpus()), notes)
  jax.config.update("jax_platforms", "cpu")  # both sides on the CPU (before the backend starts)
  devices = jax.devices()[:1]
  if jax.default_backend() != "cpu":
    notes.append(f"JAX ran on {jax.default_backend()} (its backend had started before this script forced CPU)")
  results = [run_row(name, args) for name in args.rows]

  record = {
      "benchmark": "compare_torch",
      "rows": results,
      "rounds": args.rounds,
      "steps_per_round": args.steps_per_round,
      "warmup_steps": args.warmup_steps,
      "threads": threads,
      "torch": {"version": torch.__version__, "mkldnn": bool(torch.backends.mkldnn.is_available()),
                "config": torch.__config__.parallel_info().splitlines()[:6]},
      "env": common.environment(devices),
      "notes": notes,
  }
  fmt = lambda v, d=1, scale=1.0: "—" if v is None else f"{v / scale:,.{d}f}"
  table = common.format_table(
      ("row", "batch", "JAX img/s", "torch img/s", "JAX / torch", "GFLOP/img", "JAX GFLOP/s", "torch GFLOP/s"),
      [(r["row"], r["batch_size"], fmt(r["jax_images_per_sec"], 2), fmt(r["torch_images_per_sec"], 2),
        f"{r['ratio_jax_over_torch']:.2f}×", fmt(r["flops_per_image"], 2, 1e9),
        fmt(r["jax_gflops_per_sec"]), fmt(r["torch_gflops_per_sec"])) for r in results])
  table += (f"\nmedian over {args.rounds} rounds of {args.steps_per_round} steps each, interleaved JAX/torch; "
            f"threads: torch {threads['torch_num_threads']}, JAX XLA pool on {threads['cpus_pinned']} CPU(s); "
            f"torch {torch.__version__} eager NCHW; GFLOP/s of both from the JAX program's FLOP count")
  common.emit(record, table, args.out)
  return record


if __name__ == "__main__":
  main()
