"""Training: the train state, the jitted and sharded step, and `train_and_evaluate(config, workdir)`.

This is the room above the network (models/), the math (diffusion.py), the data (data/) and the plumbing
(sharding.py, checkpointing.py): it joins them and nothing below it knows about the others.

One train step (DDPM Algorithm 1, with the original recipe's optimizer):
  t ~ sampler, ε ~ N(0, I), loss = mean_b w_b · L(θ; x_0, t, ε)   (w = importance weights, 1 if uniform)
  θ ← Adam(clip_by_global_norm(∇θ loss, c), lr · min(step / warmup, 1))
  θ_ema ← decay · θ_ema + (1 - decay) · θ
Randomness: the step's key is fold_in(run key, step), split into timestep, noise and dropout keys, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from ddpm_jax import checkpointing
from ddpm_jax import config_lib
from ddpm_jax import diffusion as diffusion_lib
from ddpm_jax import fileio
from ddpm_jax import resample
from ddpm_jax import sharding
from ddpm_jax import visualize
from ddpm_jax.data import pipeline as data_pipeline
from ddpm_jax.models import unet as unet_lib


class TrainingDivergedError(FloatingPointError):
  """The loss or gradient norm became non-finite; the state after that step is not saved."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]: the run's raw PRNG key (raw, so it checkpoints as a plain array)
  sampler_state: Any  # the timestep sampler's state (empty for uniform)


# ------------------------------------------------------------------------------------------------------------
# Builders.
# ------------------------------------------------------------------------------------------------------------


def create_model(config: ml_collections.ConfigDict, image_shape) -> unet_lib.UNet:
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.out_ch = config_lib.model_out_channels(config, image_shape[-1])
  if model_config.get("num_classes") is not None and config.data.name == "mnist5k" and model_config.num_classes != 10:
    raise ValueError(f"config.model.num_classes={model_config.num_classes!r} is invalid for mnist5k: "
                     "expected None or 10.")
  return unet_lib.unet_from_config(model_config)


def create_diffusion(config: ml_collections.ConfigDict) -> diffusion_lib.GaussianDiffusion:
  d = config.diffusion
  return diffusion_lib.create_diffusion(
      beta_schedule=d.beta_schedule, num_timesteps=d.num_timesteps, beta_start=d.beta_start,
      beta_end=d.beta_end, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type,
      mse_weight=d.get("mse_weight", "none"), min_snr_gamma=d.get("min_snr_gamma", 5.0))


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


def learning_rate_schedule(config) -> Callable[[jax.Array], jax.Array]:
  """The learning rate at a step.

  `optim.lr_schedule`:
    "constant": lr · min(step / warmup, 1), the original's linear warm-up, constant afterwards;
    "cosine":   the same warm-up, then lr · ½(1 + cos(π · (step - warmup) / (num_steps - warmup))),
                annealed to 0 at train.num_steps (a short run ends at a settled minimum instead of
                wherever Adam's noise at a constant rate leaves it).
  """
  lr, warmup = config.optim.learning_rate, config.optim.warmup_steps
  kind = config.optim.get("lr_schedule", "constant")
  if kind not in config_lib.LR_SCHEDULES:
    raise ValueError(f"config.optim.lr_schedule={kind!r} is not supported; choose one of "
                     f"{config_lib.LR_SCHEDULES}.")
  if kind == "constant":
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
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip),
      optax.adam(learning_rate_schedule(config), b1=o.beta1, b2=o.beta2, eps=o.eps))


def _dummy_inputs(model, image_shape, batch=1):
  x = jnp.zeros((batch,) + tuple(image_shape), jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  y = None if model.num_classes is None else jnp.zeros((batch,), jnp.int32)
  return x, t, y


def create_train_state(config, model, tx, sampler, image_shape, mesh) -> TrainState:
  """Initialises parameters (replicated over the mesh) from `config.seed`."""
  def init():
    key = jax.random.PRNGKey(config.seed)
    init_key, run_key = jax.random.split(key)
    x, t, y = _dummy_inputs(model, image_shape)
    params = model.init({"params": init_key}, x, t, y, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params), rng=run_key, sampler_state=sampler.init())
  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


# ------------------------------------------------------------------------------------------------------------
# The step.
# ------------------------------------------------------------------------------------------------------------


