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
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from ddpm_jax import checkpointing
from ddpm_jax import errors
from ddpm_jax import experiment as experiment_lib
from ddpm_jax import fileio
from ddpm_jax import likelihood
from ddpm_jax import sampling
from ddpm_jax import sharding
from ddpm_jax import visualize
from ddpm_jax import workdir as workdir_lib
from ddpm_jax.data import pipeline as data_pipeline
from ddpm_jax.metrics_writer import log
from ddpm_jax.metrics_writer import MetricWriter


class TrainingDivergedError(errors.DdpmJaxError, FloatingPointError):
  """The loss or gradient norm became non-finite; the state after that step is not saved."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]: the run's raw PRNG key (raw, so it checkpoints as a plain array)
  sampler_state: Any  # the timestep sampler's state (empty for uniform)


def _init_fn(exp: experiment_lib.Experiment):
  tx, sampler = exp.tx, exp.timestep_sampler

  def init():
    init_key, run_key = experiment_lib.init_and_run_keys(exp.config.seed)
    params = exp.initial_params(init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params), rng=run_key, sampler_state=sampler.init())
  return init


def create_train_state(exp: experiment_lib.Experiment) -> TrainState:
  """Initialises parameters (replicated over the mesh) from `config.seed`'s "train" stream."""
  return jax.jit(_init_fn(exp), out_shardings=sharding.replicated(exp.mesh))()


def abstract_train_state(exp: experiment_lib.Experiment) -> TrainState:
  """The train state's shapes, dtypes and (replicated) shardings, with nothing computed: the restore
  template of a resumed run, so that resuming compiles no initialisation."""
  rep = sharding.replicated(exp.mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                      jax.eval_shape(_init_fn(exp)))


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


def _acquire_lock(workdir: str) -> workdir_lib.WorkdirLock:
  """Process 0 takes the workdir's lock; with several processes all learn together whether it did."""
  lock = workdir_lib.WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except errors.WorkdirError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = errors.WorkdirLockedError(f"--workdir {workdir}: process 0 could not take the workdir's lock "
                                        "(its error says why).")
  if error is not None:
    raise error
  if lock.taken_over:
    log(f"Took over the lock of a run that is gone ({workdir_lib.describe_holder(lock.taken_over)}).")
  return lock


def _check_experiment(config, metadata: dict, step: int, manager, *, allow_config_change: bool) -> None:
  """Refuses to resume checkpoints of another experiment (other model / diffusion / data-shape fields)."""
  saved = metadata.get("fingerprint") or workdir_lib.fingerprint(metadata.get("config") or {})
  differences = workdir_lib.fingerprint_diff(saved, workdir_lib.fingerprint(config))
  if not differences:
    return
  if allow_config_change:
    log(f"--allow_config_change: resuming step {step} of {manager.directory} with other fields: "
        + "; ".join(differences) + ".")
    return
  raise errors.ExperimentMismatchError(
      f"the checkpoints in {manager.directory} (step {step}) belong to another experiment; fields that "
      f"differ (checkpoint → this command): {'; '.join(differences)}. Nothing was changed: use the "
      "original config, another --workdir, or --allow_config_change to resume (fine-tune) from it anyway.")


def _first_line(error: BaseException) -> str:
  return str(error).strip().splitlines()[0]


def _read_summary(workdir: str) -> dict | None:
  path = fileio.join(workdir, "summary.json")
  try:
    summary = json.loads(fileio.read_text(path)) if fileio.exists(path) else None
  except (OSError, ValueError):
    return None
  return summary if isinstance(summary, dict) else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                       discard_later: bool = False, allow_config_change: bool = False) -> dict[str, Any]:
  """Trains (resuming from the workdir's newest checkpoint that verifies), then samples and evaluates.

  Writes into `workdir`: checkpoints/, metrics.jsonl, tensorboard/, samples/step_N.png (EMA grids),
  config.json and summary.json. Returns the summary dict.

  Before anything is written, everything that can refuse the run is checked: the config (every field),
  the batch sizes against the devices, the workdir (a writable folder, not locked by another run), the
  checkpoints' experiment fingerprint against the config (`allow_config_change` to fine-tune anyway),
  and `train.num_steps` against the checkpoint's step. A refused run changes no file in the workdir.

  Resuming: from `step` if given (later checkpoints are moved to `checkpoints_set_aside/` only with
  `discard_later`), else from the newest checkpoint that verifies; checkpoints after it that fail
  verification are moved there too, with the reason logged. metrics.jsonl keeps each step once.
  """
  workdir = workdir_lib.resolve(workdir)
  exp = experiment_lib.Experiment(config)  # validates every field
  exp.check_batch_sizes("train.batch_size", "eval.batch_size")  # eval's too: it runs at the end
  main = jax.process_index() == 0
  created = workdir_lib.check_usable(workdir, create=True) if main else False
  finished = False
  try:
    lock = _acquire_lock(workdir)
    try:
      # The dataset before any checkpoint folder: a missing dataset or split refuses the run here.
      train_iter = data_pipeline.create_train_iterator(config.data, batch_size=config.train.batch_size,
                                                       seed=config.seed)
      data_shape = data_pipeline.get_image_shape(config.data)
      if tuple(data_shape) != tuple(exp.image_shape):
        raise errors.DataError(
            f"config.data.name={config.data.name!r} yields images of shape {tuple(data_shape)}, but the model "
            f"was built for {tuple(exp.image_shape)} (data.sources.KNOWN_IMAGE_SHAPES); set "
            "config.data.image_size or correct the table.")
      manager = experiment_lib.checkpoint_manager(config, workdir)
      try:
        summary = _train(exp, workdir, manager, train_iter, main=main, step=step, discard_later=discard_later,
                         allow_config_change=allow_config_change)
        finished = True
        return summary
      finally:
        manager.close()
    finally:
      lock.release()
  finally:
    if created and not finished:  # a refused first run leaves no empty workdir behind
      workdir_lib.remove_if_empty(workdir)


