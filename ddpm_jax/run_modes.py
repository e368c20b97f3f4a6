"""The command line's work on a trained workdir: `--mode sample`, `eval`, `bpd` and `sweep`.

  sample  exactly `sample.num_samples` samples (uint8 .npz + PNG grid) and the progressive x̂_0 strip;
  eval    bits/dim (`eval.full_bound`) and sample quality: MNIST-FD / MNIST-IS on the bundled digits, FID / IS
          on the Inception network when `eval.inception_weights` is set; appended to eval_history.jsonl;
  bpd     the full variational bound with every per-timestep term, x̂_0 errors and the rate/distortion
          curve of DDPM §4.3, as JSON and a PNG plot;
  sweep   `eval` over a range of checkpoints (`--fast`: fewer samples and test images), as a markdown table.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from ddpm_jax import fileio
from ddpm_jax import sharding
from ddpm_jax import train
from ddpm_jax import visualize
from ddpm_jax.data import pipeline as data_pipeline


def _is_main():
  return jax.process_index() == 0


def _params(state, use_ema: bool):
  return state.ema_params if use_ema else state.params


def _write_json(path: str, value: dict) -> str:
  return fileio.write_text(path, json.dumps(value, indent=2))


# ------------------------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------------------------


def _sampler_tag(config) -> str:
  s = config.sample
  steps = s.steps or config.diffusion.num_timesteps
  tag = f"{s.sampler}{steps}"
  if s.steps and s.skip_type != "even":
    tag += f"_{s.skip_type}"
  if s.sampler == "ddim":
    tag += f"_eta{s.eta:g}"
  return tag


def progressive_strip(config, exp, params, *, key, rows: int) -> tuple[np.ndarray, list[int]]:
  """x̂_0 predicted along one ancestral chain (the original's `p_sample_loop_progressive`).

  Returns ([rows, K + 1, H, W, C] in [-1, 1], the K recorded timesteps, high to low): column k is x̂_0 at
  the k-th recorded timestep and the last column is the sample itself.
  """
  chain = train.create_sampling_diffusion(config, exp.diffusion)
  freq = max(1, chain.num_timesteps // 10)
  n_dev = exp.mesh.devices.size
  batch = max(n_dev, math.ceil(rows / n_dev) * n_dev)
  model = exp.model

  def run(params, key):
    def model_fn(x, timesteps):
      return model.apply({"params": params}, x, timesteps, None, train=False)
    return chain.p_sample_loop_progressive(model_fn, (batch,) + tuple(exp.image_shape), key=key,
                                           clip_denoised=config.sample.clip_denoised,
                                           include_xstartpred_freq=freq)

  out_sharding = sharding.batch_sharding(exp.mesh)
  sample, preds = jax.jit(run, out_shardings=(out_sharding, out_sharding))(params, key)
  sample = np.asarray(multihost_utils.process_allgather(sample, tiled=True))[:rows]
  preds = np.asarray(multihost_utils.process_allgather(preds, tiled=True))[:rows]
  # Slot k holds x̂_0 at chain index k · freq: show them from the noisiest to the cleanest.
  recorded = [int(chain.timestep_map[k * freq]) for k in range(preds.shape[1])][::-1]
  strip = np.concatenate([preds[:, ::-1], sample[:, None]], axis=1)
  return strip, recorded


def sample(config, workdir: str, *, step: int | None = None) -> dict:
  """Writes exactly `sample.num_samples` samples (uint8 .npz and a PNG grid) from a checkpoint, and the
  progressive x̂_0 strip of `sample.progressive_rows` chains (ancestral sampler only)."""
  workdir = fileio.resolve(workdir)
  exp, state = train.restore_for_inference(config, workdir, step=step)
  s = config.sample
  params = _params(state, s.use_ema)
  key = jax.random.PRNGKey(config.seed + 1)
  images = train.generate_samples(exp.sample_fn(), params, key=key, num_samples=s.num_samples,
                                  batch_size=s.batch_size, mesh=exp.mesh, desc="sampling")
  ckpt_step = int(state.step)
  tag = f"step{ckpt_step}_{_sampler_tag(config)}"
  out_dir = fileio.join(workdir, "samples")
  result = {"checkpoint_step": ckpt_step, "num_samples": int(len(images)), "sampler": s.sampler,
            "sampling_steps": train.create_sampling_diffusion(config, exp.diffusion).num_timesteps,
            "skip_type": s.skip_type, "params": "ema" if s.use_ema else "raw", "seed": int(config.seed)}
  strip = None
  if s.progressive_rows and s.sampler == "ancestral" and exp.model.num_classes is None:
    strip, recorded = progressive_strip(config, exp, params, key=jax.random.fold_in(key, 10**6),
                                        rows=s.progressive_rows)
    result["progressive_timesteps"] = recorded
  elif s.progressive_rows:
    result["progressive"] = "skipped: drawn for the unconditional ancestral sampler only"
  if _is_main():
    npz = fileio.join(out_dir, f"{tag}.npz")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=visualize.to_uint8(images))
    fileio.write_bytes(npz, buffer.getvalue())
    grid = visualize.save_grid(fileio.join(out_dir, f"{tag}.png"), images[:min(len(images), 100)])
    result.update(npz=npz, grid=grid)
    if strip is not None:
      rows, cols = strip.shape[:2]
      result["progressive_png"] = visualize.save_grid(
          fileio.join(out_dir, f"{tag}_progressive.png"), strip.reshape((rows * cols,) + strip.shape[2:]),
          ncol=cols)
  return result


# ------------------------------------------------------------------------------------------------------------
# bpd: the full bound, term by term
# ------------------------------------------------------------------------------------------------------------


def bound_report(terms_sum, terms_sq_sum, mse_sum, rmse_sum, totals, priors) -> dict[str, Any]:
  """Aggregates per-example bound pieces into the `--mode bpd` report.

  With L_T the prior term, L_t (t = T-1 … 1) the denoising KLs and L_0 the decoder NLL (code index t = 0):
    total     = L_T + Σ_t L_t, per example; the mean and its standard error over examples;
    rate[t]   = L_T + Σ_{s > t} L_s: the bits/dim a receiver holds once it can form x_t in DDPM's progressive
                code (Algorithms 3–4, §4.3); rate at t = 0 excludes the decoder's L_0, which is lossless;
    distortion[t] = mean over images of √(‖x̂_0(x_t) − x_0‖² / D) on the [0, 255] scale (images live on
                [-1, 1], hence × 127.5), the RMSE of the reconstruction the receiver can make at t.
  """
  n = len(totals)
  terms = terms_sum / n
  terms_var = np.maximum(terms_sq_sum / n - terms ** 2, 0.0) * n / max(n - 1, 1)
  prior = float(np.mean(priors))
  rate = prior + np.concatenate([np.cumsum(terms[::-1])[::-1][1:], [0.0]])
  return {
      "num_examples": int(n),
      "total_bpd": float(np.mean(totals)),
      "total_bpd_stderr": float(np.std(totals, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
      "prior_bpd": prior,
      "decoder_nll_bpd": float(terms[0]),
      "sum_of_terms_bpd": float(np.sum(terms)),
      "terms_bpd": terms.tolist(),
      "terms_bpd_stderr": np.sqrt(terms_var / n).tolist(),
      "xstart_mse": (mse_sum / n).tolist(),
      "rate_bpd": rate.tolist(),
      "distortion_rmse": (rmse_sum / n).tolist(),
  }


def bpd(config, workdir: str, *, step: int | None = None) -> dict:
  """The full bound (all T terms + prior, `calc_bpd_loop`) over `data.eval_split` (`eval.num_examples`
  images, 0 = all), with its per-timestep terms, as bpd_step{N}.json and bpd_step{N}.png in the workdir."""
  workdir = fileio.resolve(workdir)
  exp, state = train.restore_for_inference(config, workdir, step=step)
  use_ema = config.eval.use_ema
  params = _params(state, use_ema)
  fn = train.make_bound_terms_fn(config, exp.model, exp.diffusion)
  T = exp.diffusion.num_timesteps
  terms_sum, terms_sq_sum = np.zeros(T), np.zeros(T)
  mse_sum, rmse_sum = np.zeros(T), np.zeros(T)
  totals, priors = [], []
  for out in train.eval_split_outputs(config, fn, params, exp.mesh, key=jax.random.PRNGKey(config.seed + 2),
                                      num_examples=config.eval.num_examples, desc="full bound"):
    out = {k: v.astype(np.float64) for k, v in out.items()}
    terms_sum += out["terms_bpd"].sum(0)
    terms_sq_sum += (out["terms_bpd"] ** 2).sum(0)
    mse_sum += out["mse"].sum(0)
    rmse_sum += (np.sqrt(out["mse"]) * 127.5).sum(0)
    totals.extend(out["total_bpd"].tolist())
    priors.extend(out["prior_bpd"].tolist())
  report = bound_report(terms_sum, terms_sq_sum, mse_sum, rmse_sum, np.asarray(totals), np.asarray(priors))
  ckpt_step = int(state.step)
  report = {"checkpoint_step": ckpt_step, "split": config.data.eval_split,
            "params": "ema" if use_ema else "raw", "method": "full bound (all T terms)",
            "num_timesteps": T, "clip_denoised": bool(config.eval.clip_denoised), **report}
  if _is_main():
    report["json"] = _write_json(fileio.join(workdir, f"bpd_step{ckpt_step}.json"), report)
    report["png"] = visualize.plot_bound(fileio.join(workdir, f"bpd_step{ckpt_step}.png"), report)
  summary_keys = ("checkpoint_step", "split", "params", "num_examples", "total_bpd", "total_bpd_stderr",
                  "prior_bpd", "decoder_nll_bpd", "json", "png")
  return {k: report[k] for k in summary_keys if k in report}


# ------------------------------------------------------------------------------------------------------------
# eval and sweep
# ------------------------------------------------------------------------------------------------------------


def sample_metrics(config, exp, params, *, key, num_samples: int) -> dict[str, Any]:
  """Sample-quality metrics of `num_samples` samples: MNIST-FD/IS (bundled digits) and/or FID/IS."""
  if not num_samples:
    return {}
  metrics: dict[str, Any] = {}
  digits = config.data.name == "mnist5k"
  weights = config.eval.get("inception_weights") or ""
  if not digits and not weights:
    return {"sample_metrics": "none: set eval.inception_weights for FID/IS (see README, 'Metrics')"}
  images = train.generate_samples(exp.sample_fn(), params, key=key, num_samples=num_samples,
                                  batch_size=config.sample.batch_size, mesh=exp.mesh, desc="metric samples")
  uint8 = visualize.to_uint8(images)
  if digits:
    from ddpm_jax.evaluation import mnist_classifier  # pylint: disable=g-import-not-at-top
    fd = mnist_classifier.mnist_fd(uint8, reference="test")
    metrics[f"mnist_fd@{num_samples}"] = fd["mnist_fd"]
    metrics["mnist_fd_reference"] = f"{fd['reference']} (n={fd['reference_n']})"
    splits = 10 if num_samples >= 100 else 1
    score = mnist_classifier.mnist_is(uint8, splits=splits)
    metrics["mnist_is"] = score["mnist_is"]
    metrics["mnist_confident"] = mnist_classifier.confident_fraction(uint8)["mnist_confident"]
  if weights:
    metrics.update(_inception_metrics(config, uint8, exp.mesh))
  metrics["sampler"] = _sampler_tag(config)
  return metrics


def _inception_metrics(config, uint8_images, mesh) -> dict[str, Any]:
  """FID@N against `eval.fid_reference_split` (statistics cached with their provenance) and IS@N, on the
  FID Inception-v3 from `eval.inception_weights`."""
  from ddpm_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  from ddpm_jax.evaluation import inception_weights  # pylint: disable=g-import-not-at-top
  e = config.eval
  params = _inception_params(e.inception_weights)
  split = e.fid_reference_split
  n_ref = e.fid_reference_num_examples
  cache = e.inception_reference_cache or os.path.join(
      os.path.dirname(os.path.abspath(e.inception_weights)),
      f"fid_stats_{config.data.name.replace('/', '_')}_{config.data.image_size or 'native'}_{split}"
      f"_{n_ref or 'all'}.npz")
  provenance = {"dataset": config.data.name, "split": split, "image_size": config.data.image_size,
                "n": None, **inception_weights.weights_provenance(e.inception_weights)}

  def load():
    return data_pipeline.load_split_images(config.data, split=split, max_examples=n_ref)
  if n_ref:
    provenance["n"] = int(n_ref)
    images = load
  else:  # the whole split: its size is part of the provenance, so the images are read once
    images = load()
    provenance["n"] = int(len(images))
  reference = inception.reference_statistics(images, params=params, cache_path=cache, provenance=provenance,
                                             mesh=mesh)
  res = inception.inception_metrics(params, uint8_images, reference=reference,
                                    splits=10 if len(uint8_images) >= 100 else 1, mesh=mesh)
  out = {res["fid_label"].lower(): res["fid"], "inception_score": res["inception_score"],
         "inception_score_std": res["inception_score_std"], "is_label": res["is_label"],
         "fid_reference": f"{config.data.name}/{split} (n={provenance['n']}, cache {cache})",
         "inception_preprocessing": res["preprocessing"]}
  return out


_INCEPTION_PARAMS: dict[str, Any] = {}


def _inception_params(path):
  if path not in _INCEPTION_PARAMS:
    from ddpm_jax.evaluation import inception_weights  # pylint: disable=g-import-not-at-top
    _INCEPTION_PARAMS[path] = inception_weights.load_inception_params(path)
  return _INCEPTION_PARAMS[path]


def _eval_checkpoint(config, workdir, exp, state, *, num_samples, num_examples) -> dict[str, Any]:
  use_ema = config.eval.use_ema
  params = _params(state, use_ema)
  res = {"checkpoint_step": int(state.step), "params": "ema" if use_ema else "raw",
         "split": config.data.eval_split, "bpd_method": train.bpd_method(config)}
  bpd_res = train.evaluate_bpd(config, exp.bpd_fn(full_bound=config.eval.full_bound), params, exp.mesh,
                               key=jax.random.PRNGKey(config.seed + 2), num_examples=num_examples,
                               desc="bits/dim")
  res.update(bpd_res)
  res.update(sample_metrics(config, exp, params, key=jax.random.PRNGKey(config.seed + 3),
                            num_samples=num_samples))
  if _is_main():
    fileio.append_text(fileio.join(workdir, "eval_history.jsonl"), json.dumps(res) + "\n")
  return res


def evaluate(config, workdir: str, *, step: int | None = None) -> dict:
  """Bits/dim on `data.eval_split` and sample-quality metrics of `eval.num_samples` samples, written to
  eval_step{N}.json and appended to the workdir's eval_history.jsonl."""
  workdir = fileio.resolve(workdir)
  exp, state = train.restore_for_inference(config, workdir, step=step)
  res = _eval_checkpoint(config, workdir, exp, state, num_samples=config.eval.num_samples,
                         num_examples=config.eval.num_examples)
  if _is_main():
    res["json"] = _write_json(fileio.join(workdir, f"eval_step{res['checkpoint_step']}.json"), res)
  return res


def parse_steps(spec: str, available: list[int]) -> list[int]:
  """Checkpoint steps from `--steps`: 'all', 'A:B' (every kept checkpoint with A ≤ step ≤ B; either end
  may be empty) or a comma list 'A,B,C' (each must exist)."""
  if not available:
    raise FileNotFoundError("the workdir holds no checkpoint: train first with --mode train.")
  spec = (spec or "all").strip()
  if spec == "all":
    return list(available)
  try:
    if ":" in spec:
      lo, hi = spec.split(":", 1)
      lo_v = int(lo) if lo else available[0]
      hi_v = int(hi) if hi else available[-1]
      chosen = [s for s in available if lo_v <= s <= hi_v]
    else:
      chosen = sorted({int(v) for v in spec.split(",")})
  except ValueError:
    raise ValueError(f"--steps={spec!r} is invalid: expected 'all', 'A:B' or 'A,B,...' with integer steps."
                     ) from None
  missing = [s for s in chosen if s not in available]
  if missing or not chosen:
    raise ValueError(f"--steps={spec!r} selects {missing or 'no'} checkpoint(s) that the workdir does not "
                     f"hold; kept steps: {available}.")
  return chosen


def sweep(config, workdir: str, *, steps: str = "all", fast: bool = False) -> dict:
  """`eval` on every chosen checkpoint; `fast` uses eval.fast_num_samples samples and eval.fast_num_examples
  test images (NCSNv2's fast-FID idea: rank checkpoints cheaply, then evaluate the best one fully).
  Writes eval_sweep.md (a markdown table) and eval_sweep.json in the workdir."""
  workdir = fileio.resolve(workdir)
  chosen = parse_steps(steps, train.checkpoint_steps(config, workdir))
  num_samples = config.eval.fast_num_samples if fast else config.eval.num_samples
  num_examples = config.eval.fast_num_examples if fast else config.eval.num_examples
  exp = None
  rows = []
  for s in tqdm.tqdm(chosen, desc="checkpoints", disable=not _is_main() or len(chosen) == 1):
    exp, state = train.restore_for_inference(config, workdir, step=s, exp=exp)
    rows.append(_eval_checkpoint(config, workdir, exp, state, num_samples=num_samples,
                                 num_examples=num_examples))
  result = {"steps": chosen, "fast": bool(fast), "num_samples": num_samples, "rows": rows}
  if _is_main():
    result["json"] = _write_json(fileio.join(workdir, "eval_sweep.json"), result)
    result["table"] = fileio.write_text(fileio.join(workdir, "eval_sweep.md"), sweep_table(rows) + "\n")
  return result


def sweep_table(rows: list[dict]) -> str:
  """A markdown table of `eval` results, one row per checkpoint, with the metric columns the rows have."""
  def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
  metric_keys = []
  for row in rows:
    for k in row:
      if (k.startswith(("mnist_fd@", "fid@")) or k in ("mnist_is", "inception_score")) and k not in metric_keys:
        metric_keys.append(k)
  header = ["step", "bits/dim", "± s.e.", "test images"] + metric_keys
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["checkpoint_step"], row["bpd"], row["bpd_stderr"], row["num_examples"]]
    cells += [row.get(k, "") for k in metric_keys]
    lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
  return "\n".join(lines)