def make_train_step(config, model, diffusion, tx, sampler):
  """→ train_step(state, batch) -> (state, metrics) for one global batch {'image', 'label'}."""
  decay = config.optim.ema_decay
  lr_fn = learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
    x_start = batch["image"]
    y = batch["label"] if model.num_classes is not None else None
    key = jax.random.fold_in(state.rng, state.step)
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    t, weights = sampler.sample(state.sampler_state, t_key, x_start.shape[0])
    noise = jax.random.normal(noise_key, x_start.shape, x_start.dtype)

    def loss_fn(params):
      def model_fn(x, timesteps):
        return model.apply({"params": params}, x, timesteps, y, train=True, rngs={"dropout": dropout_key})
      terms = diffusion.training_losses(model_fn, x_start, t, noise)
      return jnp.mean(terms["loss"] * weights), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    sampler_state = sampler.update(state.sampler_state, t, jax.lax.stop_gradient(terms["loss"]))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr_fn(state.step)}
    for name in ("mse", "vb"):
      if name in terms:
        metrics[name] = jnp.mean(terms[name])
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                              sampler_state=sampler_state)
    return new_state, metrics

  return train_step


def make_multi_step(train_step):
  """k steps in one compiled call, over batches stacked on a leading axis [k, B, ...].

  The k steps are unrolled in the traced program rather than looped with lax.scan: XLA:CPU runs a train
  step inside a while loop (even a one-trip scan) about 18× slower than straight-line code (measured:
  6.8 s vs 0.38 s per step of the bundled-digit U-Net on 2 cores), and k is small, so k copies of the
  step cost only compile time. Returns per-step metrics stacked [k] plus `finite`, whether every step's
  loss and gradient were finite.
  """
  def multi_step(state, batches):
    k = jax.tree.leaves(batches)[0].shape[0]
    per_step = []
    for i in range(k):
      state, metrics = train_step(state, jax.tree.map(lambda x, i=i: x[i], batches))
      per_step.append(metrics)
    metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)
    metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    return state, metrics
  return multi_step


