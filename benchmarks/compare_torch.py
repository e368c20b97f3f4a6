r"""JAX vs PyTorch on the same CPU (or GPU): the project's compiled train step and network against a torch re-implementation.

One process runs both implementations interleaved (A B A B ...): each round times `--steps_per_round` steps
of JAX, then as many of torch, on the same batch with the same number of threads; warm-up and compilation
are outside the timed rounds. Prints images/s for each (median over rounds), the ratio JAX / torch (> 1:
JAX is faster) and GFLOP/s, the FLOPs being the convolutions and matrix products of the JAX program's jaxpr
(`common.matmul_flops`: the same count on CPU and GPU, applied to both sides, so the GFLOP/s ratio is the
speed ratio; XLA's compiled count, ≈ 3% higher on CPU with the elementwise work, is in the JSON).

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

GPU rows (`--platform gpu`): both sides on the first CUDA device, JAX through its CUDA backend (memory
fraction capped at 0.45 unless XLA_PYTHON_CLIENT_MEM_FRACTION is set, so torch has room in the same process),
torch eager with `cudnn.benchmark = True` (XLA autotunes its convolutions too); each timed torch round ends in
`torch.cuda.synchronize()`. `--dtypes float32,bfloat16` runs each row in both: JAX with
`config.model.dtype="bfloat16"` (float32 parameters, convolutions/products in bfloat16, GroupNorm and
softmax in float32), torch under `torch.autocast(bfloat16)` (the same split). float32 on the GPU: JAX's
default precision computes float32 convolutions and products in TF32 on tensor cores, so torch is set to
the same (`allow_tf32` for cuDNN and matmul) — equal terms, stated in the JSON. MFU = FLOPs/s ÷ the
device's dense tensor-core peak for that dtype (bf16, or TF32 for float32) from `common.PEAK_FLOPS`
(`--peak_tflops` overrides).

  python benchmarks/compare_torch.py --platform gpu --dtypes float32,bfloat16 --batch_size 128

Where a train step's time goes (`--conv_split`, CPU, float32): each train row also times, in the same
rounds, the step's 3×3 convolutions alone on both sides, and reports step = convolutions + rest for each
framework. JAX runs every convolution of its optimized train step (forward, input and weight gradients; the
shapes, windows and dimension labels read from the compiled HLO by `profile_step.step_convolutions`) in one
compiled program, where XLA may run independent ones at once as it does in the step (one jitted call per
convolution, in sequence, took as long: 215 against 221 ms for the main-job net); torch runs the forward and `aten.convolution_backward` (the input gradient where autograd computes
one, the weight gradient, no bias) of every 3×3 `Conv2d` of its net on the input shapes a training forward
gives them. 1×1 convolutions (NIN shortcuts, attention projections: matrix products in the Flax net) count
as "rest" on both sides. The two sides must count the same convolutions, or the run stops with an error.
The ratios are torch's time over JAX's, as for the steps (< 1: JAX is slower).

  python benchmarks/compare_torch.py --rows train_mnist,train_cifar10 --conv_split --rounds 6

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
if __name__ == "__main__":  # measure what the CLI runs: the heap on transparent huge pages (ddpm_jax/hugepages.py)
  from ddpm_jax import hugepages  # noqa: E402  pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import profile_step  # noqa: E402
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
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                      help="Where both implementations run (default cpu; gpu: the first CUDA device).")
  parser.add_argument("--dtypes", default="float32",
                      help="Comma-separated compute dtypes, each row run in each: float32 (default), bfloat16.")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Batch for every row instead of the row's own (e.g. 128 on a GPU, where the CPU "
                           "batches measure launch latency).")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="Peak dense TFLOP/s for MFU at every dtype (default: from a table of known GPUs; "
                           "no MFU on CPUs).")
  parser.add_argument("--conv_split", action="store_true",
                      help="Train rows on the CPU in float32: also time the step's 3×3 convolutions alone on "
                           "both sides in the same rounds, and report convolutions and rest for each.")
  parser.add_argument("--out", default=None, help="Also append the JSON record as one line to this file.")
  args = parser.parse_args(argv)
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  bad = [d for d in dtypes if d not in torch_reference.AUTOCAST_DTYPES]
  if bad or not dtypes:
    parser.error(f"--dtypes={args.dtypes!r} is invalid: expected a comma-separated subset of "
                 f"{list(torch_reference.AUTOCAST_DTYPES)}.")
  args.dtypes = dtypes
  if args.batch_size is not None and args.batch_size < 1:
    parser.error(f"--batch_size={args.batch_size} is invalid: expected an integer >= 1.")
  if args.conv_split and (args.platform != "cpu" or dtypes != ["float32"]):
    parser.error("--conv_split is for --platform cpu --dtypes float32 (XLA's GPU convolutions are cuDNN calls "
                 "that the HLO does not show as convolutions).")
  if args.peak_tflops is not None and not args.peak_tflops > 0:
    parser.error(f"--peak_tflops={args.peak_tflops} is invalid: expected a positive number.")
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


def peak_tflops(device_kind: str, dtype: str, override: float | None = None) -> tuple[float | None, str]:
  """→ (the MFU denominator in TFLOP/s for this device and compute dtype, or None; how it was chosen).

  From `common.PEAK_FLOPS` (dense tensor-core peaks; float32 against TF32 on NVIDIA parts, which both
  sides use for float32 convolutions here), unless `override` (--peak_tflops) is given.
  """
  if override is not None:
    return float(override), "--peak_tflops"
  peak, how = common.peak_flops_per_device(device_kind, dtype)
  return (None if peak is None else peak / 1e12), how


def _load_config(row: Row, dtype: str = "float32"):
  args = argparse.Namespace(config=os.path.join(common.REPO_ROOT, row.config), preset=None, dtype=None,
                            image_size=None, overrides=[])
  fields = {"train.steps_per_call": 1, "model.dtype": dtype}
  if row.kind == "train":
    fields["train.batch_size"] = row.batch_size
  return common.build_config(args, **fields)


def _setup_row(name: str, row: Row, *, platform: str = "cpu", dtype: str = "float32",
               conv_split: bool = False) -> dict[str, Any]:
  """Builds both sides of a row; returns their step runners, FLOPs and compile time (and, for a train row
  with `conv_split`, runners of the step's convolutions alone: `_setup_convs`)."""
  import torch  # pylint: disable=g-import-not-at-top
  device = "cuda" if platform == "gpu" else "cpu"
  config, _ = _load_config(row, dtype)
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
  model = model.to(device)
  x_torch = torch_reference.to_torch_images(host_images, device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  step_hlo = None  # the train step's optimized HLO, kept for --conv_split
  t0 = time.perf_counter()
  if row.kind == "train":
    step_fn = train.compile_train_step(exp, state)
    traced = step_fn.trace(state, batches)  # traced once: compiled here, its FLOPs counted below
    compiled = traced.lower().compile()
    holder = {"state": state, "metrics": None}

    def run_jax(n: int) -> None:
      for _ in range(n):
        holder["state"], holder["metrics"] = compiled(holder["state"], batches)
      jax.block_until_ready(holder["state"])

    def jax_finite() -> bool:
      return bool(np.all(np.asarray(jax.device_get(holder["metrics"]["finite"]))))

    trainer = torch_reference.TorchTrainer(model, config, dtype=dtype)
    target = torch.randn(x_torch.shape[0], model.conv_out.out_channels, *x_torch.shape[2:], device=device)
    torch_out = {"loss": None}

    def run_torch(n: int) -> None:
      for _ in range(n):
        torch_out["loss"] = trainer.step(x_torch, target)
      sync()

    def torch_finite() -> bool:
      return bool(torch.isfinite(torch_out["loss"]).item())

    extra = {"torch_adam": trainer.adam_impl, "torch_ema": "torch._foreach_lerp_"}
    step_hlo = compiled.as_text() if conv_split else None  # its convolutions are built after compile_s
  else:
    apply = jax.jit(lambda params, x, t: exp.model_fn(params)(x, t))
    x_jax = batches["image"][0]
    t_jax = jax.random.randint(jax.random.PRNGKey(0), (b,), 0, config.diffusion.num_timesteps)
    params = state.params
    traced = apply.trace(params, x_jax, t_jax)
    compiled = traced.lower().compile()
    holder = {"out": None}

    def run_jax(n: int) -> None:
      for _ in range(n):
        holder["out"] = compiled(params, x_jax, t_jax)
      jax.block_until_ready(holder["out"])

    def jax_finite() -> bool:
      return bool(np.all(np.isfinite(np.asarray(jax.device_get(holder["out"])))))

    sampler = torch_reference.TorchSampler(model, config, dtype=dtype)
    torch_out = {"out": None}

    def run_torch(n: int) -> None:
      for _ in range(n):
        torch_out["out"] = sampler.step(x_torch)
      sync()

    def torch_finite() -> bool:
      return bool(torch.isfinite(torch_out["out"]).all().item())

    extra = {}
  compile_s = time.perf_counter() - t0
  if step_hlo is not None:
    extra["convs"] = _setup_convs(step_hlo, model, x_torch, config)
  compiled_flops = common.cost_flops(common.safe_cost_analysis(compiled))
  flops, count_notes = common.jaxpr_matmul_flops(traced.jaxpr)
  flops = flops if flops > 0 else None
  source = "convolutions and matrix products of the JAX jaxpr (common.matmul_flops)"
  extra["compiled_flops_per_image"] = None if compiled_flops is None else compiled_flops / b
  extra["flop_count_notes"] = count_notes
  return {"name": name, "row": row, "config": config, "exp": exp, "num_params": num_params,
          "run_jax": run_jax, "run_torch": run_torch, "jax_finite": jax_finite, "torch_finite": torch_finite,
          "flops_per_image": None if flops is None else flops / b, "flops_source": source,
          "jax_compile_s": compile_s, "extra": extra}


def torch_step_convolutions(model, x, config) -> list[dict[str, Any]]:
  """The 3×3 convolutions of one torch training step: for each `Conv2d` with a kernel larger than 1×1, in
  the order a training forward calls them, its weight, the input shape it sees (random values), a random
  output gradient, and whether autograd computes its input gradient (not for the first layer, whose input
  x_t needs none). The model must be in training mode; it is not changed."""
  import torch  # pylint: disable=g-import-not-at-top
  seen = []

  def record(module, args):
    seen.append((module, tuple(args[0].shape), bool(args[0].requires_grad)))  # the input as conv2d gets it

  hooks = [m.register_forward_pre_hook(record) for m in model.modules()
           if isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) != (1, 1)]
  try:
    t = torch.zeros((x.shape[0],), dtype=torch.long, device=x.device)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.enable_grad():
      model(x, t)  # dropout draws from a forked generator: the caller's random state is untouched
  finally:
    for h in hooks:
      h.remove()
  gen = torch.Generator(device=x.device).manual_seed(int(config.seed))
  convs = []
  for module, shape, input_grad in seen:
    w = module.weight.detach()
    xin = torch.randn(shape, generator=gen, device=x.device)
    out_shape = torch.nn.functional.conv2d(xin, w, None, module.stride, module.padding, module.dilation,
                                           module.groups).shape
    convs.append({"x": xin, "w": w, "grad_out": torch.randn(out_shape, generator=gen, device=x.device),
                  "stride": tuple(module.stride), "padding": tuple(module.padding),
                  "dilation": tuple(module.dilation), "groups": int(module.groups), "input_grad": input_grad})
  return convs


def _setup_convs(step_hlo: str, model, x_torch, config) -> dict[str, Any]:
  """Runners of a train step's 3×3 convolutions alone, JAX's (from its optimized HLO) and torch's."""
  import torch  # pylint: disable=g-import-not-at-top
  convs = profile_step.step_convolutions(step_hlo)
  operands = profile_step.random_operands(convs, int(config.seed))
  program = jax.jit(lambda ops: profile_step.apply_convolutions(convs, ops)).lower(operands).compile()
  torch_convs = torch_step_convolutions(model, x_torch, config)
  input_grads = sum(c["input_grad"] for c in torch_convs)
  if 2 * len(torch_convs) + input_grads != len(convs):
    raise AssertionError(
        f"the JAX train step has {len(convs)} convolutions; the torch net's 3×3 Conv2d layers give "
        f"{2 * len(torch_convs) + input_grads} ({len(torch_convs)} forward, as many weight gradients, "
        f"{input_grads} input gradients): the two nets differ.")

  def run_jax(n: int) -> None:
    for _ in range(n):
      out = program(operands)
    jax.block_until_ready(out)

  def run_torch(n: int) -> None:
    with torch.no_grad():
      for _ in range(n):
        for c in torch_convs:
          torch.nn.functional.conv2d(c["x"], c["w"], None, c["stride"], c["padding"], c["dilation"], c["groups"])
          torch.ops.aten.convolution_backward(c["grad_out"], c["x"], c["w"], None, c["stride"], c["padding"],
                                              c["dilation"], False, (0, 0), c["groups"],
                                              (c["input_grad"], True, False))

  return {"run_jax": run_jax, "run_torch": run_torch, "jax_convolutions": len(convs),
          "torch_conv2d_layers": len(torch_convs), "torch_input_gradients": input_grads}


def _time(fn: Callable[[int], None], n: int) -> float:
  start = time.perf_counter()
  fn(n)
  return time.perf_counter() - start


def run_row(name: str, args: argparse.Namespace, dtype: str = "float32") -> dict[str, Any]:
  row = ROWS[name]
  if args.batch_size is not None:
    row = dataclasses.replace(row, batch_size=args.batch_size)
  label = f"{name} {dtype}"
  print(f"[{label}] building and compiling ({row.config}, batch {row.batch_size}, {args.platform})...",
        file=sys.stderr, flush=True)
  s = _setup_row(name, row, platform=args.platform, dtype=dtype,
                 conv_split=args.conv_split and row.kind == "train")
  convs = s["extra"].pop("convs", None)
  b, n = row.batch_size, args.steps_per_round
  if args.warmup_steps:
    s["run_jax"](args.warmup_steps)
    s["run_torch"](args.warmup_steps)
    if convs:
      convs["run_jax"](args.warmup_steps)
      convs["run_torch"](args.warmup_steps)
  jax_ips, torch_ips = [], []
  conv_ms = {"jax": [], "torch": []}
  for r in range(args.rounds):
    jax_ips.append(n * b / _time(s["run_jax"], n))
    torch_ips.append(n * b / _time(s["run_torch"], n))
    if convs:
      conv_ms["jax"].append(1e3 * _time(convs["run_jax"], n) / n)
      conv_ms["torch"].append(1e3 * _time(convs["run_torch"], n) / n)
    print(f"[{label}] round {r + 1}/{args.rounds}: JAX {jax_ips[-1]:.2f} img/s, torch {torch_ips[-1]:.2f} img/s"
          + (f"; convolutions alone JAX {conv_ms['jax'][-1]:.1f} ms, torch {conv_ms['torch'][-1]:.1f} ms"
             if convs else ""), file=sys.stderr, flush=True)
  jax_med, torch_med = statistics.median(jax_ips), statistics.median(torch_ips)
  if convs:
    s["extra"]["conv_split"] = conv_split_summary(b, jax_med, torch_med, conv_ms["jax"], conv_ms["torch"])
    s["extra"]["conv_split"].update({k: convs[k] for k in ("jax_convolutions", "torch_conv2d_layers",
                                                          "torch_input_gradients")})
  fpi = s["flops_per_image"]
  gflops = lambda ips: None if fpi is None else fpi * ips / 1e9
  peak, peak_source = (peak_tflops(jax.devices()[0].device_kind, dtype, args.peak_tflops)
                        if args.platform == "gpu" else (None, "no MFU on CPUs"))
  mfu = lambda ips: None if peak is None or fpi is None else fpi * ips / (peak * 1e12)
  return {
      "row": name,
      "kind": row.kind,
      "config": row.config,
      "batch_size": b,
      "dtype": dtype,
      "platform": args.platform,
      "num_params": s["num_params"],
      "jax_images_per_sec": jax_med,
      "torch_images_per_sec": torch_med,
      "ratio_jax_over_torch": jax_med / torch_med,
      "jax_images_per_sec_rounds": jax_ips,
      "torch_images_per_sec_rounds": torch_ips,
      "flops_per_image": fpi,
      "flops_source": s["flops_source"],
      "jax_gflops_per_sec": gflops(jax_med),
      "torch_gflops_per_sec": gflops(torch_med),
      "peak_tflops": peak,
      "peak_source": peak_source,
      "jax_mfu": mfu(jax_med),
      "torch_mfu": mfu(torch_med),
      "jax_compile_s": s["jax_compile_s"],
      "jax_finite": s["jax_finite"](),
      "torch_finite": s["torch_finite"](),
      "torch_layout": "nchw",
      **s["extra"],
      "model_config": common.config_summary(s["config"], row.config, s["exp"], s["num_params"]),
  }


def conv_split_summary(batch: int, jax_ips: float, torch_ips: float, jax_conv_ms: list[float],
                       torch_conv_ms: list[float]) -> dict[str, Any]:
  """Step = convolutions + rest, per framework, from median images/s of the steps and the convolutions'
  per-round times (ms); the ratios are torch / JAX times (> 1: JAX is faster), as for the steps."""
  jax_step, torch_step = 1e3 * batch / jax_ips, 1e3 * batch / torch_ips
  jax_conv, torch_conv = statistics.median(jax_conv_ms), statistics.median(torch_conv_ms)
  jax_rest, torch_rest = jax_step - jax_conv, torch_step - torch_conv
  return {"jax_step_ms": jax_step, "torch_step_ms": torch_step, "jax_conv_ms": jax_conv,
          "torch_conv_ms": torch_conv, "jax_rest_ms": jax_rest, "torch_rest_ms": torch_rest,
          "conv_ratio_jax_over_torch": torch_conv / jax_conv,
          "rest_ratio_jax_over_torch": torch_rest / jax_rest if jax_rest > 0 and torch_rest > 0 else None,
          "jax_conv_ms_rounds": list(jax_conv_ms), "torch_conv_ms_rounds": list(torch_conv_ms)}


def _setup_gpu(notes: list[str]) -> dict[str, Any]:
  """Both frameworks on the first CUDA device, on equal terms (see the module docstring)."""
  import torch  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available():
    raise SystemExit("--platform gpu: torch sees no CUDA device (torch.cuda.is_available() is False); "
                     "install a CUDA build of torch or run --platform cpu.")
  torch.backends.cudnn.benchmark = True  # XLA autotunes its convolutions; let cuDNN pick too
  torch.backends.cudnn.allow_tf32 = True  # JAX's default float32 precision on GPU is TF32
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.manual_seed(0)
  if jax.default_backend() != "gpu":
    raise SystemExit(f"--platform gpu: JAX's backend is {jax.default_backend()!r}, not 'gpu' (install "
                     f"jax[cuda12], or unset JAX_PLATFORMS).")
  notes.append("float32 rows: TF32 on both sides (JAX's default precision; torch allow_tf32 for cuDNN and matmul)")
  return {"torch_device": torch.cuda.get_device_name(0), "cudnn_benchmark": True, "allow_tf32": True,
          "jax_default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None)),
          "xla_python_client_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  torch_reference.require_torch()  # before any work: exits with the install command
  import torch  # pylint: disable=g-import-not-at-top
  notes: list[str] = []
  gpu = None
  if args.platform == "cpu":
    threads = _set_threads(args.threads or len(_available_cpus()), notes)
    jax.config.update("jax_platforms", "cpu")  # both sides on the CPU (before the backend starts)
  else:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # leave torch room in this process
    threads = {"requested": None, "note": "GPU rows: host threads not pinned"}
    gpu = _setup_gpu(notes)
  devices = jax.devices()[:1]
  if args.platform == "cpu" and jax.default_backend() != "cpu":
    notes.append(f"JAX ran on {jax.default_backend()} (its backend had started before this script forced CPU)")
  results = [run_row(name, args, dtype) for name in args.rows for dtype in args.dtypes]

  record = {
      "benchmark": "compare_torch",
      "rows": results,
      "rounds": args.rounds,
      "steps_per_round": args.steps_per_round,
      "warmup_steps": args.warmup_steps,
      "platform": args.platform,
      "threads": threads,
      "gpu": gpu,
      "torch": {"version": torch.__version__, "mkldnn": bool(torch.backends.mkldnn.is_available()),
                "cuda": torch.version.cuda, "config": torch.__config__.parallel_info().splitlines()[:6]},
      "env": common.environment(devices),
      "notes": notes,
  }
  fmt = lambda v, d=1, scale=1.0: "—" if v is None else f"{v / scale:,.{d}f}"
  pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"
  headers = ["row", "dtype", "batch", "JAX img/s", "torch img/s", "JAX / torch", "GFLOP/img", "JAX GFLOP/s",
             "torch GFLOP/s"]
  if args.platform == "gpu":
    headers += ["JAX MFU", "torch MFU"]
  rows = []
  for r in results:
    cells = [r["row"], r["dtype"], r["batch_size"], fmt(r["jax_images_per_sec"], 2),
             fmt(r["torch_images_per_sec"], 2), f"{r['ratio_jax_over_torch']:.2f}×",
             fmt(r["flops_per_image"], 2, 1e9), fmt(r["jax_gflops_per_sec"]), fmt(r["torch_gflops_per_sec"])]
    if args.platform == "gpu":
      cells += [pct(r["jax_mfu"]), pct(r["torch_mfu"])]
    rows.append(tuple(cells))
  table = common.format_table(tuple(headers), rows)
  if args.platform == "cpu":
    where = (f"threads: torch {threads['torch_num_threads']}, JAX XLA pool on {threads['cpus_pinned']} CPU(s); "
             f"torch {torch.__version__} eager NCHW")
  else:
    where = (f"{gpu['torch_device']}; torch {torch.__version__} eager NCHW, cudnn.benchmark, TF32 for float32; "
             f"MFU against the dense tensor-core peak ({', '.join(sorted({str(r['peak_tflops']) for r in results}))}"
             " TFLOP/s)")
  table += (f"\nmedian over {args.rounds} rounds of {args.steps_per_round} steps each, interleaved JAX/torch; "
            f"{where}; GFLOP/s of both from the JAX program's FLOP count")
  split = [(r["row"], r["conv_split"]) for r in results if "conv_split" in r]
  if split:
    ms = lambda v: f"{v:,.1f}"
    ratio = lambda v: "—" if v is None else f"{v:.2f}×"
    table += "\n\n" + common.format_table(
        ("row", "JAX step ms", "JAX convs", "JAX rest", "torch step ms", "torch convs", "torch rest",
         "convs JAX / torch", "rest JAX / torch"),
        [(name, ms(c["jax_step_ms"]), ms(c["jax_conv_ms"]), ms(c["jax_rest_ms"]), ms(c["torch_step_ms"]),
          ms(c["torch_conv_ms"]), ms(c["torch_rest_ms"]), ratio(c["conv_ratio_jax_over_torch"]),
          ratio(c["rest_ratio_jax_over_torch"])) for name, c in split])
    table += ("\nconvs: the step's 3×3 convolutions alone (forward, input and weight gradients), timed in the "
              "same rounds; rest = step − convs; ratios: torch time / JAX time (< 1: JAX is slower)")
  common.emit(record, table, args.out)
  return record


if __name__ == "__main__":
  main()
