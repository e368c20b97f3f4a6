"""Training end to end on the bundled digits with tiny shapes: train → checkpoint → resume → sample,
exact resume, overfitting a fixed batch, the sharded step against one device, k steps per call, divergence
and the batch/device check."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import experiment
from ddpm_jax import run_modes
from ddpm_jax import sharding
from ddpm_jax import train

from tiny import tiny_config as _tiny_config


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_train_checkpoint_resume_sample_and_exact_resume(data_root, tmp_path, straight_run):
  # Uninterrupted: 6 steps.
  config, straight, summary = straight_run
  assert summary["step"] == 6 and os.path.exists(os.path.join(straight, "samples.png"))
  assert np.isfinite(summary["test_bpd"]) and summary["test_num_examples"] == 8
  assert summary["test_bpd_params"] == "ema"

  # Interrupted: 4 steps, then the same command with num_steps=6 resumes from the step-4 checkpoint.
  split = str(tmp_path / "split")
  train.train_and_evaluate(_tiny_config(data_root, num_steps=4), split)
  assert sorted(os.listdir(os.path.join(split, "checkpoints"))) >= ["2", "4"]
  resumed = train.train_and_evaluate(_tiny_config(data_root, num_steps=6), split)
  assert resumed["step"] == 6
  a, b = _losses(straight), _losses(split)
  assert set(a) == set(range(1, 7))
  for step in (5, 6):  # the resumed run draws the same data, timesteps and noise: the same losses
    np.testing.assert_allclose(b[step], a[step], rtol=1e-6)

  # --mode sample: exactly N samples from the latest checkpoint, as uint8, plus a grid.
  result = run_modes.sample(config, straight)
  images = np.load(result["npz"])["images"]
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
  assert result["checkpoint_step"] == 6 and os.path.exists(result["grid"])


def test_overfits_a_fixed_batch(data_root):
  config = _tiny_config(data_root)
  # The bound (the paper's μ row): its terms at fixed t and noise go to near zero on a memorised batch,
  # unlike L_simple's, whose ε cannot be predicted exactly at large t even for 8 known digits.
  config.diffusion.update(loss_type="kl", mse_weight="none", var_type="fixedlarge")
  config.model.update(output_residual="none", output_scale=1.0)
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 0
  config.optim.lr_schedule = "constant"  # the mnist configs anneal to 0 at train.num_steps (20 here)
  config.optim.ema_decay = 0.0
  exp = experiment.Experiment(config)
  state = train.create_train_state(exp)
  step = jax.jit(train.make_train_step(exp))
  digits = np.load(os.path.join(os.path.dirname(train.__file__), "data", "assets", "mnist_5k.npz"))["images"]
  batch = {"image": jnp.asarray(digits[:8] / 127.5 - 1.0, jnp.float32), "label": jnp.zeros((8,), jnp.int32)}
  # The loss of the fixed batch at fixed timesteps and noise, before and after training on it.
  t = jnp.asarray([1, 5, 10, 20, 30, 40, 45, 49])
  noise = jax.random.normal(jax.random.PRNGKey(3), batch["image"].shape)
  fixed_loss = jax.jit(lambda p: jnp.mean(exp.diffusion.training_losses(
      lambda x, tt: exp.model.apply({"params": p}, x, tt), batch["image"], t, noise)["loss"]))
  before = float(fixed_loss(state.params))
  for _ in range(80):
    state, metrics = step(state, batch)
  after = float(fixed_loss(state.params))
  assert np.isfinite(after) and after < 0.05 * before, (before, after)


def test_sharded_step_equals_single_device_step(data_root):
  assert jax.device_count() == 8
  config = _tiny_config(data_root)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    exp = experiment.Experiment(config, devices=devices)
    state = train.create_train_state(exp)
    step_fn = train.compile_train_step(exp, state)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, size=(1, 8, 28, 28, 1)).astype(np.float32),
             "label": np.zeros((1, 8), np.int32)}
    state, metrics = step_fn(state, sharding.global_batch(batch, exp.mesh, leading_axes=1))
    assert state.params["conv_in"]["kernel"].sharding.is_fully_replicated
    results.append((jax.device_get(state.params), float(metrics["loss"][0])))
  (p1, l1), (p8, l8) = results
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p8, p1)


def test_k_steps_per_call_equal_k_single_steps(data_root):
  config = _tiny_config(data_root)
  exp = experiment.Experiment(config)
  rng = np.random.default_rng(1)
  batches = {"image": rng.uniform(-1, 1, size=(2, 8, 28, 28, 1)).astype(np.float32),
             "label": np.zeros((2, 8), np.int32)}
  one = train.compile_train_step(exp, train.create_train_state(exp))
  state = train.create_train_state(exp)
  losses = []
  for i in range(2):
    state, metrics = one(state, sharding.global_batch(jax.tree.map(lambda x: x[i:i + 1], batches), exp.mesh,
                                                      leading_axes=1))
    losses.append(float(metrics["loss"][0]))
  two = train.compile_train_step(exp, train.create_train_state(exp))
  state2, metrics2 = two(train.create_train_state(exp), sharding.global_batch(batches, exp.mesh, leading_axes=1))
  assert int(state2.step) == int(state.step) == 2
  np.testing.assert_allclose(np.asarray(metrics2["loss"]), losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(state2.params), jax.device_get(state.params))


def test_non_finite_loss_stops_with_step_and_last_checkpoint(data_root, tmp_path, monkeypatch):
  config = _tiny_config(data_root, num_steps=6)
  real = sharding.global_batch
  calls = []

  def poisoned(local, mesh, **kwargs):  # the third train step sees a NaN image
    calls.append(1)
    if len(calls) == 3:
      local = dict(local, image=np.full_like(local["image"], np.nan))
    return real(local, mesh, **kwargs)

  monkeypatch.setattr(sharding, "global_batch", poisoned)
  with pytest.raises(train.TrainingDivergedError, match=r"step 3: loss=nan.*last good checkpoint is step 2"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))
  assert sorted(os.listdir(tmp_path / "nan" / "checkpoints")) == ["2"]


def test_batch_must_split_over_devices_before_anything_is_written(data_root, tmp_path):
  config = _tiny_config(data_root)
  config.train.batch_size = 12
  with pytest.raises(ValueError, match=r"config.train.batch_size=12.*number of devices \(8\)"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
