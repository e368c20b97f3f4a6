"""Shared pieces of the benchmark scripts: configs, synthetic data, the environment record, the peak-FLOP/s
table, memory and cost-analysis readers, and the JSON + table output.

Every script builds its experiment from a project config as the CLI does (`ddpm_jax.experiment.Experiment`),
feeds synthetic images instead of a dataset, and prints one JSON record on
stdout (appended as one line to `--out` when given) and a table for people on stderr.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
from typing import Any, Iterable, Sequence

import flax
import jax
import jaxlib
import ml_collections
import numpy as np
import optax

from ddpm_jax import experiment as experiment_lib
from ddpm_jax import hugepages
from ddpm_jax import sharding
from ddpm_jax.data import pipeline as data_pipeline

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")

# --config-less presets. 'small': configs/default.py shrunk by its runlocal variant (U-Net ch 32, mult (1, 2),
# 1 res block, 32x32x3, batch 8): a shape a laptop CPU runs in seconds. 'cifar10': the paper's CIFAR-10
# model (35,746,307 parameters), the Table 2 row "μ̃ prediction, true bound L, fixed isotropic Σ".
PRESETS = {
    "small": ("default.py", "runlocal"),
    "cifar10": ("cifar10_mu_vlb_fixed.py", None),
}

DTYPES = ("float32", "bfloat16", "float16")


# ------------------------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
  """Flags every script shares: which config, overrides, devices and where the record goes."""
  which = parser.add_mutually_exclusive_group()
  which.add_argument("--config", default=None,
                     help="Config file, configs/*.py[:variants] (e.g. configs/cifar10_eps_simple.py:runlocal). "
                          "Default: --preset small.")
  which.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="small: configs/default.py:runlocal (CPU-sized, the default); cifar10: the 35.7M "
                          "CIFAR-10 model of configs/cifar10_mu_vlb_fixed.py (for a GPU/TPU).")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                      help="Override a config field, e.g. --set model.ch=64 --set 'model.ch_mult=(1,2)'. "
                           "Values are Python literals (strings may be bare). Repeatable.")
  parser.add_argument("--dtype", choices=DTYPES, default=None,
                      help="Compute dtype of the U-Net (config.model.dtype); parameters stay float32.")
  parser.add_argument("--image_size", type=int, default=None,
                      help="Square image side (config.data.image_size); default: the dataset's own size.")
  parser.add_argument("--num_devices", type=int, default=None,
                      help="Use only the first N devices (default: all of them).")
  parser.add_argument("--out", default=None,
                      help="Also append the JSON record as one line to this file (JSON Lines).")


def _load_config_file(path: str, arg: str | None) -> ml_collections.ConfigDict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path!r}: no such file; expected a config such as "
                            f"{os.path.join('configs', 'cifar10_mu_vlb_fixed.py')}.")
  name = "benchmark_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path!r} defines no get_config().")
  return module.get_config(arg) if arg else module.get_config()


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """config.a.b = value, refusing fields that do not exist (a typo would otherwise add a new field)."""
  *parents, leaf = dotted.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      sections = sorted(k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict))
      raise ValueError(f"config field {'.'.join(parents[:i + 1])!r} (from {dotted!r}) is not a section; "
                       f"sections here: {sections}.")
    node = node[part]
  if leaf not in node:
    raise ValueError(f"config field {dotted!r} does not exist; fields of "
                     f"{'.'.join(parents) or 'config'}: {sorted(node.keys())}.")
  node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
  if "=" not in text:
    raise ValueError(f"--set {text!r} is invalid: expected FIELD=VALUE, e.g. model.ch=64.")
  field, raw = text.split("=", 1)
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # a bare string, e.g. --set diffusion.mean_type=eps
  return field.strip(), value


def build_config(args: argparse.Namespace, **fields: Any) -> tuple[ml_collections.ConfigDict, str]:
  """The config the flags describe → (config, a one-line description of where it came from).

  `fields` are dotted config fields set from script-specific flags (None values are skipped); `--set`
  overrides are applied last, so they win.
  """
  if args.config:
    path, _, arg = args.config.partition(":")
    config = _load_config_file(path, arg or None)
    source = args.config
  else:
    preset = args.preset or "small"
    filename, arg = PRESETS[preset]
    config = _load_config_file(os.path.join(CONFIGS_DIR, filename), arg)
    source = f"preset {preset} (configs/{filename}{':' + arg if arg else ''})"
  if args.dtype is not None:
    config.model.dtype = args.dtype
  if args.image_size is not None:
    config.data.image_size = args.image_size
  for dotted, value in fields.items():
    if value is not None:
      set_field(config, dotted, value)
  for text in args.overrides:
    set_field(config, *parse_override(text))
  return config, source  # validated when the Experiment is built


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the config trains on, without needing the dataset on disk."""
  return tuple(data_pipeline.model_image_shape(config.data))


