"""One experiment built from its config: the network, the diffusion, the mesh, the random streams, and
restoring trained parameters. Training (train.py), sampling (sampling.py) and bits/dim (likelihood.py) all
start here; nothing here knows how a train step, a sampler or the bound works.

What each job builds:
  sampling / bits/dim  model, diffusion, mesh, then `restore_params` (only the parameters, from a workdir);
  training             the same, plus `tx` (the optimizer) and `timestep_sampler`, built on first use.
Neither needs the dataset on disk to know the image shape (`data.pipeline.model_image_shape`).

The one `model_fn`: every caller of the network (train step, samplers, the bound) evaluates
  ε / x_0 / μ (and the variance output) = UNet(x_t, t, y; params)
through `model_fn(model, params, ...)`, which decides once how labels, dropout and the train flag reach it.

Random streams: every key a run uses comes from `config.seed` through `stream_key` and `step_keys`, by name
(`STREAMS`); nothing else turns a seed or a key into a new stream.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddpm_jax import checkpointing
from ddpm_jax import config_lib
from ddpm_jax import diffusion as diffusion_lib
from ddpm_jax import errors
from ddpm_jax import fileio
from ddpm_jax import params_dir as params_dir_lib
from ddpm_jax import resample
from ddpm_jax import sharding
from ddpm_jax import workdir as workdir_lib
from ddpm_jax.data import pipeline as data_pipeline
from ddpm_jax.models import unet as unet_lib

# ------------------------------------------------------------------------------------------------------------
# Random streams.
# ------------------------------------------------------------------------------------------------------------

# Each named stream is PRNGKey(config.seed + offset). The offsets are the ones every earlier release used, so
# a seed still gives the same parameters, losses, samples and bits/dim; they are distinct, so no two streams
# share a key (tests/test_experiment.py checks that). Within a stream, the i-th batch or step is fold_in(key,
# i); a stream's named sub-streams (below) fold in constants far above any batch index.
STREAMS = {
    "train": 0,           # split → (init: parameter initialisation, run: the per-step keys of `step_keys`)
    "sample": 1,          # sample grids and `--mode sample`: batch i uses fold_in(key, i)
    "eval": 2,            # bits/dim: the eval split's batch i uses fold_in(key, i)
    "metric_samples": 3,  # the samples that sample-quality metrics (MNIST-FD, FID, IS) are computed on
}
SUBSTREAMS = {
    "progressive": 10**6,  # in "sample": the chains of the progressive x̂_0 strip
    "warmup": 10**4,       # in "sample" / "eval": the benchmarks' warm-up batches, apart from the timed ones
    "label_dropout": 10**5,  # in a train step's dropout key: which labels become the null class
}


def stream_key(seed: int, name: str) -> jax.Array:
  """The key of the named stream (`STREAMS`) of a run with this seed."""
  if name not in STREAMS:
    raise ValueError(f"random stream {name!r} is not known; accepted: {sorted(STREAMS)}.")
  return jax.random.PRNGKey(seed + STREAMS[name])


def substream_key(key: jax.Array, name: str) -> jax.Array:
  """A named sub-stream (`SUBSTREAMS`) of a stream's (or a step's) key."""
  if name not in SUBSTREAMS:
    raise ValueError(f"random sub-stream {name!r} is not known; accepted: {sorted(SUBSTREAMS)}.")
  return jax.random.fold_in(key, SUBSTREAMS[name])


def init_and_run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init, run): the parameter-initialisation key and the run key the train steps draw from."""
  init_key, run_key = jax.random.split(stream_key(seed, "train"))
  return init_key, run_key


class StepKeys(NamedTuple):
  timesteps: jax.Array  # t ~ the timestep sampler
  noise: jax.Array      # ε ~ N(0, I)
  dropout: jax.Array    # the network's dropout masks


def step_keys(run_key: jax.Array, step: jax.Array) -> StepKeys:
  """The keys of train step `step`: fold_in(run key, step) split three ways, so a resumed run draws exactly
  what an uninterrupted one would."""
  return StepKeys(*jax.random.split(jax.random.fold_in(run_key, step), 3))


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
  """Classifier-free guidance's label dropout: each label becomes `null_label` with probability `rate`."""
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), null_label, labels)


# ------------------------------------------------------------------------------------------------------------
# The network call.
# ------------------------------------------------------------------------------------------------------------


