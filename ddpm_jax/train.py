"""Training: the train state, the jitted and sharded step, and `train_and_evaluate(config, workdir)`.

Only training lives here: an `Experiment` (experiment.py) supplies the network, diffusion, optimizer, timestep
sampler and mesh; sampling.py draws the sample grids and likelihood.py the bits/dim it reports.

One train step (DDPM Algorithm 1, with the original recipe's optimizer):
  t ~ sampler, ε ~ N(0, I), loss = mean_b w_b · L(θ; x_0, t, ε)   (w = importance weights, 1 if uniform)
  θ ← Adam(clip_by_global_norm(∇θ loss, c), lr · min(step / warmup, 1))
  θ_ema ← decay · θ_ema + (1 - decay) · θ
Randomness: `experiment.step_keys(run key, step)`, so a resumed run draws exactly what an uninterrupted one
would.
"""

from __future__ import annotations

import json
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from ddpm_jax import experiment as experiment_lib
from ddpm_jax import fileio
from ddpm_jax import likelihood
from ddpm_jax import sampling
from ddpm_jax import sharding
from ddpm_jax import visualize
from ddpm_jax.data import pipeline as data_pipeline
from ddpm_jax.metrics_writer import log
from ddpm_jax.metrics_writer import MetricWriter


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


def create_train_state(exp: experiment_lib.Experiment) -> TrainState:
  """Initialises parameters (replicated over the mesh) from `config.seed`'s "train" stream."""
  model, tx, sampler = exp.model, exp.tx, exp.timestep_sampler

  def init():
    init_key, run_key = experiment_lib.init_and_run_keys(exp.config.seed)
    x, t, y = experiment_lib.dummy_inputs(model, exp.image_shape)
    params = model.init({"params": init_key}, x, t, y, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params), rng=run_key, sampler_state=sampler.init())
  return jax.jit(init, out_shardings=sharding.replicated(exp.mesh))()


# ------------------------------------------------------------------------------------------------------------
# The step.
# ------------------------------------------------------------------------------------------------------------


def make_train_step(exp: experiment_lib.Experiment):
  """→ train_step(state, batch) -> (state, metrics) for one global batch {'image', 'label'}."""
  config, diffusion, tx, sampler = exp.config, exp.diffusion, exp.tx, exp.timestep_sampler
  decay = config.optim.ema_decay
  lr_fn = experiment_lib.learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
    x_start = batch["image"]
    keys = experiment_lib.step_keys(state.rng, state.step)
    t, weights = sampler.sample(state.sampler_state, keys.timesteps, x_start.shape[0])
    noise = jax.random.normal(keys.noise, x_start.shape, x_start.dtype)

    labels = batch["label"]
    if exp.model.null_class:  # classifier-free guidance: y → ∅ (label num_classes) with P = label_dropout
      labels = experiment_lib.drop_labels(experiment_lib.substream_key(keys.dropout, "label_dropout"), labels,
                                          config.model.label_dropout, exp.model.num_classes)

    def loss_fn(params):
      model_fn = exp.model_fn(params, labels=labels, train=True, dropout_key=keys.dropout)
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


def compile_train_step(exp: experiment_lib.Experiment, state: TrainState):
  """jit over the mesh: state replicated and donated, batches [k, B, ...] sharded on B."""
  multi = make_multi_step(make_train_step(exp))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(exp.mesh), state)
  return jax.jit(multi, in_shardings=(state_sharding, sharding.batch_sharding(exp.mesh, leading_axes=1)),
                 out_shardings=(state_sharding, sharding.replicated(exp.mesh)), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint if there is one), then samples and evaluates.

  Writes into `workdir`: checkpoints/, metrics.jsonl, tensorboard/, samples/step_N.png (EMA grids),
  config.json and summary.json. Returns the summary dict.
  """
  workdir = experiment_lib.resolve_workdir(workdir)
  exp = experiment_lib.Experiment(config)
  sharding.check_batch_size(config.train.batch_size, exp.mesh)
  main = jax.process_index() == 0
  if main:
    fileio.makedirs(workdir)
    fileio.write_text(fileio.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  state = create_train_state(exp)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  train_iter = data_pipeline.create_train_iterator(config.data, batch_size=config.train.batch_size,
                                                   seed=config.seed)
  data_shape = data_pipeline.get_image_shape(config.data)
  if tuple(data_shape) != tuple(exp.image_shape):
    raise ValueError(f"config.data.name={config.data.name!r} yields images of shape {tuple(data_shape)}, but "
                     f"the model was built for {tuple(exp.image_shape)} (data.sources.KNOWN_IMAGE_SHAPES); "
                     "set config.data.image_size or correct the table.")
  manager = experiment_lib.checkpoint_manager(config, workdir)
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
  step_fn = compile_train_step(exp, state)
  sample_fn = sampling.make_sample_fn(exp)
  grid_labels = sampling.sample_labels(config, exp.model, config.train.num_grid_samples)
  sample_key = experiment_lib.stream_key(config.seed, "sample")
  eval_key = experiment_lib.stream_key(config.seed, "eval")
  eval_bpd_fn = likelihood.make_bpd_fn(exp, full_bound=False) if config.train.eval_every else None
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
    images = sampling.generate_samples(sample_fn, state.ema_params if config.sample.use_ema else state.params,
                                       key=sample_key, num_samples=config.train.num_grid_samples,
                                       batch_size=config.sample.batch_size, mesh=exp.mesh, labels=grid_labels,
                                       desc="sampling")
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
          res = likelihood.evaluate_bpd(config, eval_bpd_fn, state.ema_params, exp.mesh, key=eval_key,
                                        num_examples=config.eval.num_examples)
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
    res = likelihood.evaluate_bpd(config, likelihood.make_bpd_fn(exp, full_bound=config.eval.full_bound), params,
                                  exp.mesh, key=eval_key, num_examples=config.eval.num_examples,
                       desc="bits/dim")
    summary.update({f"test_{k_}": v for k_, v in res.items()})
    summary["test_bpd_method"] = likelihood.bpd_method(config)
    summary["test_bpd_params"] = "ema" if config.eval.use_ema else "raw"
    writer.scalars(step, {"test_bpd": res["bpd"]})
  writer.close()
  if main:
    fileio.write_text(fileio.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