def select_devices(num_devices: int | None) -> list:
  devices = jax.devices()
  if num_devices is None:
    return devices
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"--num_devices={num_devices} is invalid: expected 1..{len(devices)} "
                     f"({len(devices)} {jax.default_backend()} device(s) present).")
  return devices[:num_devices]


def build_experiment(config: ml_collections.ConfigDict, num_devices: int | None = None) -> experiment_lib.Experiment:
  """The `Experiment` the config describes, on the first `num_devices` devices (default: all)."""
  return experiment_lib.Experiment(config, devices=select_devices(num_devices))


def synthetic_batch(exp: experiment_lib.Experiment, batch_size: int, *, leading: Sequence[int] = (), seed: int = 0,
                    field: str = "train.batch_size") -> dict[str, Any]:
  """A global batch {'image', 'label'} of random images in [-1, 1], sharded over the mesh on the batch axis.

  `leading` axes (e.g. [k] stacked steps) come before the batch axis. Each process makes its own slice.
  """
  sharding.check_batch_size(batch_size, exp.mesh, field=field)
  local = batch_size // jax.process_count()
  rng = np.random.default_rng([seed, jax.process_index()])
  shape = tuple(leading) + (local,) + tuple(exp.image_shape)
  num_classes = exp.model.num_classes or 1
  host = {"image": rng.uniform(-1.0, 1.0, size=shape).astype(np.float32),
          "label": rng.integers(0, num_classes, size=tuple(leading) + (local,)).astype(np.int32)}
  return sharding.global_batch(host, exp.mesh, leading_axes=len(leading))


def config_summary(config: ml_collections.ConfigDict, source: str, exp: experiment_lib.Experiment,
                   num_params: int | None = None) -> dict[str, Any]:
  """The config fields that decide the cost of a step, for the record."""
  m, d = config.model, config.diffusion
  summary = {
      "source": source,
      "image_shape": list(exp.image_shape),
      "model": {"ch": m.ch, "ch_mult": list(m.ch_mult), "num_res_blocks": m.num_res_blocks,
                "attn_resolutions": list(m.attn_resolutions), "dropout": m.dropout, "dtype": m.dtype,
                "remat": bool(m.get("remat", False)), "num_classes": m.num_classes},
      "diffusion": {"num_timesteps": d.num_timesteps, "mean_type": d.mean_type, "var_type": d.var_type,
                    "loss_type": d.loss_type, "timestep_sampler": d.timestep_sampler},
  }
  if num_params is not None:
    summary["num_params"] = int(num_params)
  return summary


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def on_accelerator() -> bool:
  return jax.default_backend() != "cpu"


# ------------------------------------------------------------------------------------------------------------
# The environment record.
# ------------------------------------------------------------------------------------------------------------