def model_fn(model: unet_lib.UNet, params: Any, *, labels: jax.Array | None = None, train: bool = False,
             dropout_key: jax.Array | None = None,
             guidance_scale: float = 1.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """→ f(x_t, t) = UNet(x_t, t, y; params), the function the diffusion math calls.

  labels: class labels [B] for a class-conditional model; ignored (None is passed) for an unconditional one.
  train: dropout on (needs `dropout_key`); off for sampling and the bound.
  guidance_scale: w of classifier-free guidance (`diffusion.classifier_free_guidance`) for a model with a
    null class: 1 is the plain conditional model, 0 the null-class (unconditional) one; any other w runs
    the conditional and null labels as one batch of 2B (one network call) and combines the outputs.
  """
  y = labels if model.num_classes is not None else None
  if train and dropout_key is None:
    raise ValueError("model_fn(train=True) needs dropout_key.")
  rngs = {"dropout": dropout_key} if train else None

  def apply(x, timesteps, y):
    return model.apply({"params": params}, x, timesteps, y, train=train, rngs=rngs)

  if y is None or guidance_scale == 1.0:
    return lambda x, timesteps: apply(x, timesteps, y)
  if not model.null_class:
    raise ValueError(f"guidance_scale={guidance_scale} needs a model with a null class (model.label_dropout > 0).")
  null = jnp.full_like(y, model.num_classes)
  if guidance_scale == 0.0:
    return lambda x, timesteps: apply(x, timesteps, null)

  def guided(x, timesteps):
    both = apply(jnp.concatenate([x, x]), jnp.concatenate([timesteps, timesteps]), jnp.concatenate([y, null]))
    cond, uncond = jnp.split(both, 2, axis=0)
    return diffusion_lib.classifier_free_guidance(cond, uncond, guidance_scale, mean_channels=x.shape[-1])
  return guided


# ------------------------------------------------------------------------------------------------------------
# Builders.
# ------------------------------------------------------------------------------------------------------------


def create_model(config: ml_collections.ConfigDict, image_shape) -> unet_lib.UNet:
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.out_ch = config_lib.model_out_channels(config, image_shape[-1])
  return unet_lib.unet_from_config(model_config)


def create_diffusion(config: ml_collections.ConfigDict) -> diffusion_lib.GaussianDiffusion:
  d = config.diffusion
  return diffusion_lib.create_diffusion(
      beta_schedule=d.beta_schedule, num_timesteps=d.num_timesteps, beta_start=d.beta_start,
      beta_end=d.beta_end, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type,
      mse_weight=d.get("mse_weight", "none"), min_snr_gamma=d.get("min_snr_gamma", 5.0))


def learning_rate_schedule(config) -> Callable[[jax.Array], jax.Array]:
  """The learning rate at a step.

  `optim.lr_schedule`:
    "constant": lr · min(step / warmup, 1), the original's linear warm-up, constant afterwards;
    "cosine":   the same warm-up, then lr · ½(1 + cos(π · (step - warmup) / (num_steps - warmup))),
                annealed to 0 at train.num_steps (a short run ends at a settled minimum instead of
                wherever Adam's noise at a constant rate leaves it).
  """
  lr, warmup = config.optim.learning_rate, config.optim.warmup_steps
  if config.optim.get("lr_schedule", "constant") == "constant":
    if warmup == 0:
      return optax.constant_schedule(lr)
    return lambda step: lr * jnp.minimum(step / warmup, 1.0)
  decay_steps = max(config.train.num_steps - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    ramp = jnp.minimum(step / warmup, 1.0) if warmup else 1.0
    frac = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    return lr * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  return schedule


def create_optimizer(config) -> optax.GradientTransformation:
  """Adam on globally clipped gradients with the warm-up schedule (the original recipe's optimizer)."""
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip),
      optax.adam(learning_rate_schedule(config), b1=o.beta1, b2=o.beta2, eps=o.eps))


