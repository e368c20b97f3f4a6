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
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm

from ddpm_jax import errors
from ddpm_jax import experiment as experiment_lib
from ddpm_jax import fileio
from ddpm_jax import likelihood
from ddpm_jax import sampling
from ddpm_jax import visualize
from ddpm_jax.data import pipeline as data_pipeline


def _is_main():
  return jax.process_index() == 0


def _write_json(path: str, value: dict) -> str:
  return fileio.write_text(path, json.dumps(value, indent=2))


# ------------------------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------------------------


def sample(config, workdir: str, *, step: int | None = None, params_dir: str | None = None) -> dict:
  """Writes exactly `sample.num_samples` samples (uint8 .npz and a PNG grid) from a checkpoint, and the
  progressive x̂_0 strip of `sample.progressive_rows` chains (ancestral sampler only)."""
  exp = experiment_lib.Experiment(config)
  workdir = experiment_lib.resolve_workdir(workdir)
  s = config.sample
  ckpt_step, params, which = exp.inference_params(workdir, params_dir=params_dir, step=step, use_ema=s.use_ema)
  key = experiment_lib.stream_key(config.seed, "sample")
  labels = sampling.sample_labels(config, exp.model, s.num_samples)
  images = sampling.generate_samples(sampling.make_sample_fn(exp), params, key=key, num_samples=s.num_samples,
                                     batch_size=s.batch_size, mesh=exp.mesh, labels=labels, desc="sampling")
  tag = f"step{ckpt_step}_{sampling.sampler_tag(config)}"
  out_dir = fileio.join(workdir, "samples")
  result = {"checkpoint_step": ckpt_step, "num_samples": int(len(images)), "sampler": s.sampler,
            "sampling_steps": sampling.create_sampling_diffusion(config, exp.diffusion).num_timesteps,
            "skip_type": s.skip_type, "params": which, "seed": int(config.seed)}
  if params_dir:
    result["params_dir"] = params_dir
  if labels is not None:
    result.update(guidance_scale=float(s.guidance_scale), labels=sorted(set(labels.tolist())))
  strip = None
  if s.progressive_rows and s.sampler == "ancestral":
    strip, recorded = sampling.progressive_strip(exp, params, key=experiment_lib.substream_key(key, "progressive"),
                                                 rows=s.progressive_rows)
    result["progressive_timesteps"] = recorded
  elif s.progressive_rows:
    result["progressive"] = "skipped: drawn for the ancestral sampler only"
  if _is_main():
    npz = fileio.join(out_dir, f"{tag}.npz")
    buffer = io.BytesIO()
    arrays = {"images": visualize.to_uint8(images)}
    if labels is not None:
      arrays["labels"] = labels  # the class each image was drawn for
    np.savez_compressed(buffer, **arrays)
    fileio.write_bytes(npz, buffer.getvalue())
    shown, ncol = sampling.class_rows(images, labels, exp.model.num_classes)  # one row per class if all drawn
    shown = shown[:100]
    grid = visualize.save_grid(fileio.join(out_dir, f"{tag}.png"), shown, ncol=ncol)
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