def _host_cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _git_commit() -> str | None:
  """HEAD of the checkout the scripts run from (read-only: `git rev-parse`), or None outside git."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=10, check=True)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def environment(devices: Sequence[Any]) -> dict[str, Any]:
  """Software versions, the devices used and the host, so that a figure can be traced to a machine."""
  d0 = devices[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "numpy": np.__version__,
      "backend": jax.default_backend(),
      "device_kind": d0.device_kind,
      "devices_used": len(devices),
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "host_cpu": _host_cpu_model(),
      "host_cpu_count": os.cpu_count(),
      "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
      "git_commit": _git_commit(),
      "host_memory": hugepages.status(),  # glibc tunables and THP mode (the scripts re-execute onto huge pages)
  }


# ------------------------------------------------------------------------------------------------------------
# Peak dense FLOP/s per device.
# ------------------------------------------------------------------------------------------------------------

# Peak *dense* (no 2:4 sparsity) FLOP/s of one JAX device, by precision. NVIDIA datasheets quote tensor-core
# figures "with sparsity"; the dense figure is half of that.
#   H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/
#     (BF16/FP16 1,979 / 1,513 / 1,671 TFLOPS sparse; TF32 989 / 756 / 835 sparse; FP32 67 / 51 / 60).
#   H200 SXM / NVL, GH200: https://www.nvidia.com/en-us/data-center/h200/ (BF16 1,979 / 1,671 sparse; TF32
#     989 / 835 sparse; FP32 67 / 60); the GH200's GPU has the H100 SXM / H200 SXM compute.
#   A100 (SXM and PCIe, 40 and 80 GB): NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/
#     (BF16/FP16 312 dense, TF32 156 dense, FP32 19.5).
#   TPUs: Cloud TPU system architecture pages, https://cloud.google.com/tpu/docs/system-architecture-tpu-vm and
#     /tpu/docs/v4, /v5e, /v5p, /v6e: bf16 per chip v3 123, v4 275, v5e 197, v5p 459, v6e 918 TFLOPS. A v3
#     chip has two TensorCores and JAX shows each as a device (61.5 per device); v4 and v5p chips run their
#     two cores as one megacore device; v5e and v6e have one core per chip. No fp32 peak is published: XLA
#     runs float32 matmuls on the bf16 MXUs in several passes (or one, at default precision).
# float32 on NVIDIA: MFU is taken against the TF32 tensor-core peak, which XLA uses for float32 dots and
# convolutions at JAX's default matmul precision on Ampere and Hopper; the CUDA-core FP32 figure is kept in
# the table for reference (set jax_default_matmul_precision=highest and compare against it instead).
_T = 1e12
PEAK_FLOPS = {
    "NVIDIA H100 SXM": {"bf16": 989.4 * _T, "fp16": 989.4 * _T, "tf32": 494.7 * _T, "fp32": 66.9 * _T},
    "NVIDIA H100 PCIe": {"bf16": 756.5 * _T, "fp16": 756.5 * _T, "tf32": 378.0 * _T, "fp32": 51.2 * _T},
    "NVIDIA H100 NVL": {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60.0 * _T},
    "NVIDIA H200 SXM": {"bf16": 989.4 * _T, "fp16": 989.4 * _T, "tf32": 494.7 * _T, "fp32": 66.9 * _T},
    "NVIDIA H200 NVL": {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60.0 * _T},
    "NVIDIA A100": {"bf16": 312.0 * _T, "fp16": 312.0 * _T, "tf32": 156.0 * _T, "fp32": 19.5 * _T},
    "TPU v3 (per core)": {"bf16": 61.5 * _T},
    "TPU v4": {"bf16": 275.0 * _T},
    "TPU v5e": {"bf16": 197.0 * _T},
    "TPU v5p": {"bf16": 459.0 * _T},
    "TPU v6e": {"bf16": 918.0 * _T},
}


def peak_table_entry(device_kind: str) -> str | None:
  """The PEAK_FLOPS row for a `jax.Device.device_kind` string, or None (CPU, unknown parts)."""
  k = device_kind.lower()
  if "h100" in k or "h200" in k:
    family = "H100" if "h100" in k and "gh200" not in k else "H200"
    if "nvl" in k:
      return f"NVIDIA {family} NVL"
    if family == "H100" and "pcie" in k:
      return "NVIDIA H100 PCIe"
    return f"NVIDIA {family} SXM"  # 'NVIDIA H100 80GB HBM3', 'NVIDIA H200', 'NVIDIA GH200 480GB'
  if "a100" in k:
    return "NVIDIA A100"
  if k.startswith("tpu"):
    if k.startswith("tpu v3"):
      return "TPU v3 (per core)"
    if k.startswith("tpu v4") and "lite" not in k:
      return "TPU v4"
    if k.startswith("tpu v5 lite") or k.startswith("tpu v5e") or k.startswith("tpu v5lite"):
      return "TPU v5e"
    if k.startswith("tpu v5p") or k == "tpu v5":
      return "TPU v5p"
    if k.startswith("tpu v6 lite") or k.startswith("tpu v6e"):
      return "TPU v6e"
  return None


def peak_flops_per_device(device_kind: str, dtype: str) -> tuple[float | None, str]:
  """→ (peak dense FLOP/s of one device for a model computing in `dtype`, how it was chosen)."""
  entry = peak_table_entry(device_kind)
  if entry is None:
    return None, f"no peak FLOP/s known for device kind {device_kind!r}"
  precision = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype]
  if precision == "fp32" and entry.startswith("NVIDIA"):
    precision = "tf32"
  peak = PEAK_FLOPS[entry].get(precision)
  if peak is None:
    return None, f"{entry}: no published dense {precision} peak"
  return peak, f"{entry}, dense {precision}"


# ------------------------------------------------------------------------------------------------------------
# Memory and XLA cost analysis.
# ------------------------------------------------------------------------------------------------------------


def peak_memory(devices: Sequence[Any]) -> dict[str, Any]:
  """Peak memory: the largest `peak_bytes_in_use` over the devices used, else the host's peak RSS.

  CPU devices (and some backends) report no memory_stats(); there the process's peak resident set size
  (getrusage ru_maxrss) stands in, labelled as host RSS: it includes Python, XLA and compilation.
  """
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  (backends that do not implement it raise)
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  if peaks:
    return {"peak_memory_bytes": max(peaks), "peak_memory_kind": "device peak_bytes_in_use (max over devices)"}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
  return {"peak_memory_bytes": int(rss_bytes),
          "peak_memory_kind": "host RSS (getrusage ru_maxrss; device memory_stats unavailable)"}


def cost_flops(cost: Any) -> float | None:
  """`flops` from a `Lowered/Compiled.cost_analysis()` result, or None if absent.

  jax 0.10 returns one dict; older versions returned a list of dicts (one per HLO module), so both are
  read (summed). Negative values (XLA's "unknown") and missing keys give None.
  """
  if cost is None:
    return None
  entries = [cost] if isinstance(cost, dict) else [c for c in cost if isinstance(c, dict)]
  values = [float(e["flops"]) for e in entries if "flops" in e]
  if not values or any(v < 0 for v in values) or sum(values) <= 0:
    return None
  return float(sum(values))


def safe_cost_analysis(stage: Any) -> Any:
  try:
    return stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (unsupported on some backends)
    return None


def _valid_taps(in_size: int, out_size: int, kernel: int, stride: int, pad_lo: int, lhs_dilation: int,
                rhs_dilation: int) -> int:
  """Σ over output positions of the kernel taps that land on a real input element (one spatial dim).

  Output o and tap k read the lhs-dilated, padded input at x = o·stride + k·rhs_dilation − pad_lo; the tap
  multiplies a real element iff 0 ≤ x ≤ (in_size − 1)·lhs_dilation and x is a multiple of lhs_dilation
  (the holes of lhs dilation and the padding are zeros, not work).
  """
  last = (in_size - 1) * lhs_dilation
  taps = 0
  for o in range(out_size):
    for k in range(kernel):
      x = o * stride + k * rhs_dilation - pad_lo
      if 0 <= x <= last and x % lhs_dilation == 0:
        taps += 1
  return taps


def _conv_flops(eqn) -> float:
  """2 · (multiply-adds) of one conv_general_dilated, counting only taps on real input elements."""
  p = eqn.params
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  dn = p["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  per_output = lhs[lhs_spec[1]] // p["feature_group_count"]  # input features each output feature reads
  spatial = 1
  for d in range(len(lhs_spec) - 2):
    spatial *= _valid_taps(lhs[lhs_spec[2 + d]], out[out_spec[2 + d]], rhs[rhs_spec[2 + d]],
                           p["window_strides"][d], p["padding"][d][0], p["lhs_dilation"][d], p["rhs_dilation"][d])
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * per_output * spatial


def _dot_flops(eqn) -> float:
  """2 · batch · contracted · lhs-free · rhs-free of one dot_general."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  prod = lambda dims, shape: int(np.prod([shape[i] for i in dims])) if dims else 1
  lhs_free = [i for i in range(len(lhs)) if i not in lhs_contract and i not in lhs_batch]
  rhs_free = [i for i in range(len(rhs)) if i not in rhs_contract and i not in rhs_batch]
  return 2.0 * prod(lhs_batch, lhs) * prod(lhs_contract, lhs) * prod(lhs_free, lhs) * prod(rhs_free, rhs)


def _sub_jaxprs(value: Any) -> list:
  """The jaxprs inside an equation parameter (a Jaxpr, a ClosedJaxpr, or a tuple/list of them).

  Recognised by shape (a Jaxpr has `eqns`; a ClosedJaxpr has a `jaxpr` with `eqns`), not by class, so the
  count does not depend on which `jax.extend` modules happen to be imported.
  """
  if hasattr(value, "eqns"):
    return [value]
  inner = getattr(value, "jaxpr", None)
  if inner is not None and hasattr(inner, "eqns"):
    return [inner]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


# Primitives whose bodies the count cannot scale correctly: per-shard bodies (counted at one shard's
# shapes), solvers whose several jaxprs do not all run, and kernels whose grid the jaxpr does not show.
_UNSCALED = {"shard_map": "a shard_map body was counted at one shard's shapes (× the mesh size is missing)",
             "xla_pmap": "a pmap body was counted at one device's shapes (× the devices is missing)",
             "custom_linear_solve": "a custom_linear_solve's jaxprs were all counted (not all of them run)",
             "pallas_call": "a pallas_call kernel was counted once, not once per grid point"}


def _jaxpr_matmul_flops(jaxpr, notes: set[str]) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "dot_general":
      total += _dot_flops(eqn)
    if name == "cond":  # one branch runs: count the dearest
      total += max((_jaxpr_matmul_flops(j, notes) for j in _sub_jaxprs(eqn.params["branches"])), default=0.0)
      continue
    inner = sum(_jaxpr_matmul_flops(j, notes) for v in eqn.params.values() for j in _sub_jaxprs(v))
    if name == "scan":
      inner *= eqn.params["length"]
    elif name == "while" and inner:
      notes.add("a while loop's body was counted once (its trip count is not static)")
    elif name in _UNSCALED and inner:
      notes.add(_UNSCALED[name])
    total += inner
  return total


def matmul_flops(fn: Any, *args: Any) -> tuple[float, list[str]]:
  """FLOPs of the convolutions and matrix products of `fn(*args)`, from its jaxpr: the count behind MFU.

  Platform-independent (it reads the program JAX traces, before any backend sees it), so the same count
  serves CPU and GPU rows; XLA's own cost analysis cannot on GPU, where the compiled program hands its
  convolutions to cuDNN as custom calls that it does not count (jax 0.11.2 on an H200, 2026-12-04: 0.095
  of 1.06 GFLOP per image of the main-job train step) and the lowered program's analysis returned nothing.
  Counted: every `conv_general_dilated` as 2 × output elements × input features per group × the kernel
  taps that fall on real input elements (padding and lhs-dilation holes are not work; XLA's cost analysis
  counts the same way), every `dot_general` as 2 × batch × contracted × free sizes, inside nested jaxprs
  (jit, custom derivatives, remat — whose recomputation is counted too), scan bodies × their length, the
  dearest branch of a cond. Elementwise ops, reductions and the optimizer are not counted (they are not
  what MFU measures). Counted but not scaled, with a note: while bodies (once), shard_map / pmap bodies (at
  one shard's shapes), custom_linear_solve (all its jaxprs), pallas_call (once).

  Returns (FLOPs, notes on anything that could not be counted exactly).
  """
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args))


