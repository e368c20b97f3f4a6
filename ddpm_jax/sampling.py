"""Drawing samples: the chain they are drawn on, the compiled sampler, batching to exactly N images, and the
progressive x̂_0 strip. Needs only an `Experiment` and parameters (no optimizer, no dataset).

Ancestral sampling (DDPM Algorithm 2) on the chain `create_sampling_diffusion` picks:
  x_T ~ N(0, I);  x_{t-1} = μ_θ(x_t, t) + σ_t z,  z ~ N(0, I) for t > 0, z = 0 at t = 0;
DDIM (Song et al. 2021, eq. 12) with `sample.sampler = "ddim"` and `sample.eta`.
"""

from __future__ import annotations

import math

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import tqdm

from ddpm_jax import diffusion as diffusion_lib
from ddpm_jax import experiment as experiment_lib
from ddpm_jax import sharding


def create_sampling_diffusion(config, diffusion: diffusion_lib.GaussianDiffusion):
  """The chain samples are drawn on: all T steps, or a respaced chain of `sample.steps` steps placed by
  `sample.skip_type` (`diffusion.sampling_timesteps`)."""
  steps = config.sample.steps
  skip_type = config.sample.get("skip_type", "even")
  if steps and (steps != diffusion.num_timesteps or skip_type != "even"):
    kept = diffusion_lib.sampling_timesteps(diffusion.num_timesteps, steps, skip_type)
    if len(kept) != diffusion.num_timesteps:
      return diffusion.respace(kept)
  return diffusion


def sampler_tag(config) -> str:
  """A short name of the sampler a config selects, for file names: 'ancestral100', 'ddim50_eta0', ..."""
  s = config.sample
  steps = s.steps or config.diffusion.num_timesteps
  tag = f"{s.sampler}{steps}"
  if s.steps and s.skip_type != "even":
    tag += f"_{s.skip_type}"
  if s.sampler == "ddim":
    tag += f"_eta{s.eta:g}"
  if s.get("guidance_scale", 1.0) != 1.0:
    tag += f"_w{s.guidance_scale:g}"
  if s.get("labels", ()):
    tag += "_y" + "-".join(str(y) for y in s.labels)
  return tag


def sample_labels(config, model, num_samples: int) -> np.ndarray | None:
  """The label of each of `num_samples` samples of a class-conditional model (None for an unconditional
  one): `sample.labels` cycled, or every class in turn (0, 1, …, num_classes−1, 0, …) when it is empty."""
  if model.num_classes is None:
    return None
  chosen = tuple(config.sample.get("labels", ()) or ()) or tuple(range(model.num_classes))
  return np.resize(np.asarray(chosen, np.int32), num_samples)


def make_sample_fn(exp: experiment_lib.Experiment, config=None, *, guidance_scale: float | None = None):
  """→ sample(params, key, batch, labels) -> images in [-1, 1] [batch, H, W, C], sharded over the mesh.

  `labels` [batch] (int32) for a class-conditional model, None otherwise. `config` (default: the
  experiment's) supplies `sample.*`: sampler, chain length and spacing, eta, clipping, and the guidance
  scale unless `guidance_scale` is given.
  """
  config = config or exp.config
  chain = create_sampling_diffusion(config, exp.diffusion)
  s = config.sample
  w = s.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale

  def sample(params, key, batch, labels=None):
    model_fn = exp.model_fn(params, labels=labels, guidance_scale=w)
    shape = (batch,) + tuple(exp.image_shape)
    if s.sampler == "ddim":
      return chain.ddim_sample_loop(model_fn, shape, key=key, eta=s.eta, clip_denoised=s.clip_denoised)
    return chain.p_sample_loop(model_fn, shape, key=key, clip_denoised=s.clip_denoised)

  return jax.jit(sample, static_argnums=2, out_shardings=sharding.batch_sharding(exp.mesh))


def generate_samples(sample_fn, params, *, key, num_samples: int, batch_size: int, mesh,
                     labels: np.ndarray | None = None, desc: str | None = None) -> np.ndarray:
  """Exactly `num_samples` images in [-1, 1] as a host array: full batches, the last one trimmed.

  Batch i uses fold_in(key, i), so the samples do not depend on how many are drawn after them. `labels`
  (one per sample, e.g. `sample_labels`) condition a class-conditional model; the last batch's padding
  repeats its first labels.
  """
  n_dev = mesh.devices.size
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  out = []
  num_batches = math.ceil(num_samples / batch_size)
  for i in tqdm.trange(num_batches, desc=desc, disable=desc is None or jax.process_index() != 0, leave=False):
    batch_labels = None
    if labels is not None:
      chunk = np.asarray(labels[i * batch_size:(i + 1) * batch_size], np.int32)
      batch_labels = jax.device_put(np.resize(chunk, batch_size), sharding.batch_sharding(mesh))
    x = sample_fn(params, jax.random.fold_in(key, i), batch_size, batch_labels)
    out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
  return np.concatenate(out)[:num_samples]


def class_rows(images: np.ndarray, labels: np.ndarray | None, num_classes: int | None, *, per_class: int = 10):
  """(images, ncol) for a grid with one row per class, in class order, when every class was drawn; else
  (unconditional samples, labels None, included) the images as they are (ncol None)."""
  if labels is None or set(np.unique(labels).tolist()) != set(range(num_classes)):
    return images, None
  n = min(per_class, min(int((labels == c).sum()) for c in range(num_classes)))
  rows = [images[np.flatnonzero(labels == c)[:n]] for c in range(num_classes)]
  return np.concatenate(rows), n


def progressive_strip(exp: experiment_lib.Experiment, params, *, key, rows: int) -> tuple[np.ndarray, list[int]]:
  """x̂_0 predicted along one ancestral chain (the original's `p_sample_loop_progressive`).

  Returns ([rows, K + 1, H, W, C] in [-1, 1], the K recorded timesteps, high to low): column k is x̂_0 at
  the k-th recorded timestep and the last column is the sample itself.
  """
  config = exp.config
  chain = create_sampling_diffusion(config, exp.diffusion)
  freq = max(1, chain.num_timesteps // 10)
  n_dev = exp.mesh.devices.size
  batch = max(n_dev, math.ceil(rows / n_dev) * n_dev)

  labels = sample_labels(config, exp.model, batch)  # a conditional model: its sample labels, guided alike
  w = config.sample.get("guidance_scale", 1.0)

  def run(params, key, labels):
    model_fn = exp.model_fn(params, labels=labels, guidance_scale=w)
    return chain.p_sample_loop_progressive(model_fn, (batch,) + tuple(exp.image_shape), key=key,
                                           clip_denoised=config.sample.clip_denoised,
                                           include_xstartpred_freq=freq)

  out_sharding = sharding.batch_sharding(exp.mesh)
  sample, preds = jax.jit(run, out_shardings=(out_sharding, out_sharding))(
      params, key, None if labels is None else jnp.asarray(labels))
  sample = np.asarray(multihost_utils.process_allgather(sample, tiled=True))[:rows]
  preds = np.asarray(multihost_utils.process_allgather(preds, tiled=True))[:rows]
  # Slot k holds x̂_0 at chain index k · freq: show them from the noisiest to the cleanest.
  recorded = [int(chain.timestep_map[k * freq]) for k in range(preds.shape[1])][::-1]
  strip = np.concatenate([preds[:, ::-1], sample[:, None]], axis=1)
  return strip, recorded
