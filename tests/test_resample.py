"""Timestep samplers against a plain-Python reference of Improved DDPM §3.3 and Monte Carlo checks."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import resample


class _ReferenceHistory:
  """Per-timestep FIFO of the last H losses (Improved DDPM §3.3), with Python deques."""

  def __init__(self, T, H, uniform_prob):
    self.T, self.H, self.u = T, H, uniform_prob
    self.hist = [collections.deque(maxlen=H) for _ in range(T)]

  def update(self, ts, losses):
    for t, l in zip(ts, losses):
      self.hist[int(t)].append(float(l))

  def weights(self):
    if any(len(h) < self.H for h in self.hist):
      return np.ones(self.T)
    w = np.array([math.sqrt(np.mean(np.square(list(h)))) for h in self.hist])
    return w / w.sum() * (1 - self.u) + self.u / self.T


def test_loss_second_moment_history_and_weights():
  T, H = 5, 3
  sampler = resample.LossSecondMomentResampler(T, history_per_term=H, uniform_prob=0.01)
  reference = _ReferenceHistory(T, H, 0.01)
  state = sampler.init()
  rng = np.random.default_rng(0)
  update = jax.jit(sampler.update)
  for step in range(12):
    ts = rng.integers(0, T, size=6)
    ts[:2] = ts[0]  # the same timestep twice in one batch: order within the batch matters
    losses = rng.uniform(0.1, 3.0, size=6)
    state = update(state, jnp.asarray(ts), jnp.asarray(losses, jnp.float32))
    reference.update(ts, losses)
    np.testing.assert_allclose(sampler.weights(state), reference.weights(), rtol=1e-5)
    if step == 0:
      np.testing.assert_array_equal(sampler.weights(state), np.ones(T))  # not warmed up yet
  assert bool(sampler.warmed_up(state))
  for t in range(T):  # the stored history is the last H losses, oldest first
    np.testing.assert_allclose(np.asarray(state.loss_history[t]), list(reference.hist[t]), rtol=1e-6)


def test_importance_sampling_distribution_and_unbiasedness():
  T = 4
  sampler = resample.LossSecondMomentResampler(T, history_per_term=2, uniform_prob=0.1)
  state = sampler.init()
  per_t_loss = np.array([0.5, 1.0, 2.0, 4.0])
  for _ in range(2):
    state = sampler.update(state, jnp.arange(T), jnp.asarray(per_t_loss, jnp.float32))
  p = per_t_loss / per_t_loss.sum() * 0.9 + 0.1 / T
  n = 200_000
  t, w = jax.jit(sampler.sample, static_argnums=2)(state, jax.random.PRNGKey(0), n)
  t, w = np.asarray(t), np.asarray(w)
  freq = np.bincount(t, minlength=T) / n
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / n).max())
  np.testing.assert_allclose(w, 1.0 / (T * p[t]), rtol=1e-5)
  # E[w L_t] is the uniform average of L_t over t, whatever p is.
  estimate = np.mean(w * per_t_loss[t])
  assert abs(estimate - per_t_loss.mean()) < 4 * np.std(w * per_t_loss[t]) / np.sqrt(n)


def test_uniform_sampler():
  sampler = resample.create_named_schedule_sampler("uniform", 10)
  state = sampler.init()
  t, w = sampler.sample(state, jax.random.PRNGKey(1), 50_000)
  freq = np.bincount(np.asarray(t), minlength=10) / 50_000
  np.testing.assert_allclose(freq, 0.1, atol=4 * math.sqrt(0.09 / 50_000))
  np.testing.assert_array_equal(w, 1.0)
  assert sampler.update(state, t, w) == state


def test_named_sampler_errors():
  assert isinstance(resample.create_named_schedule_sampler("loss-second-moment", 10),
                    resample.LossSecondMomentResampler)
  with pytest.raises(ValueError, match=r"'importance'.*uniform, loss-second-moment"):
    resample.create_named_schedule_sampler("importance", 10)
  with pytest.raises(ValueError, match="uniform_prob=1.5"):
    resample.LossSecondMomentResampler(10, uniform_prob=1.5)