def compile_train_step(config, model, diffusion, tx, sampler, mesh, state):
  """jit over the mesh: state replicated and donated, batches [k, B, ...] sharded on B."""
  multi = make_multi_step(make_train_step(config, model, diffusion, tx, sampler))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  return jax.jit(multi, in_shardings=(state_sharding, sharding.batch_sharding(mesh, leading_axes=1)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------------------
# Sampling and bits/dim.
# ------------------------------------------------------------------------------------------------------------


def make_sample_fn(config, model, diffusion, mesh, image_shape):
  """→ sample(params, key, batch) -> images in [-1, 1] [batch, H, W, C], sharded over the mesh."""
  chain = create_sampling_diffusion(config, diffusion)
  s = config.sample

  def sample(params, key, batch):
    labels = None
    if model.num_classes is not None:
      labels = jnp.arange(batch, dtype=jnp.int32) % model.num_classes

    def model_fn(x, timesteps):
      return model.apply({"params": params}, x, timesteps, labels, train=False)
    shape = (batch,) + tuple(image_shape)
    if s.sampler == "ddim":
      return chain.ddim_sample_loop(model_fn, shape, key=key, eta=s.eta, clip_denoised=s.clip_denoised)
    return chain.p_sample_loop(model_fn, shape, key=key, clip_denoised=s.clip_denoised)

  return jax.jit(sample, static_argnums=2, out_shardings=sharding.batch_sharding(mesh))


def generate_samples(sample_fn, params, *, key, num_samples: int, batch_size: int, mesh,
                     desc: str | None = None) -> np.ndarray:
  """Exactly `num_samples` images in [-1, 1] as a host array: full batches, the last one trimmed.

  Batch i uses fold_in(key, i), so the samples do not depend on how many are drawn after them.
  """
  n_dev = mesh.devices.size
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  out = []
  num_batches = math.ceil(num_samples / batch_size)
  for i in tqdm.trange(num_batches, desc=desc, disable=desc is None or jax.process_index() != 0, leave=False):
    x = sample_fn(params, jax.random.fold_in(key, i), batch_size)
    out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
  return np.concatenate(out)[:num_samples]


def _bound_terms(config, model, diffusion):
  """terms(params, batch, key) -> `calc_bpd_loop`'s dict for a batch (not jitted; shared below)."""
  def terms(params, batch, key):
    y = batch["label"] if model.num_classes is not None else None

    def model_fn(xt, timesteps):
      return model.apply({"params": params}, xt, timesteps, y, train=False)
    return diffusion.calc_bpd_loop(model_fn, batch["image"], key=key, clip_denoised=config.eval.clip_denoised)

  return terms


def make_bpd_fn(config, model, diffusion, *, full_bound: bool):
  """→ bpd(params, batch, key) -> per-example bits/dim [B].

  full_bound: the whole variational bound, L_T + Σ_t L_t over all T terms (`calc_bpd_loop`).
  Otherwise an unbiased estimate of the same quantity from K timesteps per example drawn uniformly:
  L_T + T · mean_k L_{t_k} (K = eval.timesteps_per_example), much cheaper and used while training.
  """
  if full_bound:
    terms = _bound_terms(config, model, diffusion)
    return jax.jit(lambda params, batch, key: terms(params, batch, key)["total_bpd"])
  k = config.eval.timesteps_per_example

  def bpd(params, batch, key):
    x = batch["image"]
    y = batch["label"] if model.num_classes is not None else None

    def model_fn(xt, timesteps):
      return model.apply({"params": params}, xt, timesteps, y, train=False)

    def term(_, key_i):
      t_key, n_key = jax.random.split(key_i)
      t = jax.random.randint(t_key, x.shape[:1], 0, diffusion.num_timesteps)
      noise = jax.random.normal(n_key, x.shape)
      x_t = diffusion.q_sample(x, t, noise)
      out = model_fn(x_t, diffusion.model_timesteps(t))
      return None, diffusion.vb_terms_bpd(out, x, x_t, t, clip_denoised=config.eval.clip_denoised)
    _, terms = jax.lax.scan(term, None, jax.random.split(key, k))
    return diffusion.prior_bpd(x) + diffusion.num_timesteps * jnp.mean(terms, axis=0)

  return jax.jit(bpd)


def make_bound_terms_fn(config, model, diffusion):
  """→ terms(params, batch, key) -> `calc_bpd_loop`'s dict: total_bpd [B], prior_bpd [B], terms_bpd [B, T],
  mse [B, T] (per-timestep ‖x̂_0 − x_0‖² on the [-1, 1] scale), for `--mode bpd`."""
  return jax.jit(_bound_terms(config, model, diffusion))


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


# ------------------------------------------------------------------------------------------------------------
# Logging.
# ------------------------------------------------------------------------------------------------------------


class MetricWriter:
  """Scalars to `metrics.jsonl` and TensorBoard event files (tensorboardX; no TensorFlow), images to TB.

  For a URL workdir (gs://...) both are written to a local mirror and uploaded at most every
  `sync_seconds` and on close (object stores cannot append).
  """

  def __init__(self, workdir: str, *, enabled: bool = True, sync_seconds: float = 60.0):
    self.enabled = enabled
    self._tb = None
    if enabled:
      self._mirror = fileio.LocalMirror(workdir)
      self._mirror.pull("metrics.jsonl")  # a resumed run continues the remote log
      self._jsonl = open(os.path.join(self._mirror.path, "metrics.jsonl"), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(self._mirror.path, "tensorboard"))
      self._sync_seconds = sync_seconds
      self._last_sync = time.time()

  def _maybe_sync(self):
    if self._mirror.remote and time.time() - self._last_sync >= self._sync_seconds:
      self._tb.flush()
      self._mirror.sync()
      self._last_sync = time.time()

  def scalars(self, step: int, values: dict[str, float]):
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._maybe_sync()

  def image(self, step: int, tag: str, image_uint8: np.ndarray):
    if self.enabled:
      self._tb.add_image(tag, image_uint8, int(step), dataformats="HWC")
      self._maybe_sync()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      self._mirror.close()


def _is_main_process():
  return jax.process_index() == 0


def log(message: str) -> None:
  """One line for people (process 0 only), above any progress bar; absl logging keeps the details."""
  logging.info(message)
  if _is_main_process():
    tqdm.tqdm.write(message)


# ------------------------------------------------------------------------------------------------------------
# The entry point.
# ------------------------------------------------------------------------------------------------------------


class Experiment:
  """Everything built from a config: model, diffusion, optimizer, sampler, mesh, state template."""

  def __init__(self, config: ml_collections.ConfigDict):
    config_lib.validate_config(config)
    self.config = config
    self.mesh = sharding.create_mesh()
    sharding.check_batch_size(config.train.batch_size, self.mesh)
    self.image_shape = data_pipeline.get_image_shape(config.data)
    self.model = create_model(config, self.image_shape)
    self.diffusion = create_diffusion(config)
    self.tx = create_optimizer(config)
    self.sampler = resample.create_named_schedule_sampler(config.diffusion.timestep_sampler,
                                                          config.diffusion.num_timesteps)

  def init_state(self) -> TrainState:
    return create_train_state(self.config, self.model, self.tx, self.sampler, self.image_shape, self.mesh)

  def sample_fn(self):
    return make_sample_fn(self.config, self.model, self.diffusion, self.mesh, self.image_shape)

  def bpd_fn(self, *, full_bound: bool):
    return make_bpd_fn(self.config, self.model, self.diffusion, full_bound=full_bound)


def _checkpoint_manager(config, workdir):
  return checkpointing.CheckpointManager(
      fileio.join(workdir, "checkpoints"), save_interval_steps=config.train.checkpoint_every,
      max_to_keep=config.train.keep_checkpoints, keep_every_n_steps=config.train.archive_every or None)


def _resolve_workdir(workdir: str) -> str:
  """The workdir as an absolute local path, or a URL (gs://bucket/run) kept as it is."""
  if not isinstance(workdir, (str, os.PathLike)) or not os.fspath(workdir).strip():
    raise ValueError(f"--workdir={workdir!r} is invalid: expected a local folder or a gs://bucket/path URL.")
  return fileio.resolve(workdir)


def checkpoint_steps(config, workdir) -> list[int]:
  """The steps of the checkpoints kept in `workdir`, increasing."""
  manager = _checkpoint_manager(config, _resolve_workdir(workdir))
  try:
    return sorted(int(s) for s in manager.all_steps())
  finally:
    manager.close()


def restore_for_inference(config, workdir, *, step: int | None = None, exp: "Experiment | None" = None):
  """→ (experiment, state) from the latest (or given) checkpoint in `workdir`; errors if there is none.

  Pass `exp` (an earlier call's experiment) to restore several checkpoints without rebuilding it.
  """
  exp = exp or Experiment(config)
  template = exp.init_state()
  manager = _checkpoint_manager(config, _resolve_workdir(workdir))
  try:
    if not manager.has_checkpoint():
      raise FileNotFoundError(f"No checkpoint in {manager.directory}: train first with --mode train "
                              f"--workdir {workdir}.")
    state = manager.restore(template, step=step)
  finally:
    manager.close()
  return exp, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint if there is one), then samples and evaluates.

  Writes into `workdir`: checkpoints/, metrics.jsonl, tensorboard/, samples/step_N.png (EMA grids),
  config.json and summary.json. Returns the summary dict.
  """
  workdir = _resolve_workdir(workdir)
  exp = Experiment(config)
  main = _is_main_process()
  if main:
    fileio.makedirs(workdir)
    fileio.write_text(fileio.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  state = exp.init_state()
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  train_iter = data_pipeline.create_train_iterator(config.data, batch_size=config.train.batch_size,
                                                   seed=config.seed)
  manager = _checkpoint_manager(config, workdir)
  writer = MetricWriter(workdir, enabled=main)
  start_step = 0
  if manager.has_checkpoint():
    state = manager.restore(state, data_iterator=train_iter)
    start_step = int(state.step)
    log(f"Resumed from {manager.directory} at step {start_step}.")
  last_good = start_step if start_step else None

  k = config.train.steps_per_call
  num_steps = config.train.num_steps
  if (num_steps - start_step) % k:
    raise ValueError(f"config.train.num_steps={num_steps} is invalid: (num_steps - resumed step {start_step}) "
                     f"must be a multiple of train.steps_per_call={k}.")
  step_fn = compile_train_step(config, exp.model, exp.diffusion, exp.tx, exp.sampler, exp.mesh, state)
  sample_fn = exp.sample_fn()
  sample_key = jax.random.PRNGKey(config.seed + 1)
  eval_bpd_fn = exp.bpd_fn(full_bound=False) if config.train.eval_every else None
  pending = []  # device metrics since the last log, fetched only at log / checkpoint time

  def flush(step):
    """Fetches pending metrics, stops on a non-finite step, logs their mean."""
    nonlocal pending
    if not pending:
      return {}
    fetched = jax.device_get(pending)
    pending = []
    finite = np.concatenate([m["finite"] for m in fetched])
    if not finite.all():
      first_bad = step - len(finite) + int(np.argmin(finite)) + 1
      bad = {k_: float(np.concatenate([m[k_] for m in fetched])[np.argmin(finite)]) for k_ in ("loss", "grad_norm")}
      hint = (f"the last good checkpoint is step {last_good} in {manager.directory}; resume from it (it is "
              "restored automatically) with a lower learning rate or a tighter clip" if last_good is not None
              else "no checkpoint was written before it")
      raise TrainingDivergedError(
          f"Non-finite training step {first_bad}: loss={bad['loss']}, grad_norm={bad['grad_norm']}. Stopped "
          f"without saving the diverged state; {hint}.")
    means = {k_: float(np.mean(np.concatenate([np.atleast_1d(m[k_]) for m in fetched])))
             for k_ in fetched[0] if k_ != "finite"}
    writer.scalars(step, means)
    return means

  def write_grid(step, name):
    images = generate_samples(sample_fn, state.ema_params if config.sample.use_ema else state.params,
                              key=sample_key, num_samples=config.train.num_grid_samples,
                              batch_size=config.sample.batch_size, mesh=exp.mesh, desc="sampling")
    if main:
      path = visualize.save_grid(fileio.join(workdir, "samples", name), images)
      writer.image(step, "samples", visualize.make_grid(visualize.to_uint8(images)))
      return path

  manager.install_preemption_handler()
  log(f"Training {num_params:,} parameters for {num_steps} steps: {config.diffusion.mean_type} / "
      f"{config.diffusion.var_type} / {config.diffusion.loss_type}, batch {config.train.batch_size} on "
      f"{exp.mesh.devices.size} {jax.devices()[0].platform} device(s). Workdir: {workdir}")
  t_start = time.time()
  step = start_step
  last_log_time, last_log_step, last_metrics = time.time(), step, {}
  preempted = False
  try:
    with tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step", disable=not main,
                   dynamic_ncols=True) as bar:
      while step < num_steps:
        local = [next(train_iter) for _ in range(k)]
        batches = sharding.global_batch(jax.tree.map(lambda *xs: np.stack(xs), *local), exp.mesh, leading_axes=1)
        state, metrics = step_fn(state, batches)
        pending.append(metrics)
        step += k
        bar.update(k)
        if step % config.train.log_every == 0 or step == num_steps:
          last_metrics = flush(step)
          now = time.time()
          ips = (step - last_log_step) * config.train.batch_size / max(now - last_log_time, 1e-9)
          last_log_time, last_log_step = now, step
          writer.scalars(step, {"images_per_sec": ips})
          bar.set_postfix(loss=f"{last_metrics['loss']:.4g}", img_s=f"{ips:.0f}")
        preempted = manager.reached_preemption(step)
        if step % config.train.checkpoint_every == 0 or preempted or step == num_steps:
          flush(step)
          manager.save(step, state, data_iterator=train_iter, force=True,
                       metadata={"config": json.loads(config.to_json_best_effort())})
          last_good = step
        if preempted:
          log(f"Preemption signal: saved step {step} to {manager.directory}; stopping. Run the same command "
              "to resume.")
          break
        if config.train.sample_every and step % config.train.sample_every == 0 and step != num_steps:
          write_grid(step, f"step_{step}.png")
        if config.train.eval_every and step % config.train.eval_every == 0 and step != num_steps:
          res = evaluate_bpd(config, eval_bpd_fn, state.ema_params, exp.mesh,
                             key=jax.random.PRNGKey(config.seed + 2), num_examples=config.eval.num_examples)
          writer.scalars(step, {"eval_bpd": res["bpd"]})
    manager.wait_until_finished()
  finally:
    manager.close()

  train_time = time.time() - t_start
  summary = {"workdir": workdir, "step": step, "num_params": int(num_params), "train_seconds": train_time,
             "preempted": preempted, "final_train_metrics": last_metrics}
  if not preempted and step > start_step:
    summary["samples_png"] = write_grid(step, f"step_{step}.png")
    if main:  # the latest grid also under a fixed name, for people and the README
      fileio.copy(summary["samples_png"], fileio.join(workdir, "samples.png"))
    params = state.ema_params if config.eval.use_ema else state.params
    res = evaluate_bpd(config, exp.bpd_fn(full_bound=config.eval.full_bound), params, exp.mesh,
                       key=jax.random.PRNGKey(config.seed + 2), num_examples=config.eval.num_examples,
                       desc="bits/dim")
    summary.update({f"test_{k_}": v for k_, v in res.items()})
    summary["test_bpd_method"] = bpd_method(config)
    summary["test_bpd_params"] = "ema" if config.eval.use_ema else "raw"
    writer.scalars(step, {"test_bpd": res["bpd"]})
  writer.close()
  if main:
    fileio.write_text(fileio.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
