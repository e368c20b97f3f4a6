r"""Where the time of the compiled train step goes: a per-op profile from JAX's profiler, grouped by kind.

Builds the project's train step (`ddpm_jax.train.compile_train_step`, one step per call) for a config,
times `--steps` calls, then records them under `jax.profiler` with a Perfetto trace and sums the duration
of every compiled op (XLA fusion or library call) by name. Each op is classified from the optimized HLO
(`compiled.as_text()`): convolution, dot, reduce, transpose/copy or elementwise, and the largest ones are
listed with the JAX operation they came from (HLO `op_name` metadata). On XLA:CPU some library kernels
(Eigen convolutions) do not appear as named ops; the gap between the step time and the traced total is
reported as "untraced".

With `--conv_floor` it also runs every convolution of the optimized step on its own (same operand shapes,
window and dimension labels, random inputs, all in one compiled program): the step's time spent in
convolution kernels if nothing else ran, so step - floor is what everything else costs. On XLA:CPU the
convolutions run asynchronously in the thread pool, so the trace cannot give this split.

  python benchmarks/profile_step.py --config configs/mnist_mu.py --batch_size 32 --conv_floor
  python benchmarks/profile_step.py --config configs/cifar10_mu_vlb_fixed.py --batch_size 8 --top 30
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ddpm_jax` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # measure what the CLI runs: the heap on transparent huge pages (ddpm_jax/hugepages.py)
  from ddpm_jax import hugepages  # noqa: E402  pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from ddpm_jax import train  # noqa: E402

KINDS = ("convolution", "dot", "reduce", "transpose/copy", "elementwise")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser)
  parser.add_argument("--batch_size", type=int, default=None, help="Global batch (config.train.batch_size).")
  parser.add_argument("--steps", type=int, default=5, help="Profiled steps (after 2 untimed ones).")
  parser.add_argument("--top", type=int, default=20, help="How many of the largest ops to list.")
  parser.add_argument("--conv_floor", action="store_true",
                      help="Also time the step's convolutions alone (see the module docstring).")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps={args.steps} is invalid: expected an integer >= 1.")
  return args


def _hlo_index(hlo_text: str):
  """(instruction name -> its line, computation name -> its body) of an optimized HLO module."""
  comps = {m.group(1): m.group(2) for m in
           re.finditer(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)^\}", hlo_text, re.S | re.M)}
  inst = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
    if m:
      inst[m.group(1)] = m.group(2)
  return inst, comps


_CONV_RE = re.compile(r"%([\w.\-]+) = f32\[([\d,]*)\]\S* convolution\(%([\w.\-]+), %([\w.\-]+)\), "
                      r"window=\{([^}]*)\}, (?:feature_group_count=1, )?dim_labels=([\w>\-]+)")


def _window(text: str, key: str, default: int, rank: int) -> list:
  m = re.search(key + r"=([\d_x]+)", text)
  if not m:
    return [default] * rank
  return [tuple(int(v) for v in p.split("_")) if "_" in p else int(p) for p in m.group(1).split("x")]


def step_convolutions(hlo_text: str) -> list:
  """Every float32 2-D convolution of an optimized HLO module as (name, lhs shape, rhs shape, conv kwargs,
  output shape): `jax.lax.conv_general_dilated(lhs, rhs, **kwargs)` computes the same convolution."""
  shapes = {m.group(1): tuple(int(v) for v in m.group(2).split(",") if v)
            for m in re.finditer(r"%([\w.\-]+) = f32\[([\d,]*)\]", hlo_text)}
  convs = []
  for m in _CONV_RE.finditer(hlo_text):
    name, out_shape, lhs, rhs, window, labels = m.groups()
    if "rhs_reversal" in window or lhs not in shapes or rhs not in shapes:
      raise ValueError(f"profile_step cannot rebuild convolution {name}: window={{{window}}}.")
    lhs_l, rest = labels.split("_", 1)
    rhs_l, out_l = rest.split("->")
    dn = jax.lax.ConvDimensionNumbers((lhs_l.index("b"), lhs_l.index("f"), lhs_l.index("0"), lhs_l.index("1")),
                                      (rhs_l.index("o"), rhs_l.index("i"), rhs_l.index("0"), rhs_l.index("1")),
                                      (out_l.index("b"), out_l.index("f"), out_l.index("0"), out_l.index("1")))
    kwargs = dict(window_strides=_window(window, "stride", 1, 2),
                  padding=_window(window, "pad", (0, 0), 2),
                  lhs_dilation=_window(window, "lhs_dilate", 1, 2), rhs_dilation=_window(window, "rhs_dilate", 1, 2),
                  dimension_numbers=dn)
    convs.append((name, shapes[lhs], shapes[rhs], kwargs, tuple(int(v) for v in out_shape.split(",") if v)))
  return convs


def random_operands(convs: list, seed: int = 0) -> list:
  """Standard-normal (lhs, rhs) operands for each convolution of `step_convolutions`."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 * len(convs))
  return [(jax.random.normal(keys[2 * i], lhs), jax.random.normal(keys[2 * i + 1], rhs))
          for i, (_, lhs, rhs, _, _) in enumerate(convs)]


