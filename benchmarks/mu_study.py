r"""The μ-prediction study: strict-μ recipes against ε + L_simple and x₀ on the bundled digits, at equal budget.

Every row trains the main job's network, data, batch, optimizer, number of steps and seed
(`configs/mnist_mu.py`, `--steps` to change the budget) and changes only the fields it names; every row is
evaluated the same way: MNIST-FD@N, MNIST-IS and the share of classifier-confident samples (max class
probability > 0.9) of N EMA samples against the 500 held-out digits, and the test bits/dim *estimate*
(`eval.full_bound=False`: the unbiased estimate from 8 sampled timesteps per test digit; the full bound at
T = 1000 would cost 1000 network calls per digit). Rows at T = 1000 sample on the 100-step respaced chain
(`sample.steps=100`, Σ = β̃_t), as the ε reference does.

What counts as μ-prediction (shared/DESIGN.md): the network's output tensor is μ_θ(x_t, t), compared with
the posterior mean μ̃_t; loss weights over t, timestep sampling, the schedule and T, architecture inside the
network (a residual path from x_t with gain 1 or learned, a constant output scale) and the optimizer are
fair game. Rows whose `mu` field is False are comparison rows (ε, x₀).

  python benchmarks/mu_study.py --out runs/mu_study                              # all rows, the main job's budget
  python benchmarks/mu_study.py --out runs/mu_study --rows eps_simple,mu_res_eps --steps 300   # a short look

Each row trains in a subprocess in `<out>/<row>/` (a crash does not stop the others; a finished row is
reused: delete its folder to redo it). Writes `<out>/mu_study.md` (the table and every row's 64-sample
grid) and `<out>/mu_study.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import ablation  # noqa: E402  pylint: disable=wrong-import-position

_ROOT = ablation._ROOT  # pylint: disable=protected-access
_CONFIG = os.path.join(_ROOT, "configs", "mnist_mu.py")

# The chains the rows train on. T = 1000 is the paper's linear schedule; the 25-step chain is the earlier
# main job's (the linear schedule stretched by Improved DDPM's β × 1000/T rule).
_T1000 = (("diffusion.num_timesteps", "1000"), ("diffusion.beta_schedule", "linear"),
          ("diffusion.beta_start", "0.0001"), ("diffusion.beta_end", "0.02"),
          ("diffusion.var_type", "fixedsmall"), ("sample.steps", "100"))
_T25 = (("diffusion.num_timesteps", "25"), ("diffusion.beta_schedule", "linear"),
        ("diffusion.beta_start", "0.004"), ("diffusion.beta_end", "0.8"),
        ("diffusion.var_type", "fixedlarge"), ("sample.steps", "0"))
# The plain network (the original U-Net output) and the μ-network of the main job: a gain-1 path from x_t
# and a last layer sized for a ~1% correction.
_PLAIN = (("model.output_residual", "none"), ("model.output_scale", "1.0"))
_MU_NET = (("model.output_residual", "identity"), ("model.output_scale", "0.01"))


@dataclasses.dataclass(frozen=True)
class StudyRow:
  name: str
  label: str
  mean_type: str
  loss_type: str
  fields: tuple[tuple[str, str], ...]
  mu: bool  # strict μ-prediction (the network's output is μ_θ)

  def as_ablation_row(self) -> ablation.Row:
    var_type = dict(self.fields).get("diffusion.var_type", "fixedsmall")
    return ablation.Row(self.name, self.label, self.mean_type, var_type, self.loss_type, extra=self.fields)


def _mse(weight: str, *rest) -> tuple[tuple[str, str], ...]:
  return (("diffusion.mse_weight", weight), ("diffusion.timestep_sampler", "uniform")) + tuple(rest)


ROWS = (
    StudyRow("mu_res_eps", "μ-net (x_t path, output × 0.01), ε-equivalent weight, T = 1000", "xprev", "mse",
             _T1000 + _MU_NET + _mse("eps"), mu=True),
    StudyRow("eps_simple", "ε, L_simple, T = 1000 (the reference)", "eps", "mse",
             _T1000 + _PLAIN + _mse("none"), mu=False),
    StudyRow("mu_bound_t25", "μ, the bound L (kl), T = 25, fixed Σ = β_t (the earlier main job)", "xprev", "kl",
             _T25 + _PLAIN + (("diffusion.mse_weight", "none"),
                              ("diffusion.timestep_sampler", "loss-second-moment")), mu=True),
    StudyRow("x0_mse", "x₀, ‖x₀ − x̂₀‖², T = 1000", "xstart", "mse", _T1000 + _PLAIN + _mse("none"), mu=False),
    StudyRow("mu_eps", "μ, ε-equivalent weight λ_t = α_t(1−ᾱ_t)/β_t², T = 1000", "xprev", "mse",
             _T1000 + _PLAIN + _mse("eps"), mu=True),
    StudyRow("mu_res1_eps", "μ (x_t path, output × 1), ε-equivalent weight, T = 1000", "xprev", "mse",
             _T1000 + (("model.output_residual", "identity"), ("model.output_scale", "1.0")) + _mse("eps"),
             mu=True),
    StudyRow("mu_mse", "μ, ‖μ̃ − μ_θ‖² unweighted, T = 1000 (Table 2's 'unstable' row)", "xprev", "mse",
             _T1000 + _PLAIN + _mse("none"), mu=True),
    StudyRow("mu_res_none", "μ-net (x_t path, output × 0.01), unweighted μ-MSE, T = 1000", "xprev", "mse",
             _T1000 + _MU_NET + _mse("none"), mu=True),
    StudyRow("mu_res_minsnr", "μ-net (x_t path, output × 0.01), min-SNR-5 weight, T = 1000", "xprev", "mse",
             _T1000 + _MU_NET + _mse("min_snr"), mu=True),
    StudyRow("mu_res_kl", "μ-net (x_t path, output × 0.01), bound weight 1/(2σ_t²), T = 1000", "xprev", "mse",
             _T1000 + _MU_NET + _mse("kl"), mu=True),
)
ROW_NAMES = tuple(r.name for r in ROWS)
DEFAULT_ROWS = ("mu_res_eps", "eps_simple", "mu_bound_t25", "x0_mse", "mu_eps")

# The estimator every row's bits/dim comes from (the same for all, so rows compare).
EVAL_FLAGS = ("--config.eval.full_bound=False", "--config.eval.timesteps_per_example=8")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="Folder for the rows' workdirs and the table.")
  parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                      help=f"'all' or a comma list of {', '.join(ROW_NAMES)} (default: {','.join(DEFAULT_ROWS)}).")
  parser.add_argument("--steps", type=int, default=None,
                      help="Train steps per row (default: the main job's train.num_steps).")
  parser.add_argument("--num_samples", type=int, default=500, help="Samples per row for MNIST-FD/IS.")
  parser.add_argument("--seed", type=int, default=0, help="The same seed for every row.")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="Any further config override for every row, e.g. --set model.ch=64.")
  args = parser.parse_args(argv)
  names = ROW_NAMES if args.rows == "all" else tuple(args.rows.split(","))
  unknown = [r for r in names if r not in ROW_NAMES]
  if unknown:
    parser.error(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROW_NAMES)} or 'all'.")
  args.row_names = names
  if args.steps is not None and args.steps < 1:
    parser.error(f"--steps={args.steps} is invalid: expected a positive integer.")
  if args.num_samples < 2:
    parser.error(f"--num_samples={args.num_samples} is invalid: expected an integer >= 2.")
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set {item!r} is invalid: expected FIELD=VALUE, e.g. model.ch=64.")
  # ablation.run_row reads these names.
  args.num_steps, args.batch_size = args.steps, None
  return args


def table(entries: list[dict], args) -> str:
  def num(v, fmt="{:.3f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "–"
  lines = [f"| row | strict μ | MNIST-FD@{args.num_samples} ↓ | MNIST-IS ↑ | confident (p > 0.9) ↑ | "
           "test bits/dim (estimate) | train img/s | train wall | samples |",
           "|---|---|---|---|---|---|---|---|---|"]
  for e in entries:
    bpd = f"{num(e.get('bpd'))} ± {num(e.get('bpd_stderr'))}" if e.get("bpd") is not None else "–"
    grid = f"![{e['row']}]({e['grid']})" if e.get("grid") else "–"
    label = e["label"] + ("" if e["status"] == "stable" else f" — {e['status']}: {e.get('error', '')}")
    conf = f"{100 * e['mnist_confident']:.0f}%" if isinstance(e.get("mnist_confident"), float) else "–"
    lines.append(f"| {label} | {'yes' if e['mu'] else 'no'} | {num(e.get('mnist_fd'), '{:.1f}')} | "
                 f"{num(e.get('mnist_is'), '{:.2f}')} | {conf} | {bpd} | "
                 f"{num(e.get('train_images_per_sec'), '{:.0f}')} | {num(e.get('train_wall_s'), '{:.0f}')} s | "
                 f"{grid} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  entries = []
  for row in ROWS:
    if row.name not in args.row_names:
      continue
    entry = ablation.run_row(row.as_ablation_row(), args, config_path=_CONFIG, eval_flags=EVAL_FLAGS,
                             eval_label="bits/dim estimate")
    entries.append({**entry, "label": row.label, "mu": row.mu})
  ablation.write_outputs(args.out, "mu_study", entries, table(entries, args), argv=argv, start=start)
  return entries


if __name__ == "__main__":
  main()