def _train(exp, workdir, manager, train_iter, *, main, step, discard_later, allow_config_change):
  config = exp.config
  num_steps = config.train.num_steps
  saved_steps = manager.all_steps()
  if step is not None:
    if step not in saved_steps:
      raise checkpointing.CheckpointStepError(f"--step {step}: no such checkpoint in {manager.directory}; "
                                              f"available steps: {saved_steps or 'none'}.")
    later = [s for s in saved_steps if s > step]
    if later and not discard_later:
      raise errors.WorkdirError(
          f"--step {step}: {manager.directory} holds later checkpoints {later}; add --discard_later to move "
          f"them to {manager.directory}{checkpointing.SET_ASIDE_SUFFIX}/ and train on from step {step} "
          "(nothing is deleted).")
    candidates = [step]
  else:
    candidates = sorted(saved_steps, reverse=True)

  # The cheap checks first (no array read, no compilation): the newest readable checkpoint's experiment
  # and step against this config.
  unusable = []  # (step, error) of checkpoints that fail to read or verify, newest first
  metadata = {}
  for s in candidates:
    try:
      metadata[s] = manager.metadata(s)
    except checkpointing.CheckpointCorruptError as e:
      unusable.append((s, e))
      continue
    _check_experiment(config, metadata[s], s, manager, allow_config_change=allow_config_change)
    if s > num_steps:
      raise errors.WorkdirError(
          f"config.train.num_steps={num_steps} is below the step of the checkpoint to resume ({s} in "
          f"{manager.directory}): nothing to train, nothing was changed. Raise train.num_steps to train on, "
          f"or use --mode sample/eval on it.")
    break

  # Restore: the newest candidate that verifies (CRC-32 of every array, all floats finite).
  state, start_step = None, 0
  for s in candidates:
    if any(s == bad for bad, _ in unusable):
      continue
    try:
      if s not in metadata:
        metadata[s] = manager.metadata(s)
        _check_experiment(config, metadata[s], s, manager, allow_config_change=allow_config_change)
      state = manager.restore(abstract_train_state(exp), data_iterator=train_iter, step=s)
    except checkpointing.CheckpointCorruptError as e:
      unusable.append((s, e))
      continue
    start_step = int(state.step)
    break
  if candidates and state is None:
    reasons = "; ".join(f"step {s}: {_first_line(e)}" for s, e in unusable)
    raise checkpointing.CheckpointCorruptError(
        f"no checkpoint in {manager.directory} can be resumed, nothing was changed ({reasons}). Move the "
        "checkpoints folder away to train afresh.")
  if state is not None and start_step == num_steps and not unusable:
    summary = _read_summary(workdir)
    if summary and summary.get("step") == num_steps and not summary.get("preempted"):
      log(f"{workdir} is already trained to step {num_steps} (its checkpoint verifies, summary.json is "
          "complete): nothing to do. Raise train.num_steps to train on.")
      return summary
  # From here on the run goes ahead and may write.
  for s, e in unusable:
    where = manager.set_aside(s, "corrupt")
    log(f"Checkpoint step {s} is unusable ({_first_line(e)}); moved it to {where}.")
  if unusable:
    log(f"Fell back to step {start_step}, the newest checkpoint that verifies.")
  if step is not None and discard_later:
    for s in [s for s in manager.all_steps() if s > step]:
      log(f"--discard_later: moved checkpoint step {s} to {manager.set_aside(s, 'discarded')}.")
  if state is None:
    state = create_train_state(exp)
  else:
    log(f"Resumed from {manager.directory} at step {start_step} (verified).")
  if main:
    fileio.write_text(fileio.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  writer = MetricWriter(workdir, enabled=main, resume_step=start_step)
  if writer.dropped:
    log(f"metrics.jsonl: removed {writer.dropped} record(s) after step {start_step}; those steps are redone.")
  try:
    return _train_loop(exp, workdir, manager, writer, state, train_iter, start_step, main=main)
  finally:
    writer.close()


def _train_loop(exp, workdir, manager, writer, state, train_iter, start_step, *, main):
  config = exp.config
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  good_steps = {start_step} if start_step else set()  # verified at restore, or finite and CRC'd at save

  def last_good():
    """The newest checkpoint known good: restored (verified) or saved by this run and committed."""
    try:
      committed = set(manager.committed_steps())
    except checkpointing.CheckpointWriteError:
      committed = set(manager.all_steps())
    good = sorted(s for s in good_steps if s in committed)
    return good[-1] if good else None

  k = config.train.steps_per_call
  num_steps = config.train.num_steps
  if (num_steps - start_step) % k:
    raise errors.ConfigError(f"config.train.num_steps={num_steps} is invalid: (num_steps - resumed step "
                             f"{start_step}) must be a multiple of train.steps_per_call={k}.")
  step_fn = compile_train_step(exp, state)
  sample_fn = sampling.make_sample_fn(exp)
  grid_labels = sampling.sample_labels(config, exp.model, config.train.num_grid_samples)
  sample_key = experiment_lib.stream_key(config.seed, "sample")
  eval_key = experiment_lib.stream_key(config.seed, "eval")
  eval_bpd_fn = likelihood.make_bpd_fn(exp, full_bound=False) if config.train.eval_every else None
  pending = []  # device metrics since the last log, fetched only at log / checkpoint time

  def diverged(detail):
    good = last_good()
    hint = (f"the last good checkpoint is step {good} (verified, finite) in {manager.directory}; resume "
            "from it (it is restored automatically) with a lower learning rate or a tighter clip"
            if good is not None else "no checkpoint was written before it")
    return TrainingDivergedError(f"{detail}. Stopped without saving the diverged state; {hint}.")

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
      raise diverged(f"Non-finite training step {first_bad}: loss={bad['loss']}, grad_norm={bad['grad_norm']}")
    means = {k_: float(np.mean(np.concatenate([np.atleast_1d(m[k_]) for m in fetched])))
             for k_ in fetched[0] if k_ != "finite"}
    writer.scalars(step, means)
    return means

  def write_grid(step, name):
    images = sampling.generate_samples(sample_fn, state.ema_params if config.sample.use_ema else state.params,
                                       key=sample_key, num_samples=config.train.num_grid_samples,
                                       batch_size=config.sample.batch_size, mesh=exp.mesh, labels=grid_labels,
                                       desc="sampling")
    # One row per class when every class was drawn, as --mode sample lays it out (unchanged without labels).
    images, ncol = sampling.class_rows(images, grid_labels, exp.model.num_classes)
    if main:
      path = visualize.save_grid(fileio.join(workdir, "samples", name), images, ncol=ncol)
      writer.image(step, "samples", visualize.make_grid(visualize.to_uint8(images), ncol=ncol))
      return path

  manager.install_preemption_handler()
  log(f"Training {num_params:,} parameters for {num_steps} steps: {config.diffusion.mean_type} / "
      f"{config.diffusion.var_type} / {config.diffusion.loss_type}, batch {config.train.batch_size} on "
      f"{exp.mesh.devices.size} {jax.devices()[0].platform} device(s). Workdir: {workdir}")
  t_start = time.time()
  step = start_step
  last_log_time, last_log_step, last_metrics = time.time(), step, {}
  preempted = False
  metadata = {"config": json.loads(config.to_json_best_effort()), "fingerprint": workdir_lib.fingerprint(config)}
  with tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step", disable=not main,
                 dynamic_ncols=True) as bar:
    while step < num_steps:
      local = [next(train_iter) for _ in range(k)]
      batches = sharding.global_batch(jax.tree.map(lambda *xs: np.stack(xs), *local), exp.mesh, leading_axes=1)
      state, metrics = step_fn(state, batches)
      pending.append(metrics)
      step += k
      bar.update(k)
      manager.check_background_save()  # a failed checkpoint write (disk full) stops the run now
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
        try:
          manager.save(step, state, data_iterator=train_iter, force=True, metadata=metadata)
        except checkpointing.NonFiniteStateError as e:
          raise diverged(f"Non-finite state at step {step} ({_first_line(e)})") from None
        good_steps.add(step)
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

  train_time = time.time() - t_start
  summary = {"workdir": workdir, "step": step, "num_params": int(num_params), "train_seconds": train_time,
             "preempted": preempted, "final_train_metrics": last_metrics}
  if not preempted:
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
  if main:  # written whole under a temporary name, then renamed: never half a summary
    fileio.write_text(fileio.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