def jaxpr_matmul_flops(closed_jaxpr: Any) -> tuple[float, list[str]]:
  """`matmul_flops` of an already traced program (a ClosedJaxpr, e.g. `jitted.trace(*args).jaxpr`), so a
  script that lowers the same trace does not trace the step twice."""
  notes: set[str] = set()
  flops = _jaxpr_matmul_flops(closed_jaxpr.jaxpr, notes)
  if flops <= 0:
    notes.add("no convolution or matrix product was found: no FLOP count")
  return flops, sorted(notes)


# ------------------------------------------------------------------------------------------------------------
# Output.
# ------------------------------------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "") -> str:
  """A value for people: None as '—', large numbers with SI prefixes, ratios as percentages."""
  if value is None:
    return "—"
  if isinstance(value, bool):
    return str(value)
  if unit == "%":
    return f"{100 * value:.1f}%"
  if unit == "s":
    return f"{value * 1e3:.2f} ms" if abs(value) < 1 else f"{value:.2f} s"
  if unit == "B":
    for div, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
      if abs(value) >= div:
        return f"{value / div:.2f} {name}"
    return f"{value} B"
  if isinstance(value, float):
    for div, name in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
      if abs(value) >= div:
        return f"{value / div:.3f} {name}{unit}"
    return f"{value:.4g}{(' ' + unit) if unit else ''}"
  return f"{value}{(' ' + unit) if unit else ''}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  rows = [list(map(str, r)) for r in rows]
  widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(headers), sep] + [line(r) for r in rows])


def run_notes() -> list[str]:
  """Caveats that apply to every record of this process."""
  notes = []
  if jax.config.jax_compilation_cache_dir:
    notes.append("the persistent compilation cache is on: compile times may be cache hits")
  return notes


def emit(record: dict[str, Any], table: str, out: str | None) -> None:
  """The table to stderr (for people), the record as one JSON line to stdout and, if asked, to `out`."""
  record.setdefault("notes", []).extend(run_notes())
  if jax.process_index() != 0:
    return
  env = record["env"]
  print(f"\n{record['benchmark']} on {env['devices_used']} x {env['device_kind']} ({env['backend']}), "
        f"jax {env['jax']}, {env['date']}", file=sys.stderr)
  print(table, file=sys.stderr)
  for note in record.get("notes", []):
    print(f"  note: {note}", file=sys.stderr)
  line = json.dumps(record, sort_keys=False, default=str)
  print(line, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
      f.write(line + "\n")
