"""Independent float64 NumPy references written from the papers' equations (DDPM, Improved DDPM, DDIM).

Nothing here imports ddpm_jax. Where the code under test uses a coefficient formula, these references take
another road to the same quantity (a running product instead of cumprod, Bayes' rule for the posterior
instead of the coefficient formula, the step-by-step recursion for the marginal, erf for the CDF), so that
agreement means the equations, not one implementation, are right.
"""

import math

import numpy as np


def alphas_cumprod(betas):
  """ᾱ_t = ∏_{s ≤ t} (1 - β_s), as an explicit running product."""
  out, acc = [], 1.0
  for b in np.asarray(betas, np.float64):
    acc *= 1.0 - b
    out.append(acc)
  return np.asarray(out)


def marginal_moments(betas, t):
  """Mean factor m_t and variance v_t of q(x_t | x_0) = N(m_t x_0, v_t) by the recursion of the
  one-step kernel N(√(1-β) x, β): m_t = √(1-β_t) m_{t-1}, v_t = (1-β_t) v_{t-1} + β_t, from m = 1, v = 0."""
  m, v = 1.0, 0.0
  for s in range(t + 1):
    m = math.sqrt(1.0 - betas[s]) * m
    v = (1.0 - betas[s]) * v + betas[s]
  return m, v


def posterior(betas, t, x0, xt):
  """q(x_{t-1} | x_t, x_0) by Bayes' rule: prior N(√ᾱ_{t-1} x_0, 1-ᾱ_{t-1}) on x_{t-1} times the
  likelihood N(x_t; √α_t x_{t-1}, β_t). Returns (mean, variance). At t = 0, x_{t-1} is x_0 itself."""
  if t == 0:
    return np.asarray(x0, np.float64).copy(), 0.0
  ac = alphas_cumprod(betas)
  prior_mean, prior_var = math.sqrt(ac[t - 1]) * np.asarray(x0, np.float64), 1.0 - ac[t - 1]
  a = 1.0 - betas[t]
  precision = 1.0 / prior_var + a / betas[t]
  var = 1.0 / precision
  mean = var * (prior_mean / prior_var + math.sqrt(a) * np.asarray(xt, np.float64) / betas[t])
  return mean, var


def gaussian_kl(mean1, var1, mean2, var2):
  """KL(N(mean1, var1) || N(mean2, var2)) = log(σ2/σ1) + (σ1² + (μ1-μ2)²)/(2σ2²) - ½."""
  mean1, var1, mean2, var2 = (np.asarray(a, np.float64) for a in (mean1, var1, mean2, var2))
  return 0.5 * np.log(var2 / var1) + (var1 + (mean1 - mean2)**2) / (2.0 * var2) - 0.5


def std_normal_cdf(x):
  """Φ(x) = ½ (1 + erf(x/√2)), exact."""
  return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, np.float64) / math.sqrt(2.0)))


def tanh_normal_cdf(x):
  """The tanh approximation of Φ used by DDPM's decoder: ½(1 + tanh(√(2/π)(x + 0.044715 x³)))."""
  x = np.asarray(x, np.float64)
  return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_log_likelihood(x, mean, log_scale, cdf=tanh_normal_cdf):
  """log P(bin of x) for 8-bit data rescaled to [-1, 1] (DDPM eq. 13): the bin is [x - 1/255, x + 1/255],
  with the first bin open to -∞ and the last to +∞; probabilities floored at 1e-12."""
  x, mean, log_scale = (np.asarray(a, np.float64) for a in (x, mean, log_scale))
  sd = np.exp(log_scale)
  upper = np.where(x > 0.999, 1.0, cdf((x + 1.0 / 255.0 - mean) / sd))
  lower = np.where(x < -0.999, 0.0, cdf((x - 1.0 / 255.0 - mean) / sd))
  return np.log(np.maximum(upper - lower, 1e-12))


def learned_range_log_variance(v, beta_t, posterior_var_clipped_t):
  """Improved DDPM eq. 15: Σ = exp(u log β_t + (1-u) log β̃_t) with u = (v + 1)/2 for v ∈ [-1, 1]."""
  u = (np.asarray(v, np.float64) + 1.0) / 2.0
  return u * math.log(beta_t) + (1.0 - u) * math.log(posterior_var_clipped_t)


class Chain:
  """The per-timestep quantities of one β schedule, each computed from its defining equation."""

  def __init__(self, betas):
    self.betas = np.asarray(betas, np.float64)
    self.T = len(self.betas)
    self.ac = alphas_cumprod(self.betas)
    self.ac_prev = np.concatenate([[1.0], self.ac[:-1]])
    # β̃_t from Bayes' rule (posterior variance), t ≥ 1; β̃_0 = 0.
    self.post_var = np.array([posterior(self.betas, t, 0.0, 0.0)[1] for t in range(self.T)])

  def post_var_clipped(self, t):
    return self.post_var[max(t, 1)] if self.T > 1 else self.post_var[0]

  def fixed_log_variance(self, var_type, t):
    if var_type == "fixedsmall":
      return math.log(self.post_var_clipped(t))
    # fixedlarge: β_t, with log β̃_1 at t = 0 (the original's choice).
    return math.log(self.post_var_clipped(0)) if t == 0 else math.log(self.betas[t])

  def xstart_from_eps(self, xt, t, eps):
    return (xt - math.sqrt(1.0 - self.ac[t]) * eps) / math.sqrt(self.ac[t])

  def xstart_from_xprev(self, xt, t, xprev):
    """Solve μ̃_t(x_t, x_0) = xprev for x_0 using Bayes' form of the posterior mean, which is linear in x_0:
    μ̃ = a x_0 + b x_t with a = μ̃(x_0=1, x_t=0), b = μ̃(x_0=0, x_t=1)."""
    a = posterior(self.betas, t, 1.0, 0.0)[0]
    b = posterior(self.betas, t, 0.0, 1.0)[0]
    return (np.asarray(xprev, np.float64) - b * np.asarray(xt, np.float64)) / a


def vb_term_bits(chain, x0, xt, t, model_mean, model_log_var):
  """L_{t-1} of DDPM eq. 5 in bits/dim for one example: KL(q(x_{t-1}|x_t,x_0) || N(model_mean, e^logvar)),
  or at t = 0 the discretized decoder NLL. Uses the clipped posterior log-variance, as the code does."""
  x0, xt = np.asarray(x0, np.float64), np.asarray(xt, np.float64)
  if t == 0:
    nll = -discretized_log_likelihood(x0, model_mean, 0.5 * np.asarray(model_log_var, np.float64))
    return nll.mean() / math.log(2.0)
  true_mean, _ = posterior(chain.betas, t, x0, xt)
  true_var = chain.post_var_clipped(t)
  kl = gaussian_kl(true_mean, true_var, model_mean, np.exp(model_log_var))
  return kl.mean() / math.log(2.0)
