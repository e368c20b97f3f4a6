r"""DDPM Table 2's parameterization ablation on the bundled digits, at equal budget and seed.

Rows: μ̃- and ε-prediction × {the true bound L with a learned diagonal Σ, L with a fixed isotropic Σ, the
unweighted MSE}, plus x₀-prediction (MSE) and Improved DDPM's hybrid (ε, learned-range Σ, L_simple +
0.001·L_vb, cosine schedule). Every row starts from configs/mnist_mu_bound.py (the main job's network, data,
optimizer, batch and seed on the 25-step chain of DDPM's μ row; `--num_steps` steps, 1,200 by default) and
changes only the parameterization fields, then is evaluated the same way: the full bound on the 500 held-out digits (bits/dim) and MNIST-FD / MNIST-IS of
`--num_samples` EMA samples against them.

  python benchmarks/ablation.py --out runs/ablation                 # ≈ 1 h on a 2-core CPU (1,200 steps a row)
  python benchmarks/ablation.py --out runs/ablation --num_steps 20000 --batch_size 128   # GPU / TPU
  python benchmarks/ablation.py --out /tmp/abl --rows mu_vlb_fixed,eps_simple --num_steps 50   # quick look

Each row trains in a subprocess (`python -m ddpm_jax.main`, so a crash or divergence in one row does not
stop the others) in `<out>/<row>/`; a finished row is not rerun (delete its folder to redo it). Writes
`<out>/ablation.md` (the table, with each row's sample grid) and `<out>/ablation.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = os.path.join(_ROOT, "configs", "mnist_mu_bound.py")


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  label: str          # as DDPM Table 2 writes it
  mean_type: str
  var_type: str
  loss_type: str
  extra: tuple[tuple[str, str], ...] = ()
  paper: str = ""     # the paper's CIFAR-10 result for this row (FID), for the comparison column


ROWS = (
    Row("mu_vlb_learned", "μ̃, L, learned diagonal Σ", "xprev", "learned", "kl", paper="IS 7.28, FID 23.69"),
    Row("mu_vlb_fixed", "μ̃, L, fixed isotropic Σ", "xprev", "fixedlarge", "kl", paper="IS 8.06, FID 13.22"),
    Row("mu_mse", "μ̃, ‖μ̃ − μ_θ‖²", "xprev", "fixedlarge", "mse", paper="unstable"),
    Row("eps_vlb_learned", "ε, L, learned diagonal Σ", "eps", "learned", "kl", paper="unstable"),
    Row("eps_vlb_fixed", "ε, L, fixed isotropic Σ", "eps", "fixedlarge", "kl", paper="IS 7.67, FID 13.51"),
    Row("eps_simple", "ε, ‖ε̃ − ε_θ‖² (L_simple)", "eps", "fixedlarge", "mse", paper="IS 9.46, FID 3.17"),
    Row("x0_mse", "x₀, ‖x₀ − x̂₀‖² (not in Table 2)", "xstart", "fixedlarge", "mse",
        paper="not in Table 2 (§3.2: worse than ε early on)"),
    Row("improved_hybrid", "ε, learned-range Σ, L_hybrid, cosine (Improved DDPM)", "eps", "learned_range",
        "rescaled_mse", extra=(("diffusion.beta_schedule", "cosine"),), paper="not in Table 2"),
)
ROW_NAMES = tuple(r.name for r in ROWS)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="Folder for the rows' workdirs and the table.")
  parser.add_argument("--rows", default="all", help=f"'all' or a comma list of {', '.join(ROW_NAMES)}.")
  parser.add_argument("--num_steps", type=int, default=1200,
                      help="Train steps per row (default 1,200: about 7 min a row on a 2-core CPU; the main "
                           "job trains 2,000).")
  parser.add_argument("--batch_size", type=int, default=None, help="Global batch (default: the config's).")
  parser.add_argument("--num_samples", type=int, default=500, help="Samples per row for MNIST-FD/IS.")
  parser.add_argument("--seed", type=int, default=0, help="The same seed for every row.")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="Any further config override for every row, e.g. --set model.ch=64.")
  args = parser.parse_args(argv)
  if args.rows != "all":
    unknown = [r for r in args.rows.split(",") if r not in ROW_NAMES]
    if unknown:
      parser.error(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROW_NAMES)} or 'all'.")
  for name, value in (("--num_steps", args.num_steps), ("--batch_size", args.batch_size),
                      ("--num_samples", args.num_samples)):
    if value is not None and value < (2 if name == "--num_samples" else 1):
      parser.error(f"{name}={value} is invalid: expected a positive integer (≥ 2 samples).")
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set {item!r} is invalid: expected FIELD=VALUE, e.g. model.ch=64.")
  return args


def _overrides(row: Row, args) -> list[str]:
  flags = [f"--config.diffusion.mean_type={row.mean_type}", f"--config.diffusion.var_type={row.var_type}",
           f"--config.diffusion.loss_type={row.loss_type}", f"--config.seed={args.seed}"]
  # The bound is trained with importance-sampled timesteps (as the main job); MSE rows sample uniformly.
  sampler = "loss-second-moment" if row.loss_type.endswith("kl") else "uniform"
  flags.append(f"--config.diffusion.timestep_sampler={sampler}")
  flags += [f"--config.{k}={v}" for k, v in row.extra]
  if args.num_steps:
    flags.append(f"--config.train.num_steps={args.num_steps}")
  if args.batch_size:
    flags.append(f"--config.train.batch_size={args.batch_size}")
  flags += [f"--config.{item}" for item in args.set]
  return flags


def _run(cmd: list[str], log_path: str) -> tuple[int, float]:
  start = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    rc = subprocess.call(cmd, cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT)
  return rc, time.time() - start


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# How ablation rows are evaluated: the full bound (T = 25 terms is cheap) and sample metrics.
FULL_BOUND_EVAL = ("--config.eval.full_bound=True",)


def run_row(row: Row, args, *, config_path: str = _CONFIG, eval_flags=FULL_BOUND_EVAL,
            eval_label: str = "full bound") -> dict:
  """Trains and evaluates one row in `<out>/<row>`; returns its table entry.

  The row trains with `python -m ddpm_jax.main --config config_path` plus its overrides, then is evaluated
  with `--mode eval` plus `eval_flags` and `eval.num_samples=args.num_samples`.
  """
  workdir = os.path.abspath(os.path.join(args.out, row.name))
  os.makedirs(workdir, exist_ok=True)
  result_path = os.path.join(workdir, "ablation_row.json")
  if os.path.exists(result_path):
    print(f"[{row.name}] done before; delete {workdir} to rerun it.", flush=True)
    return _read_json(result_path)
  log_path = os.path.join(workdir, "ablation.log")
  base = [sys.executable, "-m", "ddpm_jax.main", "--config", config_path, "--workdir", workdir]
  flags = _overrides(row, args)
  print(f"[{row.name}] training: {row.label}", flush=True)
  rc, train_s = _run(base + flags, log_path)
  entry = {"row": row.name, "label": row.label, "mean_type": row.mean_type, "var_type": row.var_type,
           "loss_type": row.loss_type, "paper": row.paper, "train_wall_s": round(train_s, 1),
           "overrides": flags}
  summary_path = os.path.join(workdir, "summary.json")
  if rc != 0 or not os.path.exists(summary_path):
    with open(log_path, encoding="utf-8") as f:
      tail = f.read()[-3000:]
    entry["status"] = "diverged" if "non-finite" in tail.lower() or "loss=nan" in tail.lower() else "failed"
    entry["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"exit code {rc}"
  else:
    summary = _read_json(summary_path)
    entry["status"] = "stable"
    entry["final_loss"] = summary.get("final_train_metrics", {}).get("loss")
    entry["train_seconds"] = summary.get("train_seconds")
    entry["train_images_per_sec"] = _train_images_per_sec(workdir)
    if summary.get("samples_png"):
      grid = os.path.join(args.out, f"{row.name}.png")
      shutil.copyfile(summary["samples_png"], grid)
      entry["grid"] = os.path.basename(grid)
    print(f"[{row.name}] evaluating: {eval_label} and MNIST-FD@{args.num_samples}", flush=True)
    rc, eval_s = _run(base + flags + ["--mode", "eval", *eval_flags,
                                      f"--config.eval.num_samples={args.num_samples}"], log_path)
    entry["eval_wall_s"] = round(eval_s, 1)
    evals = sorted(f for f in os.listdir(workdir) if f.startswith("eval_step") and f.endswith(".json"))
    if rc == 0 and evals:
      ev = _read_json(os.path.join(workdir, evals[-1]))
      entry.update(bpd=ev["bpd"], bpd_stderr=ev["bpd_stderr"], bpd_examples=ev["num_examples"],
                   mnist_fd=ev.get(f"mnist_fd@{args.num_samples}"), mnist_is=ev.get("mnist_is"),
                   mnist_confident=ev.get("mnist_confident"), bpd_method=ev.get("bpd_method"),
                   sampler=ev.get("sampler"), num_samples=args.num_samples)
    else:
      entry["status"] = "eval failed"
  with open(result_path, "w", encoding="utf-8") as f:
    json.dump(entry, f, indent=2)
  print(f"[{row.name}] {entry['status']}: " + ", ".join(
      f"{k}={entry[k]:.4g}" for k in ("bpd", "mnist_fd", "mnist_is") if entry.get(k) is not None), flush=True)
  return entry


def _train_images_per_sec(workdir: str) -> float | None:
  """The median of the run's logged training images/s (metrics.jsonl), or None."""
  values = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      for line in f:
        value = json.loads(line).get("images_per_sec")
        if isinstance(value, (int, float)):
          values.append(float(value))
  except (OSError, ValueError):
    return None
  return sorted(values)[len(values) // 2] if values else None


def table(entries: list[dict], args) -> str:
  def num(v, fmt="{:.3f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "–"
  lines = [
      f"| row | test bits/dim (full bound) | MNIST-FD@{args.num_samples} ↓ | MNIST-IS ↑ | training | "
      "train wall time | samples | paper (CIFAR-10) |",
      "|---|---|---|---|---|---|---|---|"]
  for e in entries:
    bpd = f"{num(e.get('bpd'))} ± {num(e.get('bpd_stderr'))}" if e.get("bpd") is not None else "–"
    grid = f"![{e['row']}]({e['grid']})" if e.get("grid") else "–"
    status = e["status"] + (f" ({e['error']})" if e.get("error") else "")
    lines.append(f"| {e['label']} | {bpd} | {num(e.get('mnist_fd'), '{:.2f}')} | "
                 f"{num(e.get('mnist_is'), '{:.2f}')} | {status} | {num(e.get('train_wall_s'), '{:.0f}')} s | "
                 f"{grid} | {e['paper']} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  chosen = ROWS if args.rows == "all" else tuple(r for r in ROWS if r.name in args.rows.split(","))
  start = time.time()
  entries = []
  for row in chosen:
    entry = run_row(row, args)
    entries.append({**entry, "label": row.label, "paper": row.paper})  # the current wording, for reruns
  write_outputs(args.out, "ablation", entries, table(entries, args), argv=argv, start=start)
  return entries


def write_outputs(out: str, stem: str, entries: list[dict], md: str, *, argv, start: float) -> None:
  """Writes `<out>/<stem>.json` (the command, wall time and every row's entry) and `<out>/<stem>.md` (the
  table), and prints the table."""
  record = {"command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
            "wall_s": round(time.time() - start, 1), "rows": entries}
  with open(os.path.join(out, f"{stem}.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  with open(os.path.join(out, f"{stem}.md"), "w", encoding="utf-8") as f:
    f.write(md + "\n")
  print(md)


if __name__ == "__main__":
  main()