def bpd(config, workdir: str, *, step: int | None = None, params_dir: str | None = None) -> dict:
  """The full bound (all T terms + prior, `calc_bpd_loop`) over `data.eval_split` (`eval.num_examples`
  images, 0 = all), with its per-timestep terms, as bpd_step{N}.json and bpd_step{N}.png in the workdir."""
  exp = experiment_lib.Experiment(config)
  exp.check_batch_sizes("eval.batch_size")
  workdir = experiment_lib.resolve_workdir(workdir)
  ckpt_step, params, which = exp.inference_params(workdir, params_dir=params_dir, step=step,
                                                  use_ema=config.eval.use_ema)
  T = exp.diffusion.num_timesteps
  report = likelihood.bound_terms_over_split(
      config, likelihood.make_bound_terms_fn(exp), params, exp.mesh,
      key=experiment_lib.stream_key(config.seed, "eval"), num_examples=config.eval.num_examples,
      desc="full bound")
  report = {"checkpoint_step": ckpt_step, "split": config.data.eval_split,
            "params": which, "method": "full bound (all T terms)",
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


def sample_metrics(config, exp, params, *, key, num_samples: int, sample_fn=None) -> dict[str, Any]:
  """Sample-quality metrics of `num_samples` samples: MNIST-FD/IS (bundled digits) and/or FID/IS; for a
  class-conditional model on the digits also the classifier's agreement with the requested labels.

  `sample_fn` (from `sampling.make_sample_fn`) lets a sweep compile the sampler once for every checkpoint.
  """
  if not num_samples:
    return {}
  metrics: dict[str, Any] = {}
  digits = config.data.name == "mnist5k"
  weights = config.eval.get("inception_weights") or ""
  if not digits and not weights:
    return {"sample_metrics": "none: set eval.inception_weights for FID/IS (see README, 'Metrics')"}
  labels = sampling.sample_labels(config, exp.model, num_samples)
  images = sampling.generate_samples(sample_fn or sampling.make_sample_fn(exp), params, key=key,
                                     num_samples=num_samples, batch_size=config.sample.batch_size, mesh=exp.mesh,
                                     labels=labels, desc="metric samples")
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
    if labels is not None:
      metrics["mnist_label_accuracy"] = mnist_classifier.label_accuracy(uint8, labels)["mnist_label_accuracy"]
  if weights:
    metrics.update(_inception_metrics(config, uint8, exp.mesh))
  metrics["sampler"] = sampling.sampler_tag(config)
  return metrics


def guidance_curve(config, exp, params, *, key, num_samples: int) -> list[dict[str, Any]]:
  """Sample metrics of a class-conditional model with a null class at each of `eval.guidance_scales`:
  the fidelity (label accuracy) / diversity (MNIST-FD) trade-off of classifier-free guidance. Every scale
  draws its samples from the same key and labels."""
  rows = []
  for w in config.eval.guidance_scales:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.sample.guidance_scale = float(w)
    row = sample_metrics(cfg, exp, params, key=key, num_samples=num_samples,
                         sample_fn=sampling.make_sample_fn(exp, cfg))
    rows.append({"guidance_scale": float(w), **row})
  return rows


def guidance_table(rows: list[dict[str, Any]]) -> str:
  """A markdown table of `guidance_curve` rows."""
  keys = [k for k in rows[0] if k.startswith(("mnist_fd@", "fid@"))] + [
      k for k in ("mnist_label_accuracy", "mnist_is", "mnist_confident", "inception_score") if k in rows[0]]
  lines = ["| guidance w | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
  for r in rows:
    lines.append(f"| {r['guidance_scale']:g} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
  return "\n".join(lines)


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


class _EvalFunctions:
  """The compiled bits/dim and sample functions of one eval or sweep: built once, fed every checkpoint."""

  def __init__(self, config, exp):
    self.bpd = likelihood.make_bpd_fn(exp, full_bound=config.eval.full_bound)
    self.sample = sampling.make_sample_fn(exp)


def _eval_checkpoint(config, workdir, exp, step, *, num_samples, num_examples, fns: _EvalFunctions,
                     params_dir: str | None = None, restored=None,
                     samples_done: dict[str, Any] | None = None) -> dict[str, Any]:
  """bits/dim + sample metrics of one checkpoint, appended to eval_history.jsonl. `restored` (step, params,
  'ema'|'raw') skips the restore; `samples_done` are sample metrics already computed for these params."""
  ckpt_step, params, which = restored or exp.inference_params(workdir, params_dir=params_dir, step=step,
                                                              use_ema=config.eval.use_ema)
  res = {"checkpoint_step": ckpt_step, "params": which,
         "split": config.data.eval_split, "bpd_method": likelihood.bpd_method(config)}
  bpd_res = likelihood.evaluate_bpd(config, fns.bpd, params, exp.mesh,
                                    key=experiment_lib.stream_key(config.seed, "eval"),
                                    num_examples=num_examples, desc="bits/dim")
  res.update(bpd_res)
  if samples_done is not None:
    res.update(samples_done)
  else:
    res.update(sample_metrics(config, exp, params, key=experiment_lib.stream_key(config.seed, "metric_samples"),
                              num_samples=num_samples, sample_fn=fns.sample))
  if _is_main():
    fileio.append_text(fileio.join(workdir, "eval_history.jsonl"), json.dumps(res) + "\n")
  return res, params


def evaluate(config, workdir: str, *, step: int | None = None, params_dir: str | None = None) -> dict:
  """Bits/dim on `data.eval_split` and sample-quality metrics of `eval.num_samples` samples, written to
  eval_step{N}.json and appended to the workdir's eval_history.jsonl. For a class-conditional model with a
  null class, also the guidance trade-off at each of `eval.guidance_scales`: guidance_step{N}.md (table)
  and .png (plot)."""
  exp = experiment_lib.Experiment(config)
  exp.check_batch_sizes("eval.batch_size")
  workdir = experiment_lib.resolve_workdir(workdir)
  fns = _EvalFunctions(config, exp)
  rows, own, restored = None, None, None
  if exp.model.null_class and config.eval.num_samples and config.eval.guidance_scales:
    restored = exp.inference_params(workdir, params_dir=params_dir, step=step, use_ema=config.eval.use_ema)
    rows = guidance_curve(config, exp, restored[1], key=experiment_lib.stream_key(config.seed, "metric_samples"),
                          num_samples=config.eval.num_samples)
    # The config's own scale, when on the curve, drew the same samples: they are not drawn twice.
    own = next(({k: v for k, v in r.items() if k != "guidance_scale"} for r in rows
                if r["guidance_scale"] == float(config.sample.guidance_scale)), None)
  res, _ = _eval_checkpoint(config, workdir, exp, step, params_dir=params_dir,
                            num_samples=config.eval.num_samples, num_examples=config.eval.num_examples,
                            fns=fns, restored=restored, samples_done=own)
  n = res["checkpoint_step"]
  if rows is not None:
    res["guidance"] = rows
    if _is_main():
      res["guidance_table"] = fileio.write_text(fileio.join(workdir, f"guidance_step{n}.md"),
                                                guidance_table(rows) + "\n")
      res["guidance_png"] = visualize.plot_guidance(fileio.join(workdir, f"guidance_step{n}.png"), rows)
  if _is_main():
    res["json"] = _write_json(fileio.join(workdir, f"eval_step{n}.json"), res)
  return res


def parse_steps(spec: str, available: list[int]) -> list[int]:
  """Checkpoint steps from `--steps`: 'all', 'A:B' (every kept checkpoint with A ≤ step ≤ B; either end
  may be empty) or a comma list 'A,B,C' (each must exist)."""
  if not available:
    raise errors.NoCheckpointError("the workdir holds no checkpoint: train first with --mode train.")
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
    raise errors.UsageError(f"--steps={spec!r} is invalid: expected 'all', 'A:B' or 'A,B,...' with integer "
                            "steps.") from None
  missing = [s for s in chosen if s not in available]
  if missing or not chosen:
    raise errors.UsageError(f"--steps={spec!r} selects {missing or 'no'} checkpoint(s) that the workdir does "
                            f"not hold; kept steps: {available}.")
  return chosen


def sweep(config, workdir: str, *, steps: str = "all", fast: bool = False) -> dict:
  """`eval` on every chosen checkpoint; `fast` uses eval.fast_num_samples samples and eval.fast_num_examples
  test images (NCSNv2's fast-FID idea: rank checkpoints cheaply, then evaluate the best one fully).
  Writes eval_sweep.md (a markdown table) and eval_sweep.json in the workdir."""
  exp = experiment_lib.Experiment(config)
  exp.check_batch_sizes("eval.batch_size")
  workdir = experiment_lib.resolve_workdir(workdir)
  chosen = parse_steps(steps, experiment_lib.checkpoint_steps(config, workdir))
  num_samples = config.eval.fast_num_samples if fast else config.eval.num_samples
  num_examples = config.eval.fast_num_examples if fast else config.eval.num_examples
  fns = _EvalFunctions(config, exp)  # compiled on the first checkpoint, reused by every other
  rows = []
  for s in tqdm.tqdm(chosen, desc="checkpoints", disable=not _is_main() or len(chosen) == 1):
    start = time.perf_counter()
    row, _ = _eval_checkpoint(config, workdir, exp, s, num_samples=num_samples, num_examples=num_examples,
                              fns=fns)
    row["seconds"] = time.perf_counter() - start
    rows.append(row)
  result = {"steps": chosen, "fast": bool(fast), "num_samples": num_samples, "rows": rows,
            "compilations": {"bpd": _compilations(fns.bpd), "sample": _compilations(fns.sample)}}
  if _is_main():
    result["json"] = _write_json(fileio.join(workdir, "eval_sweep.json"), result)
    result["table"] = fileio.write_text(fileio.join(workdir, "eval_sweep.md"), sweep_table(rows) + "\n")
  return result


def _compilations(jitted) -> int | None:
  """How many programs a jitted function holds (one per distinct input shape); None if JAX hides it."""
  size = getattr(jitted, "_cache_size", None)
  return int(size()) if callable(size) else None


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
