"""Timestep samplers for training: uniform, and Improved DDPM's loss-second-moment importance sampler.

Both are pure: a sampler object holds only constants; its state is a pytree that the train step carries and
returns, so it can live inside a jitted, sharded step and be checkpointed with the rest of the train state.

Importance sampling (Improved DDPM §3.3, eq. 18): L_vb = E_{t ~ p_t}[L_t / p_t]. Per example,
    t ~ p_t,   weight_t = 1 / (T p_t),   loss = weight_t · L_t,
so that E[loss] = (1/T) Σ_t L_t, the uniform average, whatever p_t is. The loss-second-moment sampler uses
p_t ∝ √E[L_t²] over the last `history_per_term` losses seen at each t, mixed with a uniform floor
(`uniform_prob`), and samples uniformly until every t has a full history (improved-diffusion's
`LossSecondMomentResampler`).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

SAMPLERS = ("uniform", "loss-second-moment")


class LossHistoryState(NamedTuple):
  """The last `history_per_term` losses seen at each timestep and how many have been seen (≤ the cap)."""
  loss_history: jax.Array  # [T, history_per_term] float32
  loss_counts: jax.Array  # [T] int32


class UniformSampler:
  """t ~ Uniform{0, ..., T-1}, weights all 1. Its state is an empty tuple."""

  def __init__(self, num_timesteps: int):
    if num_timesteps < 1:
      raise ValueError(f"UniformSampler: num_timesteps={num_timesteps!r} must be positive.")
    self.num_timesteps = int(num_timesteps)

  def init(self):
    return ()

  def weights(self, state) -> jax.Array:
    del state
    return jnp.ones((self.num_timesteps,), jnp.float32)

  def sample(self, state, key, batch_size: int):
    """→ (t [batch_size] int32, weights [batch_size] float32 = 1)."""
    del state
    t = jax.random.randint(key, (batch_size,), 0, self.num_timesteps, dtype=jnp.int32)
    return t, jnp.ones((batch_size,), jnp.float32)

  def update(self, state, t, losses):
    del t, losses
    return state


class LossSecondMomentResampler:
  """Importance sampling with p_t ∝ √(mean of the last `history_per_term` L_t²) (Improved DDPM §3.3)."""

  def __init__(self, num_timesteps: int, *, history_per_term: int = 10, uniform_prob: float = 0.001):
    if num_timesteps < 1:
      raise ValueError(f"LossSecondMomentResampler: num_timesteps={num_timesteps!r} must be positive.")
    if history_per_term < 1:
      raise ValueError(f"LossSecondMomentResampler: history_per_term={history_per_term!r} must be positive.")
    if not 0.0 <= uniform_prob <= 1.0:
      raise ValueError(f"LossSecondMomentResampler: uniform_prob={uniform_prob!r} must lie in [0, 1].")
    self.num_timesteps = int(num_timesteps)
    self.history_per_term = int(history_per_term)
    self.uniform_prob = float(uniform_prob)

  def init(self) -> LossHistoryState:
    return LossHistoryState(
        loss_history=jnp.zeros((self.num_timesteps, self.history_per_term), jnp.float32),
        loss_counts=jnp.zeros((self.num_timesteps,), jnp.int32))

  def warmed_up(self, state: LossHistoryState) -> jax.Array:
    return jnp.all(state.loss_counts == self.history_per_term)

  def weights(self, state: LossHistoryState) -> jax.Array:
    """Unnormalised sampling weights [T]: ones until warmed up, then √E[L²] mixed with the uniform floor."""
    rms = jnp.sqrt(jnp.mean(jnp.square(state.loss_history), axis=-1))
    w = rms / jnp.sum(rms)
    w = w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
    return jnp.where(self.warmed_up(state), w, jnp.ones_like(w))

  def sample(self, state: LossHistoryState, key, batch_size: int):
    """→ (t [batch_size] int32 drawn from p = w / Σw, importance weights 1 / (T p_t))."""
    w = self.weights(state)
    p = w / jnp.sum(w)
    t = jax.random.choice(key, self.num_timesteps, (batch_size,), p=p).astype(jnp.int32)
    return t, (1.0 / (self.num_timesteps * p[t])).astype(jnp.float32)

  def update(self, state: LossHistoryState, t, losses) -> LossHistoryState:
    """Records the (global) batch's losses in order: a full history drops its oldest entry."""
    t = jnp.asarray(t, jnp.int32)
    losses = jnp.asarray(losses, jnp.float32)
    chex.assert_equal_shape([t, losses])
    chex.assert_rank(t, 1)
    cap = self.history_per_term

    def record(carry, tl):
      history, counts = carry
      ti, li = tl
      row, count = history[ti], counts[ti]
      shifted = jnp.concatenate([row[1:], li[None]])
      appended = row.at[jnp.minimum(count, cap - 1)].set(li)
      new_row = jnp.where(count == cap, shifted, appended)
      return (history.at[ti].set(new_row), counts.at[ti].set(jnp.minimum(count + 1, cap))), None

    (history, counts), _ = jax.lax.scan(record, (state.loss_history, state.loss_counts), (t, losses))
    return LossHistoryState(history, counts)


def create_named_schedule_sampler(name: str, num_timesteps: int):
  """`uniform` or `loss-second-moment` (improved-diffusion's names)."""
  if name == "uniform":
    return UniformSampler(num_timesteps)
  if name == "loss-second-moment":
    return LossSecondMomentResampler(num_timesteps)
  raise ValueError(f"timestep sampler {name!r} is not known; choose one of {', '.join(SAMPLERS)}.")
