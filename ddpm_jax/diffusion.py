r"""The diffusion math of DDPM (Ho, Jain, Abbeel 2020) and Improved DDPM (Nichol & Dhariwal 2021), in JAX.

This module mirrors `diffusion_tf/diffusion_utils_2.py` of the original TPU code (names, semantics, the
μ-parameterization `xprev` first) and adds what Improved DDPM brought: the cosine schedule, learned
(interpolated) variances, the hybrid loss, respaced chains and DDIM. It knows nothing about networks,
configs, files or devices: every function is pure, works per example over the leading batch axis (so a
sharded batch needs nothing special) and can be `jax.jit`-ed and `jax.vmap`-ed.

Notation (DDPM §2). Forward process q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I), with α_t = 1 - β_t and
ᾱ_t = ∏_{s≤t} α_s, so that q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I)   (DDPM eq. 4).
The posterior is q(x_{t-1} | x_t, x_0) = N(μ̃_t(x_t, x_0), β̃_t I) with (DDPM eqs. 6-7)

    μ̃_t = [β_t √ᾱ_{t-1} / (1-ᾱ_t)] x_0 + [(1-ᾱ_{t-1}) √α_t / (1-ᾱ_t)] x_t = coef1_t x_0 + coef2_t x_t,
    β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t).

Timesteps are 0-based as in the original code: `t = 0` is the first diffusion step (x_1 of the paper) and
`t = T-1` the last. Every table is computed once in float64 NumPy and gathered at `t` as float32.

The three parameterizations of the reverse mean μ_θ(x_t, t) (DDPM §3.2, Table 2):
  * `xprev` (alias `mu`): the network outputs μ_θ directly: the mean of p(x_{t-1} | x_t).
    x̂_0 = (μ_θ - coef2_t x_t) / coef1_t.
  * `xstart` (alias `x0`): the network outputs x̂_0; μ_θ = μ̃_t(x_t, x̂_0).
  * `eps`: the network outputs ε̂; x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t and μ_θ = μ̃_t(x_t, x̂_0).
DDPM Table 2: μ-prediction trains well only on the true variational bound (`loss_type='kl'`); unweighted
MSE on μ is unstable. ε-prediction is what L_simple (`mse`) is for.

Respaced chains and μ-models. A respaced diffusion (Improved DDPM §4) keeps the timesteps τ_0 < τ_1 < ... of
the original chain with β'_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}}. The network is always called with the ORIGINAL
timestep τ_i. An `xprev` network predicts x_{τ_i - 1} of the ORIGINAL chain, not the respaced step's
x_{τ_{i-1}}: improved-diffusion treats the output as the respaced mean, which is wrong whenever τ_{i-1} <
τ_i - 1. Here an `xprev` output is first turned into x̂_0 with the original chain's coefficients at τ_i,
x̂_0 = (μ_θ - coef2_{τ_i} x_t) / coef1_{τ_i}, (clipped when asked), and the respaced posterior mean
μ̃'_i(x_t, x̂_0) is formed from it. Where a kept step is also a step of the original chain (τ_{i-1} = τ_i - 1,
so β'_i = β_{τ_i}), the raw output is the mean exactly as in the unspaced chain.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

BETA_SCHEDULES = ("linear", "quad", "warmup10", "warmup50", "const", "jsd", "cosine")
MEAN_TYPES = {"xprev": "xprev", "mu": "xprev", "xstart": "xstart", "x0": "xstart", "eps": "eps"}
VAR_TYPES = ("fixedsmall", "fixedlarge", "learned", "learned_range")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")
# Weights λ_t of the μ-space squared error λ_t·‖μ̃_t − μ_θ‖² (`mse_weight`; `GaussianDiffusion.mse_weights`).
MSE_WEIGHTS = ("none", "eps", "x0", "kl", "min_snr")

_LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------------------
# Schedules and timestep spacing.
# ----------------------------------------------------------------------------------------------------------


def _warmup_beta(beta_start, beta_end, num_timesteps, warmup_frac):
  betas = beta_end * np.ones(num_timesteps, dtype=np.float64)
  warmup_time = int(num_timesteps * warmup_frac)
  betas[:warmup_time] = np.linspace(beta_start, beta_end, warmup_time, dtype=np.float64)
  return betas


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float], *,
                        max_beta: float = 0.999) -> np.ndarray:
  """β_i = min(1 - ᾱ(t_{i+1}) / ᾱ(t_i), max_beta) with t_i = i / T (Improved DDPM eq. 17 discretised)."""
  betas = [min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
           for i in range(num_timesteps)]
  return np.asarray(betas, dtype=np.float64)


def get_beta_schedule(name: str, *, num_timesteps: int, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> np.ndarray:
  """The β_t schedule, float64, shape [num_timesteps].

  * `linear`: β linear from `beta_start` to `beta_end` (DDPM: 1e-4 → 0.02, T = 1000).
  * `quad`: √β linear from √beta_start to √beta_end.
  * `warmup10`, `warmup50`: linear over the first 10% / 50% of steps, then constant `beta_end`.
  * `const`: β_t = beta_end.
  * `jsd`: β_t = 1/T, 1/(T-1), ..., 1 (the original's "1/T, 1/(T-1), ..., 1").
  * `cosine`: Improved DDPM eq. 17, ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) with s = 0.008, β capped at
    0.999 (beta_start / beta_end are ignored, as in improved-diffusion).
  """
  if not isinstance(num_timesteps, (int, np.integer)) or isinstance(num_timesteps, bool) or num_timesteps < 1:
    raise ValueError(f"get_beta_schedule: num_timesteps={num_timesteps!r} must be a positive integer.")
  num_timesteps = int(num_timesteps)
  if name == "quad":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64)**2
  elif name == "linear":
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  elif name == "warmup10":
    betas = _warmup_beta(beta_start, beta_end, num_timesteps, 0.1)
  elif name == "warmup50":
    betas = _warmup_beta(beta_start, beta_end, num_timesteps, 0.5)
  elif name == "const":
    betas = beta_end * np.ones(num_timesteps, dtype=np.float64)
  elif name == "jsd":
    betas = 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)
  elif name == "cosine":
    betas = betas_for_alpha_bar(num_timesteps, lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2)**2)
  else:
    raise ValueError(f"get_beta_schedule: name={name!r} is not a known schedule; "
                     f"choose one of {', '.join(BETA_SCHEDULES)}.")
  assert betas.shape == (num_timesteps,)
  return betas


def space_timesteps(num_timesteps: int, section_counts: str | Iterable[int]) -> set[int]:
  """The set of original timesteps a respaced chain keeps (improved-diffusion's `space_timesteps`).

  `section_counts` is a list of step counts (or a comma-separated string of them): the T steps are cut
  into len(section_counts) nearly equal sections (the first T mod n sections one step longer) and section i
  keeps section_counts[i] steps at a fractional stride (size-1)/(count-1), rounded with Python's round()
  (half to even). `"ddimN"` keeps range(0, T, k) for the smallest integer stride k giving exactly N steps,
  as in the DDIM paper.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired_count = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired_count:
          return set(range(0, num_timesteps, stride))
      raise ValueError(f"space_timesteps: cannot take exactly {desired_count} of {num_timesteps} steps "
                       f"with an integer stride (section_counts={section_counts!r}).")
    section_counts = [int(x) for x in section_counts.split(",")]
  section_counts = list(section_counts)
  if not section_counts:
    raise ValueError("space_timesteps: section_counts is empty; give at least one count, e.g. [50].")
  size_per = num_timesteps // len(section_counts)
  extra = num_timesteps % len(section_counts)
  start_idx = 0
  all_steps = []
  for i, section_count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < section_count:
      raise ValueError(f"space_timesteps: cannot divide a section of {size} steps into {section_count} "
                       f"(section_counts={section_counts!r}, num_timesteps={num_timesteps}).")
    frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
    cur_idx = 0.0
    for _ in range(section_count):
      all_steps.append(start_idx + round(cur_idx))
      cur_idx += frac_stride
    start_idx += size
  return set(all_steps)


SKIP_TYPES = ("even", "uniform", "quadratic")


def sampling_timesteps(num_timesteps: int, steps: int, skip_type: str = "even") -> list[int]:
  """The original timesteps a `steps`-step sampler visits, in increasing order.

  skip_type:
    "even":      `space_timesteps(T, [steps])`: exactly `steps` timesteps spread evenly over [0, T-1],
                 both ends included (Improved DDPM's respacing).
    "uniform":   τ_i = i · ⌊T / S⌋ for τ_i < T, as the DDIM paper's code (`range(0, T, T // S)`): the chain
                 starts at the largest multiple of the stride below T, and gives more than S steps when
                 S does not divide T (T = 1000, S = 30: stride 33, 31 steps).
    "quadratic": τ_i = ⌊(i · √(0.8 T) / (S - 1))²⌋, i = 0..S-1, the DDIM paper's "quad" sequence (denser near
                 t = 0, stops at 0.8 T); repeated values near 0 are visited once, so for large S there are
                 fewer than S distinct steps.
  """
  if skip_type not in SKIP_TYPES:
    raise ValueError(f"skip_type={skip_type!r} is not supported; choose one of {SKIP_TYPES}.")
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"steps={steps!r} must lie in [1, num_timesteps={num_timesteps}].")
  if skip_type == "even":
    return sorted(space_timesteps(num_timesteps, [steps]))
  if skip_type == "uniform":
    return list(range(0, num_timesteps, num_timesteps // steps))
  if steps == 1:
    return [0]
  grid = np.linspace(0.0, np.sqrt(num_timesteps * 0.8), steps) ** 2
  return sorted({int(v) for v in grid})


# ----------------------------------------------------------------------------------------------------------
# Gaussian helpers.
# ----------------------------------------------------------------------------------------------------------


def mean_flat(x: Array) -> Array:
  """Mean over every axis but the first (per-example mean)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats.

  KL = ½ (-1 + logvar2 - logvar1 + e^{logvar1 - logvar2} + (mean1 - mean2)² e^{-logvar2}).
  Scalars broadcast against arrays.
  """
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF: ½(1 + tanh(√(2/π)(x + 0.044715 x³)))."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """log p(x) of data in [-1, 1] quantised to 256 bins under N(means, e^{2 log_scales}) (DDPM eq. 13).

  Each bin is [x - 1/255, x + 1/255], except that the edge bins extend to -∞ (x = -1) and +∞ (x = 1).
  Uses the tanh CDF approximation and clamps probabilities at 1e-12, as the original does.
  """
  chex.assert_equal_shape([x, means, log_scales])
  centered_x = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  cdf_delta = cdf_plus - cdf_min
  log_probs = jnp.where(
      x < -0.999, log_cdf_plus,
      jnp.where(x > 0.999, log_one_minus_cdf_min, jnp.log(jnp.maximum(cdf_delta, 1e-12))))
  chex.assert_equal_shape([log_probs, x])
  return log_probs


# ----------------------------------------------------------------------------------------------------------
# The diffusion.
# ----------------------------------------------------------------------------------------------------------


def _canonical(kind: str, value: str, choices) -> str:
  if isinstance(choices, Mapping):
    if value in choices:
      return choices[value]
  elif value in choices:
    return value
  raise ValueError(f"GaussianDiffusion: {kind}={value!r} is not accepted; choose one of "
                   f"{', '.join(choices)}.")


class GaussianDiffusion:
  """Training, sampling and likelihood utilities of a Gaussian diffusion (`GaussianDiffusion2` of DDPM).

  Args:
    betas: the β_t schedule, shape [T], 0 < β ≤ 1 (e.g. from `get_beta_schedule`).
    mean_type: what the network predicts: `xprev` (alias `mu`, the mean of p(x_{t-1}|x_t)), `xstart`
      (alias `x0`) or `eps`.
    var_type: the variance of p(x_{t-1}|x_t): `fixedsmall` (β̃_t), `fixedlarge` (β_t), `learned` (the
      network's second output block is log σ²) or `learned_range` (Improved DDPM eq. 15).
    loss_type: `kl` (the variational bound term, bits), `rescaled_kl` (× T), `mse` (unweighted MSE on the
      network's mean target; with a learned variance, the hybrid L_simple + L_vb of Improved DDPM with the
      bound computed on a stop-gradient mean) or `rescaled_mse` (the same with L_vb × T/1000).

    mse_weight: the weight over t of the mean's squared error when the network predicts μ (`xprev`) and
      `loss_type` is `mse`/`rescaled_mse`; see `mse_weights`. Other mean types accept only `none`.
    min_snr_gamma: γ of the `min_snr` weight.

  Attributes are float64 NumPy tables of length T named as in the original code.
  """

  def __init__(self, betas, *, mean_type: str, var_type: str, loss_type: str, mse_weight: str = "none",
               min_snr_gamma: float = 5.0):
    self.mean_type = _canonical("mean_type", mean_type, MEAN_TYPES)
    self.var_type = _canonical("var_type", var_type, VAR_TYPES)
    self.loss_type = _canonical("loss_type", loss_type, LOSS_TYPES)
    self.mse_weight = _canonical("mse_weight", mse_weight, MSE_WEIGHTS)
    if self.mse_weight != "none" and self.mean_type != "xprev":
      raise ValueError(f"GaussianDiffusion: mse_weight={mse_weight!r} weighs a μ-space error and needs "
                       f"mean_type='xprev' (got {self.mean_type!r}); use mse_weight='none'.")
    if self.mse_weight == "kl" and self.var_type not in ("fixedsmall", "fixedlarge"):
      raise ValueError(f"GaussianDiffusion: mse_weight='kl' is 1/(2σ_t²) of a fixed variance; var_type="
                       f"{self.var_type!r} is learned. Use fixedsmall or fixedlarge, or another weight.")
    if not (isinstance(min_snr_gamma, (int, float)) and math.isfinite(min_snr_gamma) and min_snr_gamma > 0):
      raise ValueError(f"GaussianDiffusion: min_snr_gamma={min_snr_gamma!r} is invalid: expected a positive "
                       "number (Hang et al. 2023 use 5).")
    self.min_snr_gamma = float(min_snr_gamma)

    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 1:
      raise ValueError(f"GaussianDiffusion: betas must be a non-empty 1-D array, got shape {betas.shape}.")
    if not (np.all(np.isfinite(betas)) and np.all(betas > 0) and np.all(betas <= 1)):
      raise ValueError(f"GaussianDiffusion: betas must lie in (0, 1]; got min {betas.min()!r}, "
                       f"max {betas.max()!r}.")
    self.betas = betas
    self.num_timesteps = int(betas.shape[0])

    alphas = 1.0 - betas
    self.alphas_cumprod = np.cumprod(alphas, axis=0)
    self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
    self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

    # q(x_t | x_0) and its inversions.
    self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
    self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
    with np.errstate(divide="ignore"):  # 'jsd' ends at β = 1, where ᾱ = 0.
      self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
      self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
      self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

    # q(x_{t-1} | x_t, x_0).
    self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    # β̃_0 = 0: the log is clipped by repeating β̃_1 at t = 0 (a single-step chain has no β̃_1; use β̃_0).
    first = self.posterior_variance[1] if self.num_timesteps > 1 else self.posterior_variance[0]
    with np.errstate(divide="ignore"):
      self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
    self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # Fixed variances of p(x_{t-1}|x_t). fixedlarge is β_t, but its log-variance at t = 0 is log β̃_1
    # (the original's choice, for a better decoder likelihood); fixedsmall is the clipped β̃_t.
    with np.errstate(divide="ignore"):
      self._fixedlarge_log_variance = np.log(np.append(first, betas[1:]))

    # Where the model's timesteps come from (identity here; `respace` changes it) and the posterior-mean
    # coefficients of the chain the model was trained on, used to read an `xprev` output.
    self.timestep_map = np.arange(self.num_timesteps, dtype=np.int64)
    self.original_num_timesteps = self.num_timesteps
    self._model_coef1 = self.posterior_mean_coef1
    self._model_coef2 = self.posterior_mean_coef2
    self._xprev_is_native = np.ones(self.num_timesteps, dtype=bool)
    self._f32_cache: dict[str, np.ndarray] = {}
    self.mse_weights = self._mse_weight_table(self.mse_weight)

  def _mse_weight_table(self, kind: str) -> np.ndarray:
    r"""λ_t, the float64 weight [T] of the μ-space error ‖μ̃_t − μ_θ‖² (mean over dimensions) at each t.

    With μ̃_t = (x_t − β_t/√(1−ᾱ_t)·ε)/√α_t = coef1_t·x_0 + coef2_t·x_t (DDPM eqs. 7, 11), a prediction μ_θ
    corresponds at fixed x_t to ε̂ and x̂_0 with μ_θ − μ̃_t = −β_t/(√α_t √(1−ᾱ_t))·(ε̂ − ε) = coef1_t·(x̂_0 − x_0).
      * `none`:    λ_t = 1 (DDPM Table 2's "‖μ̃ − μ_θ‖²", unstable on CIFAR-10).
      * `eps`:     λ_t = α_t (1−ᾱ_t) / β_t², so λ_t‖μ̃_t − μ_θ‖² = ‖ε − ε̂‖²: L_simple (DDPM eq. 14) in μ-space.
      * `x0`:      λ_t = 1 / coef1_t², so λ_t‖μ̃_t − μ_θ‖² = ‖x_0 − x̂_0‖².
      * `kl`:      λ_t = 1 / (2 σ_t² ln 2) with σ_t² the fixed variance of p_θ at t (β_t or β̃_t, with the
                   t = 0 substitution of the log-variance): for t > 0 the bound's term L_{t−1} in bits is
                   λ_t‖μ̃_t − μ_θ‖² plus a constant (DDPM eq. 8); at t = 0 it stands in for the decoder.
      * `min_snr`: λ_t = α_t (1−ᾱ_t)/β_t² · min(SNR_t, γ)/SNR_t with SNR_t = ᾱ_t/(1−ᾱ_t): the min-SNR-γ
                   weighting of Hang et al. 2023 (ε-loss weight min(SNR, γ)/SNR) written for μ.
    """
    alphas = 1.0 - self.betas
    eps_w = alphas * (1.0 - self.alphas_cumprod) / np.square(self.betas)
    if kind == "none":
      return np.ones_like(self.betas)
    if kind == "eps":
      return eps_w
    if kind == "x0":
      return 1.0 / np.square(self.posterior_mean_coef1)
    if kind == "kl":
      log_var = (self._fixedlarge_log_variance if self.var_type == "fixedlarge"
                 else self.posterior_log_variance_clipped)
      return 1.0 / (2.0 * np.exp(log_var) * _LOG2)
    if kind == "min_snr":
      with np.errstate(divide="ignore"):
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
      return eps_w * np.minimum(snr, self.min_snr_gamma) / snr
    raise ValueError(f"mse_weight={kind!r} is not accepted; choose one of {', '.join(MSE_WEIGHTS)}.")

  def __repr__(self):
    extra = f", mse_weight={self.mse_weight!r}" if self.mse_weight != "none" else ""
    return (f"{type(self).__name__}(T={self.num_timesteps}, mean_type={self.mean_type!r}, "
            f"var_type={self.var_type!r}, loss_type={self.loss_type!r}{extra})")

  # --- gathering ------------------------------------------------------------------------------------------

  def _extract(self, name: str, t: Array, x: Array) -> Array:
    """Gathers the float32 table `name` at `t` and reshapes it to broadcast against `x`.

    `t` has the leading shape of `x` ([B] for a batch; [] under vmap). `name` is an attribute holding a
    float64 table, or a private one computed once.
    """
    if name not in self._f32_cache:
      self._f32_cache[name] = np.asarray(getattr(self, name), dtype=np.float32)
    out = jnp.asarray(self._f32_cache[name])[t]
    return out.reshape(t.shape + (1,) * (x.ndim - t.ndim))

  @staticmethod
  def _check_t(t, x) -> Array:
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
      raise TypeError(f"timesteps t must be integers, got dtype {t.dtype}.")
    if t.ndim > x.ndim or tuple(x.shape[:t.ndim]) != tuple(t.shape):
      raise ValueError(f"timesteps t of shape {t.shape} do not match the leading axes of x {x.shape}.")
    return t

  def model_timesteps(self, t) -> Array:
    """The ORIGINAL-chain timesteps the network is called with at (possibly respaced) timesteps t."""
    return jnp.asarray(self.timestep_map.astype(np.int32))[t]

  # --- the forward process --------------------------------------------------------------------------------

  def q_mean_variance(self, x_start, t):
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) (DDPM eq. 4) → (mean, variance, log_variance)."""
    t = self._check_t(t, x_start)
    mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
    variance = jnp.broadcast_to(self._extract("_one_minus_alphas_cumprod", t, x_start), x_start.shape)
    log_variance = jnp.broadcast_to(self._extract("log_one_minus_alphas_cumprod", t, x_start), x_start.shape)
    return mean, variance, log_variance

  @property
  def _one_minus_alphas_cumprod(self):
    return 1.0 - self.alphas_cumprod

  def q_sample(self, x_start, t, noise):
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (DDPM eq. 4, reparameterised); t = 0 is one step of noise."""
    t = self._check_t(t, x_start)
    chex.assert_equal_shape([x_start, noise])
    return (self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) (DDPM eqs. 6-7) → (mean, variance, log_variance_clipped)."""
    chex.assert_equal_shape([x_start, x_t])
    t = self._check_t(t, x_t)
    mean = (self._extract("posterior_mean_coef1", t, x_t) * x_start
            + self._extract("posterior_mean_coef2", t, x_t) * x_t)
    variance = jnp.broadcast_to(self._extract("posterior_variance", t, x_t), x_t.shape)
    log_variance = jnp.broadcast_to(self._extract("posterior_log_variance_clipped", t, x_t), x_t.shape)
    return mean, variance, log_variance

  # --- conversions between parameterizations -------------------------------------------------------------

  def predict_xstart_from_eps(self, x_t, t, eps):
    """x̂_0 = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε (DDPM eq. 4 solved for x_0)."""
    chex.assert_equal_shape([x_t, eps])
    t = self._check_t(t, x_t)
    return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

  def predict_xstart_from_xprev(self, x_t, t, xprev):
    """x̂_0 = (x_{t-1} - coef2_t x_t) / coef1_t: μ̃_t (DDPM eq. 7) solved for x_0.

    The coefficients are those of the chain the network was trained on, at the network's own timestep
    (for a respaced diffusion: the original chain at `timestep_map[t]`). 1/coef1 grows from 1 at t = 0 to
    ~7.8e3 at t = 999 on the linear schedule, so float32 errors in `xprev` are amplified by that much.
    """
    chex.assert_equal_shape([x_t, xprev])
    t = self._check_t(t, x_t)
    return (self._extract("_model_recip_coef1", t, x_t) * xprev
            - self._extract("_model_coef2_over_coef1", t, x_t) * x_t)

  @property
  def _model_recip_coef1(self):
    return 1.0 / self._model_coef1[self.timestep_map]

  @property
  def _model_coef2_over_coef1(self):
    return self._model_coef2[self.timestep_map] / self._model_coef1[self.timestep_map]

  @property
  def _model_coef1_at_t(self):
    return self._model_coef1[self.timestep_map]

  @property
  def _model_coef2_at_t(self):
    return self._model_coef2[self.timestep_map]

  def predict_xprev_from_xstart(self, x_t, t, pred_xstart):
    """The `xprev` output that stands for x̂_0: coef1_τ x̂_0 + coef2_τ x_t on the network's own chain.

    For an unspaced diffusion this is the posterior mean μ̃_t(x_t, x̂_0); it is the training target of an
    `xprev` network.
    """
    chex.assert_equal_shape([x_t, pred_xstart])
    t = self._check_t(t, x_t)
    return (self._extract("_model_coef1_at_t", t, x_t) * pred_xstart
            + self._extract("_model_coef2_at_t", t, x_t) * x_t)

  def predict_eps_from_xstart(self, x_t, t, pred_xstart):
    """ε̂ = (√(1/ᾱ_t) x_t - x̂_0) / √(1/ᾱ_t - 1)."""
    chex.assert_equal_shape([x_t, pred_xstart])
    t = self._check_t(t, x_t)
    return ((self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart)
            / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t))

  # --- the reverse process --------------------------------------------------------------------------------

  def _split_output(self, model_output, x_t):
    model_output = jnp.asarray(model_output)
    if model_output.dtype != jnp.float32:  # μ → x̂_0 conversions must not run in bf16.
      model_output = model_output.astype(jnp.float32)
    if self.var_type in ("learned", "learned_range"):
      expected = x_t.shape[:-1] + (2 * x_t.shape[-1],)
      if model_output.shape != expected:
        raise ValueError(f"var_type={self.var_type!r} needs a model output of shape {expected} "
                         f"([mean block | variance block] on the last axis), got {model_output.shape}.")
      return jnp.split(model_output, 2, axis=-1)
    if model_output.shape != x_t.shape:
      raise ValueError(f"var_type={self.var_type!r} needs a model output of shape {x_t.shape}, "
                       f"got {model_output.shape}.")
    return model_output, None

  def _model_variance(self, var_values, x_t, t):
    if self.var_type == "learned":
      log_variance = var_values
      return jnp.exp(log_variance), log_variance
    if self.var_type == "learned_range":
      # Improved DDPM eq. 15: log σ² = v log β_t + (1 - v) log β̃_t with the output in [-1, 1] ↦ v ∈ [0, 1].
      min_log = self._extract("posterior_log_variance_clipped", t, x_t)
      max_log = self._extract("_log_betas", t, x_t)
      frac = (var_values + 1.0) / 2.0
      log_variance = frac * max_log + (1.0 - frac) * min_log
      return jnp.exp(log_variance), log_variance
    if self.var_type == "fixedlarge":
      variance = self._extract("betas", t, x_t)
      log_variance = self._extract("_fixedlarge_log_variance", t, x_t)
    else:  # fixedsmall
      variance = self._extract("posterior_variance", t, x_t)
      log_variance = self._extract("posterior_log_variance_clipped", t, x_t)
    return jnp.broadcast_to(variance, x_t.shape), jnp.broadcast_to(log_variance, x_t.shape)

  @property
  def _log_betas(self):
    return np.log(self.betas)

  def p_mean_variance(self, model_output, x_t, t, *, clip_denoised: bool) -> dict[str, Array]:
    """p_θ(x_{t-1} | x_t) = N(μ_θ, Σ_θ) from the network's raw output (DDPM eq. 1 & §3.2).

    Returns a dict with `mean`, `variance`, `log_variance` (each of x_t's shape) and `pred_xstart`.
    `clip_denoised` clips x̂_0 to [-1, 1]. For `xprev` the mean is the raw output even when clipping: only
    `pred_xstart` changes (except on respaced steps that are not steps of the original chain, where the
    mean must be formed from x̂_0; see the module docstring).
    """
    t = self._check_t(t, x_t)
    mean_out, var_values = self._split_output(model_output, x_t)
    variance, log_variance = self._model_variance(var_values, x_t, t)

    def maybe_clip(x):
      return jnp.clip(x, -1.0, 1.0) if clip_denoised else x

    if self.mean_type == "xprev":
      pred_xstart = maybe_clip(self.predict_xstart_from_xprev(x_t, t, mean_out))
      if self._xprev_is_native.all():
        mean = mean_out
      else:
        posterior_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        native = jnp.asarray(self._xprev_is_native)[t].reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
        mean = jnp.where(native, mean_out, posterior_mean)
    else:
      if self.mean_type == "xstart":
        pred_xstart = maybe_clip(mean_out)
      else:
        pred_xstart = maybe_clip(self.predict_xstart_from_eps(x_t, t, mean_out))
      mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    chex.assert_equal_shape([mean, log_variance, pred_xstart, x_t])
    return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

  def p_sample(self, model_output, x_t, t, noise, *, clip_denoised: bool = True) -> dict[str, Array]:
    """x_{t-1} = μ_θ + σ_θ z, with no noise added at t = 0 (DDPM Algorithm 2) → dict `sample`, `pred_xstart`."""
    chex.assert_equal_shape([x_t, noise])
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    t = jnp.asarray(t)
    nonzero = (t != 0).astype(x_t.dtype).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
    sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}

  def ddim_sample(self, model_output, x_t, t, noise, *, eta: float = 0.0,
                  clip_denoised: bool = True) -> dict[str, Array]:
    """One DDIM step (Song et al. 2021, eq. 12), on this chain's ᾱ (respace it for fewer steps).

    σ_t = η √((1-ᾱ_{t-1})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1}),
    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,   with ε̂ recomputed from the (clipped) x̂_0
    and no noise at t = 0. η = 1 is ancestral sampling with β̃ variances; η = 0 is deterministic.
    """
    chex.assert_equal_shape([x_t, noise])
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    t = jnp.asarray(t)
    eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
    alpha_bar = self._extract("alphas_cumprod", t, x_t)
    alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x_t)
    sigma = (eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
             * jnp.sqrt(1.0 - alpha_bar / alpha_bar_prev))
    mean_pred = (out["pred_xstart"] * jnp.sqrt(alpha_bar_prev)
                 + jnp.sqrt(1.0 - alpha_bar_prev - sigma**2) * eps)
    nonzero = (t != 0).astype(x_t.dtype).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
    return {"sample": mean_pred + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}

  def ddim_reverse_sample(self, model_output, x_t, t, *, clip_denoised: bool = True) -> dict[str, Array]:
    """The deterministic DDIM (η = 0) step the other way, x_t → x_{t+1} (the ODE encoder of DDIM §4.3).

    x_{t+1} = √ᾱ_{t+1} x̂_0 + √(1-ᾱ_{t+1}) ε̂ with ε̂ = (√(1/ᾱ_t) x_t - x̂_0)/√(1/ᾱ_t - 1); ᾱ_T := 0.
    """
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    t = jnp.asarray(t)
    eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
    alpha_bar_next = self._extract("alphas_cumprod_next", t, x_t)
    sample = out["pred_xstart"] * jnp.sqrt(alpha_bar_next) + jnp.sqrt(1.0 - alpha_bar_next) * eps
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}

  # --- likelihood and losses ------------------------------------------------------------------------------

  def _vb_terms_bpd(self, model_output, x_start, x_t, t, *, clip_denoised: bool):
    chex.assert_equal_shape([x_start, x_t])
    true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / _LOG2
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
    decoder_nll = mean_flat(decoder_nll) / _LOG2
    t = jnp.asarray(t)
    return jnp.where(t == 0, decoder_nll, kl), out["pred_xstart"]

  def vb_terms_bpd(self, model_output, x_start, x_t, t, *, clip_denoised: bool) -> Array:
    """The VLB term at t in bits per dimension, per example (DDPM eq. 5).

    L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_θ(x_{t-1}|x_t)) for t > 0, and the discretized-Gaussian decoder
    NLL L_0 = -log p_θ(x_0|x_1) at t = 0; each averaged over dimensions and divided by ln 2.
    """
    return self._vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=clip_denoised)[0]

  def training_losses(self, model_fn: ModelFn, x_start, t, noise) -> dict[str, Array]:
    """Per-example training losses at timesteps t with q_sample noise `noise`.

    `model_fn(x_t, timesteps)` returns the raw network output; it is called with the network's own
    (original-chain) timesteps. Returns a dict with `loss` [B] and, for the MSE losses, `mse` [B] (and `vb`
    [B] with a learned variance):
      * `kl`: L_t of `vb_terms_bpd` (bits), with clip_denoised=False; `rescaled_kl`: × T.
      * `mse`: ‖target - output‖² averaged over dimensions, target = x_{t-1}'s posterior mean μ̃_t (xprev),
        x_0 (xstart) or ε (eps); for xprev multiplied by λ_t of `mse_weight` (`_mse_weight_table`).
        With a learned variance the hybrid loss of Improved DDPM §3.1:
        mse + L_vb with L_vb computed on stop_gradient(mean output), so that L_vb trains only the variance;
        `rescaled_mse` scales that L_vb by T/1000.
    """
    chex.assert_equal_shape([x_start, noise])
    t = self._check_t(t, x_start)
    x_t = self.q_sample(x_start, t, noise)
    model_output = model_fn(x_t, self.model_timesteps(t))
    terms = {}
    if self.loss_type in ("kl", "rescaled_kl"):
      loss = self.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=False)
      if self.loss_type == "rescaled_kl":
        loss = loss * self.num_timesteps
      terms["loss"] = loss
      return terms

    mean_out, var_values = self._split_output(model_output, x_t)
    if var_values is not None:
      frozen = jnp.concatenate([jax.lax.stop_gradient(mean_out), var_values], axis=-1)
      vb = self.vb_terms_bpd(frozen, x_start, x_t, t, clip_denoised=False)
      if self.loss_type == "rescaled_mse":
        # Divide by 1000 for equivalence with the initial implementation; without it L_vb would dominate.
        vb = vb * (self.num_timesteps / 1000.0)
      terms["vb"] = vb
    if self.mean_type == "xprev":
      target = self.predict_xprev_from_xstart(x_t, t, x_start)
    elif self.mean_type == "xstart":
      target = x_start
    else:
      target = noise
    chex.assert_equal_shape([target, mean_out])
    terms["mse"] = mean_flat(jnp.square(target - mean_out))
    if self.mse_weight != "none":
      terms["mse"] = terms["mse"] * self._extract("mse_weights", t, terms["mse"])
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms

  def prior_bpd(self, x_start) -> Array:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per example (L_T of DDPM eq. 5)."""
    t = jnp.full(x_start.shape[:1], self.num_timesteps - 1, dtype=jnp.int32)
    qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
    return mean_flat(normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)) / _LOG2

  def calc_bpd_loop(self, model_fn: ModelFn, x_start, *, noise=None, clip_denoised: bool = True,
                    key=None) -> dict[str, Array]:
    """The full variational bound in bits/dim: Σ_t L_t + L_T, one compiled scan over all T timesteps.

    Args:
      model_fn: `model_fn(x_t, timesteps)` → raw network output.
      x_start: data in [-1, 1], [B, H, W, C].
      noise: [T, B, H, W, C]; `noise[t]` is the q_sample noise for timestep t. If None, `key` draws it
        (noise at t from `fold_in(key, t)`), without materialising [T, ...].
      clip_denoised: clip x̂_0 to [-1, 1] in p_θ (the original's evaluation default).
    Returns:
      dict with `total_bpd` [B], `terms_bpd` [B, T] (column t = timestep t), `prior_bpd` [B] and `mse`
      [B, T], the per-timestep ‖x̂_0 - x_0‖² averaged over dimensions.
    """
    T = self.num_timesteps
    batch = x_start.shape[0]
    if noise is None:
      if key is None:
        raise ValueError("calc_bpd_loop: pass either noise=[T, *x_start.shape] or key=PRNGKey.")
    else:
      chex.assert_shape(noise, (T,) + tuple(x_start.shape))

    def body(_, xs):
      if noise is None:
        t_scalar = xs
        noise_t = jax.random.normal(jax.random.fold_in(key, t_scalar), x_start.shape, x_start.dtype)
      else:
        t_scalar, noise_t = xs
      t_b = jnp.full((batch,), t_scalar, dtype=jnp.int32)
      x_t = self.q_sample(x_start, t_b, noise_t)
      out = model_fn(x_t, self.model_timesteps(t_b))
      vals, pred_xstart = self._vb_terms_bpd(out, x_start, x_t, t_b, clip_denoised=clip_denoised)
      mse = mean_flat(jnp.square(pred_xstart - x_start))
      return None, (vals, mse)

    ts = jnp.arange(T, dtype=jnp.int32)
    _, (terms_tb, mse_tb) = jax.lax.scan(body, None, ts if noise is None else (ts, noise))
    terms_bpd = terms_tb.T
    prior = self.prior_bpd(x_start)
    return {"total_bpd": jnp.sum(terms_bpd, axis=1) + prior, "terms_bpd": terms_bpd,
            "prior_bpd": prior, "mse": mse_tb.T}

  def sampled_bpd(self, model_fn: ModelFn, x_start, *, key, num_samples: int,
                  clip_denoised: bool = True) -> Array:
    """An unbiased estimate of the full bound in bits/dim from K sampled timesteps per example [B].

      L = L_T + Σ_{t=0}^{T-1} L_t = L_T + T · E_{t ~ U{0..T-1}}[L_t]
        ≈ L_T + T · (1/K) Σ_k L_{t_k},   t_k ~ U{0..T-1} i.i.d. per example, x_{t_k} = q_sample(x_0, t_k, ε_k)

    with L_T the prior term (`prior_bpd`), L_t the denoising KL and L_0 the decoder NLL (`vb_terms_bpd`).
    Its expectation over t_k and ε_k is that of `calc_bpd_loop`'s total (each of its terms uses one ε too);
    K·B network calls instead of T·B, so it is what training uses for its periodic bits/dim.

    Args:
      model_fn: `model_fn(x_t, timesteps)` → raw network output.
      x_start: data in [-1, 1], [B, H, W, C].
      key: the estimate's randomness; sample k uses split(key, K)[k], split again into (t, ε).
      num_samples: K ≥ 1, the timesteps per example.
    """
    if num_samples < 1:
      raise ValueError(f"sampled_bpd: num_samples={num_samples!r} is invalid: expected an integer >= 1.")

    def term(_, key_k):
      t_key, noise_key = jax.random.split(key_k)
      t = jax.random.randint(t_key, x_start.shape[:1], 0, self.num_timesteps)
      noise = jax.random.normal(noise_key, x_start.shape)
      x_t = self.q_sample(x_start, t, noise)
      out = model_fn(x_t, self.model_timesteps(t))
      return None, self.vb_terms_bpd(out, x_start, x_t, t, clip_denoised=clip_denoised)

    _, terms = jax.lax.scan(term, None, jax.random.split(key, num_samples))
    return self.prior_bpd(x_start) + self.num_timesteps * jnp.mean(terms, axis=0)

  # --- sampling loops -------------------------------------------------------------------------------------

  def _loop_inputs(self, shape, key, x_T, step_noise, name):
    shape = tuple(int(s) for s in shape)
    if key is None and (x_T is None or step_noise is None):
      raise ValueError(f"{name}: pass key=PRNGKey, or both x_T and step_noise.")
    key_T, key_steps = jax.random.split(key) if key is not None else (None, None)
    if x_T is None:
      x_T = jax.random.normal(key_T, shape, jnp.float32)
    chex.assert_shape(x_T, shape)
    if step_noise is not None:
      chex.assert_shape(step_noise, (self.num_timesteps,) + shape)
    return jnp.asarray(x_T, jnp.float32), key_steps

  def _reverse_scan(self, step_fn, x_T, key_steps, step_noise, carry_extra=None):
    """Runs `step_fn(x, t_b, noise, extra) -> (x, extra)` for t = T-1, ..., 0 as one lax.scan."""
    T = self.num_timesteps
    shape = x_T.shape
    ts = jnp.arange(T - 1, -1, -1, dtype=jnp.int32)

    def body(carry, xs):
      x, extra = carry
      if step_noise is None:
        t_scalar = xs
        noise = jax.random.normal(jax.random.fold_in(key_steps, t_scalar), shape, jnp.float32)
      else:
        t_scalar, noise = xs
      t_b = jnp.full(shape[:1], t_scalar, dtype=jnp.int32)
      return step_fn(x, t_b, noise, extra), None

    xs = ts if step_noise is None else (ts, jnp.asarray(step_noise, jnp.float32)[::-1])
    (x, extra), _ = jax.lax.scan(body, (x_T, carry_extra), xs)
    return x, extra

  def p_sample_loop(self, model_fn: ModelFn, shape, *, key=None, x_T=None, step_noise=None,
                    clip_denoised: bool = True) -> Array:
    """Ancestral sampling x_T ~ N(0, I) → x_0 (DDPM Algorithm 2), one compiled scan.

    `step_noise` [T, *shape] replays given noise (`step_noise[t]` is the z used at timestep t; unused at
    t = 0) so that samples can be reproduced against other code; otherwise it is drawn from `key`.
    """
    x_T, key_steps = self._loop_inputs(shape, key, x_T, step_noise, "p_sample_loop")

    def step(x, t_b, noise, extra):
      out = self.p_sample(model_fn(x, self.model_timesteps(t_b)), x, t_b, noise, clip_denoised=clip_denoised)
      return out["sample"], extra

    return self._reverse_scan(step, x_T, key_steps, step_noise)[0]

  def p_sample_loop_progressive(self, model_fn: ModelFn, shape, *, key=None, x_T=None, step_noise=None,
                                clip_denoised: bool = True, include_xstartpred_freq: int = 50):
    """Ancestral sampling that also records x̂_0 every `include_xstartpred_freq` steps.

    Returns (sample [B, ...], xstartpreds [B, N, ...]) with N = T // include_xstartpred_freq; slot k holds
    x̂_0 predicted at timestep t = k · freq (so slot 0 is the final prediction, which agrees with the
    sample), as the original's `p_sample_loop_progressive`.
    """
    if include_xstartpred_freq < 1:
      raise ValueError(f"include_xstartpred_freq={include_xstartpred_freq!r} must be a positive integer.")
    x_T, key_steps = self._loop_inputs(shape, key, x_T, step_noise, "p_sample_loop_progressive")
    num_recorded = self.num_timesteps // include_xstartpred_freq
    shape = x_T.shape
    buffer = jnp.zeros((shape[0], num_recorded) + shape[1:], jnp.float32)

    def step(x, t_b, noise, buf):
      out = self.p_sample(model_fn(x, self.model_timesteps(t_b)), x, t_b, noise, clip_denoised=clip_denoised)
      t_scalar = t_b[0]
      slot = t_scalar // include_xstartpred_freq
      record = (t_scalar % include_xstartpred_freq == 0) & (slot < num_recorded)
      if num_recorded:
        buf = jax.lax.cond(
            record,
            lambda b: jax.lax.dynamic_update_index_in_dim(b, out["pred_xstart"], slot, axis=1),
            lambda b: b, buf)
      return out["sample"], buf

    return self._reverse_scan(step, x_T, key_steps, step_noise, buffer)

  def ddim_sample_loop(self, model_fn: ModelFn, shape, *, key=None, x_T=None, step_noise=None,
                       eta: float = 0.0, clip_denoised: bool = True) -> Array:
    """DDIM sampling over all steps of this chain (respace it first for fewer steps), one compiled scan."""
    x_T, key_steps = self._loop_inputs(shape, key, x_T, step_noise, "ddim_sample_loop")

    def step(x, t_b, noise, extra):
      out = self.ddim_sample(model_fn(x, self.model_timesteps(t_b)), x, t_b, noise, eta=eta,
                             clip_denoised=clip_denoised)
      return out["sample"], extra

    return self._reverse_scan(step, x_T, key_steps, step_noise)[0]

  def ddim_reverse_sample_loop(self, model_fn: ModelFn, x_start, *, clip_denoised: bool = True) -> Array:
    """Encodes data into the chain's last state with deterministic DDIM steps (the inverse of η = 0 sampling).

    `x_start` is taken as the state at t = 0 and moved through t = 0, ..., T-2 to the state at t = T-1,
    which is where `ddim_sample_loop` starts, so the two are inverse maps up to discretisation error.
    """
    def body(x, t_scalar):
      t_b = jnp.full(x.shape[:1], t_scalar, dtype=jnp.int32)
      out = self.ddim_reverse_sample(model_fn(x, self.model_timesteps(t_b)), x, t_b, clip_denoised=clip_denoised)
      return out["sample"], None

    x, _ = jax.lax.scan(body, jnp.asarray(x_start, jnp.float32),
                        jnp.arange(self.num_timesteps - 1, dtype=jnp.int32))
    return x

  # --- respacing ------------------------------------------------------------------------------------------

  def respace(self, use_timesteps: Iterable[int]) -> "GaussianDiffusion":
    """A diffusion over the kept timesteps τ_0 < τ_1 < ... of this chain (improved-diffusion's SpacedDiffusion).

    β'_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}} (ᾱ_{τ_{-1}} := 1), so ᾱ'_i = ᾱ_{τ_i}. The result has `timestep_map`
    (τ_i for each new index i): its loops and losses call the network with ORIGINAL timesteps. An `xprev`
    network's output keeps meaning x_{τ_i - 1} of the original chain (see the module docstring).
    """
    kept = sorted({int(s) for s in use_timesteps})
    if not kept:
      raise ValueError("respace: use_timesteps is empty; keep at least one timestep.")
    if kept[0] < 0 or kept[-1] >= self.num_timesteps:
      raise ValueError(f"respace: use_timesteps must lie in [0, {self.num_timesteps - 1}], "
                       f"got min {kept[0]} and max {kept[-1]}.")
    last_alpha_cumprod = 1.0
    new_betas = []
    for i in kept:
      new_betas.append(1.0 - self.alphas_cumprod[i] / last_alpha_cumprod)
      last_alpha_cumprod = self.alphas_cumprod[i]
    spaced = GaussianDiffusion(np.asarray(new_betas), mean_type=self.mean_type, var_type=self.var_type,
                               loss_type=self.loss_type, mse_weight=self.mse_weight,
                               min_snr_gamma=self.min_snr_gamma)
    kept_arr = np.asarray(kept, dtype=np.int64)
    spaced.timestep_map = self.timestep_map[kept_arr]
    spaced.original_num_timesteps = self.original_num_timesteps
    # The network's chain is still the one this diffusion's network was trained on.
    spaced._model_coef1 = self._model_coef1
    spaced._model_coef2 = self._model_coef2
    previous = np.concatenate([[-1], spaced.timestep_map[:-1]])
    spaced._xprev_is_native = (spaced.timestep_map - previous) == 1
    return spaced


def classifier_free_guidance(cond_output, uncond_output, scale, *, mean_channels: int) -> Array:
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6) on a raw network output [B, H, W, C or 2C].

    out_w = out_∅ + w · (out_y − out_∅)      on the mean block [..., :C];
    the variance block (learned Σ, [..., C:]) is the conditional one's.

  w = 0 is the unconditional model, w = 1 the conditional one, w > 1 pushes samples towards the class.
  Guiding the raw output is the same for every mean type: at fixed (x_t, t) each mean parameterization is an
  affine function f of ε — ε itself; x₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t; μ = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t — and
  affine maps preserve affine combinations whose weights (1 − w, w) sum to 1:
    f(ε_∅) + w·(f(ε_y) − f(ε_∅)) = (1 − w)·f(ε_∅) + w·f(ε_y) = f((1 − w)·ε_∅ + w·ε_y).
  So μ-space guidance of an `xprev` model equals ε-space guidance of the ε it stands for (tested in float64).
  """
  chex.assert_equal_shape([cond_output, uncond_output])
  mean = uncond_output[..., :mean_channels] + scale * (cond_output[..., :mean_channels]
                                                       - uncond_output[..., :mean_channels])
  if cond_output.shape[-1] == mean_channels:
    return mean
  return jnp.concatenate([mean, cond_output[..., mean_channels:]], axis=-1)


def create_diffusion(*, beta_schedule: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
                     beta_end: float = 0.02, mean_type: str = "xprev", var_type: str = "fixedlarge",
                     loss_type: str = "kl", timestep_respacing: Any = None, mse_weight: str = "none",
                     min_snr_gamma: float = 5.0) -> GaussianDiffusion:
  """Builds a (possibly respaced) GaussianDiffusion from schedule and parameterization names."""
  betas = get_beta_schedule(beta_schedule, num_timesteps=num_timesteps, beta_start=beta_start,
                            beta_end=beta_end)
  diffusion = GaussianDiffusion(betas, mean_type=mean_type, var_type=var_type, loss_type=loss_type,
                                mse_weight=mse_weight, min_snr_gamma=min_snr_gamma)
  if timestep_respacing:
    diffusion = diffusion.respace(space_timesteps(num_timesteps, timestep_respacing))
  return diffusion
