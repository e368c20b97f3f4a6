r"""Renders benchmark records (JSON Lines written with --out) as the Markdown tables of RESULTS.md.

  python benchmarks/summarize.py benchmarks/results/h100.jsonl [more.jsonl ...]

Prints one table per benchmark kind, one row per record, in the column order RESULTS.md uses. Needs no JAX.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable

_MIB = 2**20


def _num(x, scale=1.0, digits=1):
  return "—" if x is None else f"{x / scale:,.{digits}f}"


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f}%"


def _common(r):
  env = r["env"]
  return [env["date"][:10], (env.get("git_commit") or "—")[:8], f"{env['devices_used']}× {env['device_kind']}",
          r["config"]["model"]["dtype"]]


def _train(r):
  return _common(r) + [str(r["batch_size"]), str(r["steps_per_call"]), _num(r["images_per_sec"]),
                       _num(r["step_time_mean_s"], 1e-3, 2), _num(r["compile_s"]),
                       _num(r["peak_memory_bytes"], _MIB, 0), _num(r["flops_per_image"], 1e9, 2), _pct(r["mfu"])]


def _sampling(r):
  by = {run["sampler"]: run for run in r["runs"]}
  cells = []
  for name in ("ancestral", "ddim"):
    run = by.get(name)
    cells += ["—", "—", "—"] if run is None else [str(run["chain_steps"]), _num(run["wall_s"], digits=2),
                                                  _num(run["compile_s"])]
  return _common(r) + [str(r["num_images"]), str(r["batch_size"])] + cells


def _bpd(r):
  return _common(r) + [str(r["batch_size"]), str(r["terms_per_image"]), _num(r["images_per_sec"]),
                       _num(r["batch_time_s"], digits=2), _num(r["compile_s"])]


_HEAD = ["date", "commit", "devices", "dtype"]
TABLES: dict[str, tuple[list[str], Callable[[dict], list[str]]]] = {
    "train_throughput": (_HEAD + ["batch", "steps/call", "images/s", "step ms", "compile s", "peak MiB",
                                  "GFLOP/image", "MFU"], _train),
    "sampling": (_HEAD + ["images", "batch", "ancestral steps", "ancestral wall s", "ancestral compile s",
                          "DDIM steps", "DDIM wall s", "DDIM compile s"], _sampling),
    "bpd_throughput": (_HEAD + ["batch", "terms/image", "images/s", "s/batch", "compile s"], _bpd),
}


def markdown(records: Iterable[dict[str, Any]]) -> str:
  records = list(records)
  out = []
  for kind, (head, row) in TABLES.items():
    rows = [row(r) for r in records if r.get("benchmark") == kind]
    if rows:
      out.append(f"### {kind}\n")
      out.append("| " + " | ".join(head) + " |")
      out.append("|" + "|".join("---" for _ in head) + "|")
      out.extend("| " + " | ".join(cells) + " |" for cells in rows)
      out.append("")
  return "\n".join(out)


def main(argv=None) -> str:
  paths = sys.argv[1:] if argv is None else argv
  if not paths:
    raise SystemExit("usage: python benchmarks/summarize.py RESULTS.jsonl [...]")
  records = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      records += [json.loads(line) for line in f if line.strip()]
  text = markdown(records)
  print(text)
  return text


if __name__ == "__main__":
  main()