def dummy_inputs(model, image_shape, batch=1):
  """Zero (x, t, y) of the network's input shapes, for `init` and shape evaluation."""
  x = jnp.zeros((batch,) + tuple(image_shape), jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  y = None if model.num_classes is None else jnp.zeros((batch,), jnp.int32)
  return x, t, y


def resolve_workdir(workdir: str) -> str:
  """The workdir as an absolute local path, or a URL (gs://bucket/run) kept as it is."""
  if not isinstance(workdir, (str, os.PathLike)) or not isinstance(os.fspath(workdir), str) or \
      not os.fspath(workdir).strip():
    raise ValueError(f"--workdir={workdir!r} is invalid: expected a local folder or a gs://bucket/path URL.")
  return fileio.resolve(os.fspath(workdir))


def checkpoint_dir(workdir) -> str:
  return fileio.join(workdir_lib.resolve(workdir), "checkpoints")


def checkpoint_manager(config, workdir) -> checkpointing.CheckpointManager:
  """The manager of `<workdir>/checkpoints` with the config's cadence and retention (creates the folder)."""
  return checkpointing.CheckpointManager(
      checkpoint_dir(workdir), save_interval_steps=config.train.checkpoint_every,
      max_to_keep=config.train.keep_checkpoints, keep_every_n_steps=config.train.archive_every or None)


def require_checkpoints(workdir) -> None:
  """Raises NoCheckpointError, creating nothing, unless `workdir` has a checkpoints folder."""
  if not fileio.exists(checkpoint_dir(workdir)):
    where = workdir_lib.resolve(workdir)
    what = "does not exist" if not fileio.exists(where) else "holds no checkpoints/ folder"
    raise errors.NoCheckpointError(f"--workdir {where} {what}: train first with --mode train, or pass "
                                   "--params DIR for a converted parameter directory.")


def checkpoint_steps(config, workdir) -> list[int]:
  """The steps of the checkpoints kept in `workdir`, increasing."""
  require_checkpoints(workdir)
  manager = checkpoint_manager(config, workdir)
  try:
    return sorted(int(s) for s in manager.all_steps())
  finally:
    manager.close()


class Experiment:
  """What a config describes: the network, the diffusion and the device mesh; for training, the optimizer
  and the timestep sampler too (built when first asked for). The config is validated first, once."""

  def __init__(self, config: ml_collections.ConfigDict, *, devices=None):
    config_lib.validate(config)
    self.config = config
    self.mesh = sharding.create_mesh(devices)
    self.image_shape = data_pipeline.model_image_shape(config.data)
    self.model = create_model(config, self.image_shape)
    self.diffusion = create_diffusion(config)

  @functools.cached_property
  def tx(self) -> optax.GradientTransformation:
    return create_optimizer(self.config)

  @functools.cached_property
  def timestep_sampler(self):
    return resample.create_named_schedule_sampler(self.config.diffusion.timestep_sampler,
                                                  self.config.diffusion.num_timesteps)

  def check_batch_sizes(self, *fields: str) -> None:
    """Raises ConfigError unless each batch-size field ('train.batch_size', 'eval.batch_size') splits over
    the mesh's devices: checked before anything is compiled or read, so that a bad eval.batch_size does
    not wait for the end of training to show."""
    for field in fields:
      section, name = field.split(".")
      sharding.check_batch_size(self.config[section][name], self.mesh, field=field)

  def model_fn(self, params, **kwargs) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return model_fn(self.model, params, **kwargs)

  def initial_params(self, key: jax.Array) -> Any:
    """The network's initial parameters drawn from `key` (traceable; `init_params` runs it compiled)."""
    x, t, y = dummy_inputs(self.model, self.image_shape)
    return self.model.init({"params": key}, x, t, y, train=False)["params"]

  def init_params(self, key: jax.Array) -> Any:
    """Freshly initialised parameters, replicated over the mesh."""
    return jax.jit(self.initial_params, out_shardings=sharding.replicated(self.mesh))(key)

  def abstract_params(self) -> Any:
    """The parameters' shapes and dtypes (ShapeDtypeStructs replicated over the mesh); nothing is computed."""
    shapes = jax.eval_shape(self.initial_params, jax.random.PRNGKey(0))
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)

  def restore_params(self, workdir: str, *, step: int | None = None, use_ema: bool = True) -> tuple[int, Any]:
    """→ (checkpoint step, parameters) from the latest (or given) checkpoint in `workdir`: the EMA
    parameters if `use_ema`, else the raw ones. Reads only those arrays (no optimizer state, no data
    iterator), so it needs neither the optimizer nor the dataset."""
    field = "ema_params" if use_ema else "params"
    require_checkpoints(workdir)
    manager = checkpoint_manager(self.config, workdir)
    try:
      if not manager.has_checkpoint():
        raise errors.NoCheckpointError(f"No checkpoint in {manager.directory}: train first with --mode train "
                                       f"--workdir {workdir}.")
      restored = manager.restore_fields({"step": jax.ShapeDtypeStruct((), jnp.int32),
                                         field: self.abstract_params()}, step=step)
    finally:
      manager.close()
    return int(restored["step"]), restored[field]

  def load_params(self, directory: str) -> tuple[int, Any, dict]:
    """→ (step, parameters, description) from a parameter directory (`params_dir`, e.g. a converted TF
    checkpoint), after checking that it was written for this config's network, data shape and chain.
    The step is the source checkpoint's global step (0 if it had none)."""
    info = params_dir_lib.read_info(directory)
    params_dir_lib.check_compatible(info, self.config, directory=directory)
    if tuple(info.get("image_shape", ())) != tuple(self.image_shape):
      raise params_dir_lib.ParamsDirError(
          f"--params {directory} holds parameters for {tuple(info.get('image_shape', ()))} images, but this "
          f"config's data gives {tuple(self.image_shape)}.")
    params = params_dir_lib.read_params(directory, expected=self.abstract_params())
    params = jax.device_put(params, sharding.replicated(self.mesh))
    return int(info.get("step") or 0), params, info

  def inference_params(self, workdir: str | None, *, params_dir: str | None = None, step: int | None = None,
                       use_ema: bool = True) -> tuple[int, Any, str]:
    """→ (step, parameters, 'ema' | 'raw') for sampling and evaluation: from `params_dir` when given (a
    converted checkpoint; `step` must then be None), else from the workdir's checkpoints."""
    if params_dir:
      if step is not None:
        raise errors.UsageError(f"--step={step} selects a workdir checkpoint, but --params {params_dir} holds "
                                "one parameter set; drop one of the two.")
      ckpt_step, params, info = self.load_params(params_dir)
      return ckpt_step, params, info["params"]
    ckpt_step, params = self.restore_params(workdir, step=step, use_ema=use_ema)
    return ckpt_step, params, "ema" if use_ema else "raw"
