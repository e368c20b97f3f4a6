"""Bits/dim: the full variational bound, its sampled-t estimate, and the bound term by term, over the eval
split. Needs only an `Experiment` and parameters (no optimizer); the math is in `diffusion.py`
(`calc_bpd_loop`, `sampled_bpd`, `prior_bpd`, `vb_terms_bpd`).

  L = L_T + Σ_{t=1}^{T-1} L_t + L_0    (DDPM eq. 5, in bits per dimension)
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from ddpm_jax import experiment as experiment_lib
from ddpm_jax import sharding
from ddpm_jax.data import pipeline as data_pipeline


def _labels(exp, batch):
  return batch["label"] if exp.model.num_classes is not None else None


def _bound_terms(exp: experiment_lib.Experiment):
  """terms(params, batch, key) -> `calc_bpd_loop`'s dict for a batch (not jitted; shared below)."""
  clip = exp.config.eval.clip_denoised

  def terms(params, batch, key):
    return exp.diffusion.calc_bpd_loop(exp.model_fn(params, labels=_labels(exp, batch)), batch["image"],
                                       key=key, clip_denoised=clip)
  return terms


def make_bound_terms_fn(exp: experiment_lib.Experiment):
  """→ terms(params, batch, key) -> `calc_bpd_loop`'s dict: total_bpd [B], prior_bpd [B], terms_bpd [B, T],
  mse [B, T] (per-timestep ‖x̂_0 − x_0‖² on the [-1, 1] scale), jitted; for `--mode bpd`."""
  return jax.jit(_bound_terms(exp))


def make_bpd_fn(exp: experiment_lib.Experiment, *, full_bound: bool):
  """→ bpd(params, batch, key) -> per-example bits/dim [B], jitted.

  full_bound: the whole variational bound, L_T + Σ_t L_t over all T terms (`calc_bpd_loop`). Otherwise the
  unbiased estimate L_T + T · mean_k L_{t_k} from K = eval.timesteps_per_example sampled timesteps per
  example (`sampled_bpd`), much cheaper and used while training.
  """
  if full_bound:
    terms = _bound_terms(exp)

    def bpd(params, batch, key):
      return terms(params, batch, key)["total_bpd"]
  else:
    clip = exp.config.eval.clip_denoised
    k = exp.config.eval.timesteps_per_example

    def bpd(params, batch, key):
      return exp.diffusion.sampled_bpd(exp.model_fn(params, labels=_labels(exp, batch)), batch["image"],
                                       key=key, num_samples=k, clip_denoised=clip)
  return jax.jit(bpd)


def bpd_method(config) -> str:
  """How `make_bpd_fn` computes bits/dim under this config, for reports."""
  return ("full bound (all T terms)" if config.eval.full_bound else
          f"unbiased estimate, {config.eval.timesteps_per_example} timesteps/example")


def eval_split_outputs(config, fn, params, mesh, *, key, num_examples: int = 0, desc: str | None = None):
  """Yields `fn(params, batch, fold_in(key, i))` for each batch i of `data.eval_split`, gathered to host
  NumPy (every leaf [B, ...]), keeping only real examples (not the padding of the last batch), at most
  `num_examples` in all (0: the whole split)."""
  batch_size = config.eval.batch_size
  sharding.check_batch_size(batch_size, mesh, field="eval.batch_size")
  it = data_pipeline.create_eval_iterator(config.data, split=config.data.eval_split, batch_size=batch_size)
  seen = 0
  with tqdm.tqdm(desc=desc, unit="img", disable=desc is None or jax.process_index() != 0, leave=False) as bar:
    for i, batch in enumerate(it):
      mask = np.asarray(batch.pop("mask"))
      out = fn(params, sharding.global_batch(batch, mesh), jax.random.fold_in(key, i))
      out = jax.tree.map(lambda v: np.asarray(multihost_utils.process_allgather(v, tiled=True)), out)
      keep = np.asarray(multihost_utils.process_allgather(mask, tiled=True)).astype(bool)
      if num_examples:
        keep &= np.cumsum(keep) <= num_examples - seen
      seen += int(keep.sum())
      bar.update(int(keep.sum()))
      yield jax.tree.map(lambda v: v[keep], out)
      if num_examples and seen >= num_examples:
        return


def evaluate_bpd(config, bpd_fn, params, mesh, *, key, num_examples: int = 0, desc: str | None = None):
  """Bits/dim over the eval split: mean and standard error over examples, and how many were used."""
  values = np.concatenate(list(eval_split_outputs(config, bpd_fn, params, mesh, key=key,
                                                  num_examples=num_examples, desc=desc)))
  return {"bpd": float(values.mean()), "bpd_stderr": float(values.std(ddof=1) / math.sqrt(len(values)))
          if len(values) > 1 else float("nan"), "num_examples": int(len(values))}


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


def bound_terms_over_split(config, fn, params, mesh, *, key, num_examples: int = 0,
                           desc: str | None = None) -> dict[str, Any]:
  """Runs `make_bound_terms_fn`'s `fn` over the eval split and aggregates it with `bound_report`."""
  T = config.diffusion.num_timesteps
  terms_sum, terms_sq_sum = np.zeros(T), np.zeros(T)
  mse_sum, rmse_sum = np.zeros(T), np.zeros(T)
  totals, priors = [], []
  for out in eval_split_outputs(config, fn, params, mesh, key=key, num_examples=num_examples, desc=desc):
    out = {k: v.astype(np.float64) for k, v in out.items()}
    terms_sum += out["terms_bpd"].sum(0)
    terms_sq_sum += (out["terms_bpd"] ** 2).sum(0)
    mse_sum += out["mse"].sum(0)
    rmse_sum += (np.sqrt(out["mse"]) * 127.5).sum(0)
    totals.extend(out["total_bpd"].tolist())
    priors.extend(out["prior_bpd"].tolist())
  return bound_report(terms_sum, terms_sq_sum, mse_sum, rmse_sum, np.asarray(totals), np.asarray(priors))