def apply_convolutions(convs: list, operands: list) -> list:
  """The outputs of every convolution of `step_convolutions` on its operands (traceable: jit it)."""
  return [jax.lax.conv_general_dilated(a, b, **kw) for (a, b), (_, _, _, kw, _) in zip(operands, convs)]


def conv_floor_ms(hlo_text: str, repeats: int = 5) -> tuple[float, int]:
  """(best time in ms of all the module's convolutions run alone in one program, how many there are)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  convs = step_convolutions(hlo_text)
  operands = random_operands(convs)

  @jax.jit
  def run(ops):
    return [jnp.sum(y) for y in apply_convolutions(convs, ops)]

  jax.block_until_ready(run(operands))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(operands))
    best = min(best, time.perf_counter() - start)
  return best * 1e3, len(convs)


def classify(name: str, inst, comps) -> str:
  line = inst.get(name, "")
  called = re.search(r"calls=%?([\w.\-]+)", line)
  text = line + (comps.get(called.group(1), "") if called else "")
  if "convolution(" in text:
    return "convolution"
  if "dot(" in text:
    return "dot"
  if "reduce(" in text or "reduce-window(" in text:
    return "reduce"
  if "transpose(" in text or "copy(" in text:
    return "transpose/copy"
  return "elementwise"


def main(argv=None) -> dict:
  args = parse_args(argv)
  config, source = common.build_config(args, **{"train.batch_size": args.batch_size})
  exp = common.build_experiment(config, args.num_devices)
  state = train.create_train_state(exp)
  step_fn = train.compile_train_step(exp, state)
  batch = common.synthetic_batch(exp, config.train.batch_size, leading=(1,), seed=config.seed)
  compiled = step_fn.lower(state, batch).compile()
  hlo_text = compiled.as_text()
  inst, comps = _hlo_index(hlo_text)
  for _ in range(2):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - start) / args.steps

  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.steps):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    jax.profiler.stop_trace()
    traces = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)
    if not traces:
      raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {trace_dir}.")
    with gzip.open(traces[0]) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in inst:
      per_op[e["name"]] += e["dur"] / 1e3 / args.steps  # ms per step
  by_kind = collections.Counter()
  for name, ms in per_op.items():
    by_kind[classify(name, inst, comps)] += ms
  traced = sum(by_kind.values())
  rows = [(k, f"{by_kind[k]:.1f}", f"{100 * by_kind[k] / (step_s * 1e3):.0f}%") for k in KINDS]
  rows.append(("untraced (library kernels, gaps)", f"{max(step_s * 1e3 - traced, 0):.1f}",
               f"{100 * max(step_s * 1e3 - traced, 0) / (step_s * 1e3):.0f}%"))
  table = common.format_table(("kind", "ms / step", "share"), rows)
  top = []
  for name, ms in per_op.most_common(args.top):
    m = re.search(r'op_name="([^"]+)"', inst.get(name, ""))
    shape = inst.get(name, "").split(" ", 1)[0]
    top.append((f"{ms:.2f}", classify(name, inst, comps), name, shape, (m.group(1) if m else "")[-70:]))
  floor = None
  if args.conv_floor:
    floor_ms, n_convs = conv_floor_ms(hlo_text)
    floor = {"ms": floor_ms, "convolutions": n_convs, "rest_ms": step_s * 1e3 - floor_ms}
    print(f"convolution floor: the step's {n_convs} convolutions alone take {floor_ms:.1f} ms "
          f"({100 * floor_ms / (step_s * 1e3):.0f}% of the step); everything else ≈ {floor['rest_ms']:.1f} ms",
          file=sys.stderr)
  record = {"benchmark": "profile_step", "source": source, "batch_size": config.train.batch_size,
            "conv_floor": floor,
            "step_ms": step_s * 1e3, "images_per_sec": config.train.batch_size / step_s,
            "ms_by_kind": dict(by_kind), "top_ops": [dict(zip(("ms", "kind", "op", "shape", "from"), t)) for t in top],
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "env": common.environment(list(exp.mesh.devices.flat))}
  print(f"step {step_s * 1e3:.1f} ms ({config.train.batch_size / step_s:.1f} images/s), {source}", file=sys.stderr)
  print(table, file=sys.stderr)
  print(common.format_table(("ms / step", "kind", "op", "shape", "from (JAX op)"), top), file=sys.stderr)
  common.emit(record, "", None)
  return record


if __name__ == "__main__":
  main()
