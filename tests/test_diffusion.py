"""ddpm_jax.diffusion against independent float64 references (tests/np_reference.py), Monte Carlo
estimates and known identities. No test here compares the code with its own output."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from ddpm_jax import diffusion as D

T_SMALL = 20
SHAPE = (3, 4, 4, 2)  # B, H, W, C


def _rng(seed=0):
  return np.random.default_rng(seed)


def _data(seed=0, shape=SHAPE):
  """Data on the 8-bit grid in [-1, 1], as the decoder expects."""
  return (_rng(seed).integers(0, 256, size=shape) / 127.5 - 1.0).astype(np.float32)


def _diffusion(mean_type="xprev", var_type="fixedlarge", loss_type="kl", schedule="linear", T=T_SMALL,
               **kw):
  betas = D.get_beta_schedule(schedule, num_timesteps=T, **kw)
  return D.GaussianDiffusion(betas, mean_type=mean_type, var_type=var_type, loss_type=loss_type)


# --------------------------------------------------------------------------------------------------------
# Schedules and spacing.
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, 1000])
def test_beta_schedules_closed_forms(T):
  bs, be = 1e-4, 0.02
  t = np.arange(T, dtype=np.float64)
  frac = t / (T - 1) if T > 1 else np.zeros(1)
  np.testing.assert_allclose(D.get_beta_schedule("linear", num_timesteps=T), bs + (be - bs) * frac,
                             rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(D.get_beta_schedule("quad", num_timesteps=T),
                             (math.sqrt(bs) + (math.sqrt(be) - math.sqrt(bs)) * frac)**2, rtol=1e-12)
  np.testing.assert_array_equal(D.get_beta_schedule("const", num_timesteps=T), np.full(T, be))
  np.testing.assert_allclose(D.get_beta_schedule("jsd", num_timesteps=T), 1.0 / (T - t), rtol=1e-12)
  for name, f in (("warmup10", 0.1), ("warmup50", 0.5)):
    betas = D.get_beta_schedule(name, num_timesteps=T, beta_start=bs, beta_end=be)
    w = int(T * f)
    expected = np.full(T, be)
    if w > 0:
      expected[:w] = bs + (be - bs) * (np.arange(w) / (w - 1) if w > 1 else 0.0)
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
  for name in D.BETA_SCHEDULES:
    betas = D.get_beta_schedule(name, num_timesteps=T)
    assert betas.dtype == np.float64 and betas.shape == (T,)


def test_cosine_schedule_matches_alpha_bar():
  T, s = 4000, 0.008
  betas = D.get_beta_schedule("cosine", num_timesteps=T)
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2)**2
  alpha_bar = f(np.arange(1, T + 1) / T) / f(0.0)  # ᾱ_t of Improved DDPM eq. 17 at t = 1..T
  capped = betas >= 0.999
  assert capped.sum() >= 1 and capped[-1] and not capped[:-5].any()  # only the very end is capped
  np.testing.assert_allclose(betas.max(), 0.999)
  np.testing.assert_allclose(ref.alphas_cumprod(betas)[~capped], alpha_bar[~capped], rtol=1e-9)


def test_schedule_rejects_unknown_name_and_bad_T():
  with pytest.raises(ValueError, match=r"name='cosin'.*linear"):
    D.get_beta_schedule("cosin", num_timesteps=10)
  with pytest.raises(ValueError, match="num_timesteps=0"):
    D.get_beta_schedule("linear", num_timesteps=0)


@pytest.mark.parametrize("T, counts, expected", [
    (10, [3], {0, 4, 9}),  # stride 4.5: round(4.5) = 4 (half to even)
    (100, "10,10", {0, 5, 11, 16, 22, 27, 33, 38, 44, 49, 50, 55, 61, 66, 72, 77, 83, 88, 94, 99}),
    (10, [1, 1, 1], {0, 4, 7}),  # sections of 4, 3, 3 steps
    (7, [2, 3], {0, 3, 4, 5, 6}),  # sections of 4 and 3 steps
    (1000, "ddim50", set(range(0, 1000, 20))),
    (1000, "ddim1000", set(range(1000))),
])
def test_space_timesteps_hand_computed(T, counts, expected):
  assert D.space_timesteps(T, counts) == expected


def test_space_timesteps_errors():
  with pytest.raises(ValueError, match="exactly 7 of 10"):
    D.space_timesteps(10, "ddim7")
  with pytest.raises(ValueError, match="section of 5 steps into 6"):
    D.space_timesteps(10, [6, 1])


# --------------------------------------------------------------------------------------------------------
# Gaussian helpers.
# --------------------------------------------------------------------------------------------------------


def test_normal_kl_closed_form_and_monte_carlo():
  m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
  kl = float(D.normal_kl(jnp.float32(m1), jnp.float32(lv1), jnp.float32(m2), jnp.float32(lv2)))
  np.testing.assert_allclose(kl, ref.gaussian_kl(m1, 0.5, m2, 1.7), rtol=1e-5)
  # Sampling estimate E_q[log q - log p] with x ~ q.
  x = _rng(1).normal(m1, math.sqrt(0.5), size=400_000)
  logq = -0.5 * (math.log(2 * math.pi * 0.5) + (x - m1)**2 / 0.5)
  logp = -0.5 * (math.log(2 * math.pi * 1.7) + (x - m2)**2 / 1.7)
  mc = np.mean(logq - logp)
  se = np.std(logq - logp) / math.sqrt(x.size)
  assert abs(kl - mc) < 4 * se
  # Scalars broadcast against arrays and the KL of identical Gaussians is 0.
  zeros = D.normal_kl(jnp.ones((2, 3)), jnp.zeros((2, 3)), 1.0, 0.0)
  np.testing.assert_allclose(zeros, 0.0, atol=1e-7)


def test_approx_cdf_close_to_erf():
  x = np.linspace(-6, 6, 2001)
  np.testing.assert_allclose(D.approx_standard_normal_cdf(jnp.asarray(x, jnp.float32)),
                             ref.std_normal_cdf(x), atol=5e-4)


def test_discretized_gaussian_log_likelihood():
  rng = _rng(2)
  x = (rng.integers(0, 256, size=(4, 64)) / 127.5 - 1.0)
  x[0, :4] = [-1.0, 1.0, -1.0, 1.0]  # edge bins open to ±∞
  means = rng.normal(0, 0.5, size=x.shape)
  log_scales = rng.uniform(-4, 0, size=x.shape)
  got = D.discretized_gaussian_log_likelihood(
      jnp.asarray(x, jnp.float32), means=jnp.asarray(means, jnp.float32),
      log_scales=jnp.asarray(log_scales, jnp.float32))
  expected = ref.discretized_log_likelihood(x, means, log_scales)
  # float32 differences of CDFs lose relative precision in the far tails; compare logs where the bin holds
  # real mass, probabilities everywhere.
  mass = np.exp(expected) > 1e-3
  assert mass.sum() > 100
  np.testing.assert_allclose(np.asarray(got)[mass], expected[mass], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.exp(got), np.exp(expected), atol=2e-6)
  # The tanh CDF is an approximation of the exact one: close in probability.
  exact = ref.discretized_log_likelihood(x, means, log_scales, cdf=ref.std_normal_cdf)
  np.testing.assert_allclose(np.exp(got), np.exp(exact), atol=2e-3)
  # The 256 bins partition the real line: probabilities sum to 1 for any mean and scale.
  grid = jnp.asarray(np.arange(256) / 127.5 - 1.0, jnp.float32)[None, :]
  for mean, log_scale in ((0.1, -1.0), (-0.7, -3.0), (0.0, 0.5)):
    lp = D.discretized_gaussian_log_likelihood(
        jnp.broadcast_to(grid, (1, 256)), means=jnp.full((1, 256), mean), log_scales=jnp.full((1, 256), log_scale))
    np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64)).sum(), 1.0, atol=1e-4)


# --------------------------------------------------------------------------------------------------------
# Tables and the forward process.
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "warmup10"])
def test_tables_against_definitions(schedule):
  d = _diffusion(schedule=schedule, T=50)
  c = ref.Chain(d.betas)
  np.testing.assert_allclose(d.alphas_cumprod, c.ac, rtol=1e-12)
  np.testing.assert_allclose(d.alphas_cumprod_prev, c.ac_prev, rtol=1e-12)
  np.testing.assert_allclose(d.alphas_cumprod_next, np.append(c.ac[1:], 0.0), rtol=1e-12)
  np.testing.assert_allclose(d.sqrt_alphas_cumprod**2, c.ac, rtol=1e-12)
  np.testing.assert_allclose(d.sqrt_one_minus_alphas_cumprod**2, 1 - c.ac, rtol=1e-12)
  np.testing.assert_allclose(np.exp(d.log_one_minus_alphas_cumprod), 1 - c.ac, rtol=1e-12)
  np.testing.assert_allclose(d.sqrt_recip_alphas_cumprod * np.sqrt(c.ac), 1.0, rtol=1e-12)
  np.testing.assert_allclose(d.sqrt_recipm1_alphas_cumprod**2, 1 / c.ac - 1, rtol=1e-10)
  np.testing.assert_allclose(d.posterior_variance, c.post_var, rtol=1e-10, atol=1e-300)
  np.testing.assert_allclose(d.posterior_log_variance_clipped,
                             [math.log(c.post_var_clipped(t)) for t in range(c.T)], rtol=1e-10)
  for t in (0, 1, 17, 49):
    a = ref.posterior(c.betas, t, 1.0, 0.0)[0]
    b = ref.posterior(c.betas, t, 0.0, 1.0)[0]
    np.testing.assert_allclose([d.posterior_mean_coef1[t], d.posterior_mean_coef2[t]], [a, b], rtol=1e-10,
                               atol=1e-15)
  for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1"):
    assert getattr(d, name).dtype == np.float64 and getattr(d, name).shape == (50,)


def test_q_mean_variance_matches_step_recursion():
  d = _diffusion(schedule="cosine", T=30)
  x0 = _data(3)
  t = np.array([0, 11, 29])
  mean, var, log_var = d.q_mean_variance(jnp.asarray(x0), jnp.asarray(t))
  for i, ti in enumerate(t):
    m, v = ref.marginal_moments(d.betas, ti)
    np.testing.assert_allclose(mean[i], m * x0[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var[i], v, rtol=1e-5)
    np.testing.assert_allclose(log_var[i], math.log(v), rtol=1e-5, atol=1e-6)


def test_q_sample_monte_carlo_matches_running_the_chain():
  """q_sample in one shot has the law of T single steps x_s = √(1-β_s) x_{s-1} + √β_s z_s."""
  d = _diffusion(schedule="linear", T=40, beta_end=0.2)
  n, t = 20000, 25
  x0 = np.float32(0.6)
  rng = _rng(4)
  x = np.full(n, x0, np.float64)
  for s in range(t + 1):
    x = math.sqrt(1 - d.betas[s]) * x + math.sqrt(d.betas[s]) * rng.normal(size=n)
  noise = jnp.asarray(rng.normal(size=(n, 1)), jnp.float32)
  xt = np.asarray(d.q_sample(jnp.full((n, 1), x0), jnp.full((n,), t, jnp.int32), noise))[:, 0]
  se_mean = math.sqrt(x.var() / n + xt.var() / n)
  assert abs(xt.mean() - x.mean()) < 4 * se_mean
  se_var = math.sqrt(2.0 / n) * x.var() * math.sqrt(2)
  assert abs(xt.var() - x.var()) < 4 * se_var


def test_q_posterior_mean_variance_is_bayes_rule():
  d = _diffusion(schedule="quad", T=T_SMALL)
  x0, xt = _data(5), _rng(6).normal(size=SHAPE).astype(np.float32)
  t = np.array([0, 1, 19])
  mean, var, log_var = d.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t))
  c = ref.Chain(d.betas)
  for i, ti in enumerate(t):
    m, v = ref.posterior(d.betas, ti, x0[i], xt[i])
    np.testing.assert_allclose(mean[i], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var[i], v, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(log_var[i], math.log(c.post_var_clipped(ti)), rtol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Parameterizations.
# --------------------------------------------------------------------------------------------------------


def _xprev_tolerance(d, t, scale):
  """float32 error of x̂_0 from an `xprev` value: ~ machine ε × 1/coef1_t × |x| (see DESIGN.md)."""
  return 8 * np.finfo(np.float32).eps * (1.0 / d.posterior_mean_coef1[t]) * scale + 1e-6


@pytest.mark.parametrize("T", [T_SMALL, 1000])
def test_parameterization_round_trips(T):
  d = _diffusion(T=T)
  c = ref.Chain(d.betas)
  ts = np.array([0, T // 2, T - 1])
  x0 = _data(7)
  eps = _rng(8).normal(size=SHAPE)
  xt = np.stack([math.sqrt(c.ac[t]) * x0[i] + math.sqrt(1 - c.ac[t]) * eps[i] for i, t in enumerate(ts)])
  xprev = np.stack([ref.posterior(c.betas, t, x0[i], xt[i])[0] for i, t in enumerate(ts)])
  j = lambda a: jnp.asarray(a, jnp.float32)
  tj = jnp.asarray(ts)
  x0_from_eps = np.asarray(d.predict_xstart_from_eps(j(xt), tj, j(eps)))
  x0_from_xprev = np.asarray(d.predict_xstart_from_xprev(j(xt), tj, j(xprev)))
  eps_from_x0 = np.asarray(d.predict_eps_from_xstart(j(xt), tj, j(x0)))
  xprev_from_x0 = np.asarray(d.predict_xprev_from_xstart(j(xt), tj, j(x0)))
  for i, t in enumerate(ts):
    scale = np.abs(xt[i]).max()
    np.testing.assert_allclose(x0_from_eps[i], x0[i], atol=1e-6 / math.sqrt(c.ac[t]) * 10 * scale + 1e-5)
    np.testing.assert_allclose(x0_from_xprev[i], x0[i], atol=_xprev_tolerance(d, t, scale))
    # ε from x̂_0 divides by √(1/ᾱ_t - 1), tiny at t = 0 on the linear schedule.
    np.testing.assert_allclose(eps_from_x0[i], eps[i], atol=1e-5 / d.sqrt_recipm1_alphas_cumprod[t] + 1e-5)
    np.testing.assert_allclose(xprev_from_x0[i], xprev[i], atol=1e-5)
    # Against the reference's own inversion of Bayes' posterior mean.
    np.testing.assert_allclose(c.xstart_from_xprev(xt[i], t, xprev[i]), x0[i], atol=1e-9 / c.ac[t] + 1e-9)
  # The conversion factor that the design notes quote for the linear schedule.
  if T == 1000:
    np.testing.assert_allclose(1 / d.posterior_mean_coef1[[0, 500, 999]], [1.0, 327.0, 7.79e3], rtol=2e-3)


@pytest.mark.parametrize("var_type", D.VAR_TYPES)
@pytest.mark.parametrize("mean_type", ["xprev", "xstart", "eps"])
def test_p_mean_variance_with_exact_outputs(mean_type, var_type):
  """An output that encodes the true x_0 gives the true posterior mean and x̂_0; variances per type."""
  d = _diffusion(mean_type=mean_type, var_type=var_type)
  c = ref.Chain(d.betas)
  ts = np.array([0, 1, T_SMALL - 1])
  x0 = _data(9)
  eps = _rng(10).normal(size=SHAPE)
  xt = np.stack([math.sqrt(c.ac[t]) * x0[i] + math.sqrt(1 - c.ac[t]) * eps[i] for i, t in enumerate(ts)])
  true_mean = np.stack([ref.posterior(c.betas, t, x0[i], xt[i])[0] for i, t in enumerate(ts)])
  out = {"xprev": true_mean, "xstart": x0, "eps": eps}[mean_type]
  v = _rng(11).uniform(-1, 1, size=SHAPE)  # variance block
  if var_type in ("learned", "learned_range"):
    out = np.concatenate([out, v if var_type == "learned_range" else np.log(0.01 + (v + 1) / 4)], axis=-1)
  res = d.p_mean_variance(jnp.asarray(out, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(ts),
                          clip_denoised=False)
  for i, t in enumerate(ts):
    np.testing.assert_allclose(res["mean"][i], true_mean[i], atol=2e-5)
    np.testing.assert_allclose(res["pred_xstart"][i], x0[i],
                               atol=_xprev_tolerance(d, t, 3) if mean_type == "xprev" else 2e-4)
    if var_type == "learned":
      expected_log_var = np.log(0.01 + (v[i] + 1) / 4)
    elif var_type == "learned_range":
      expected_log_var = ref.learned_range_log_variance(v[i], c.betas[t], c.post_var_clipped(t))
    else:
      expected_log_var = np.full(SHAPE[1:], c.fixed_log_variance(var_type, t))
    np.testing.assert_allclose(res["log_variance"][i], expected_log_var, rtol=1e-5, atol=1e-6)
    if var_type == "fixedlarge":  # the variance is β_t itself, also at t = 0
      np.testing.assert_allclose(res["variance"][i], c.betas[t], rtol=1e-5)
    elif var_type == "fixedsmall":  # β̃_t, which is 0 at t = 0 (only its log is clipped)
      np.testing.assert_allclose(res["variance"][i], c.post_var[t], rtol=1e-5, atol=1e-12)
    else:
      np.testing.assert_allclose(res["variance"][i], np.exp(expected_log_var), rtol=1e-5)
    assert res["variance"].shape == SHAPE and res["log_variance"].shape == SHAPE


def test_learned_range_endpoints_are_the_fixed_variances():
  d = _diffusion(var_type="learned_range", T=T_SMALL)
  c = ref.Chain(d.betas)
  xt = jnp.zeros((2, 1, 1, 1))
  ts = jnp.array([3, 3])
  out = jnp.asarray([[[[0.0, 1.0]]], [[[0.0, -1.0]]]], jnp.float32)
  res = d.p_mean_variance(out, xt, ts, clip_denoised=False)
  np.testing.assert_allclose(res["variance"][:, 0, 0, 0], [c.betas[3], c.post_var[3]], rtol=1e-5)


def test_xprev_clipping_changes_only_pred_xstart():
  d = _diffusion(mean_type="mu")
  c = ref.Chain(d.betas)
  t = np.array([5, 5, 5])
  x0 = np.full(SHAPE, 3.0)  # far outside [-1, 1]
  xt = _rng(12).normal(size=SHAPE)
  xprev = np.stack([ref.posterior(c.betas, 5, x0[i], xt[i])[0] for i in range(3)])
  res = d.p_mean_variance(jnp.asarray(xprev, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(t),
                          clip_denoised=True)
  np.testing.assert_array_equal(res["mean"], np.asarray(xprev, np.float32))  # the raw output, exactly
  np.testing.assert_allclose(res["pred_xstart"], 1.0)
  # With x̂_0 clipped, ε- and x_0-models form the mean from the clipped x̂_0.
  d_eps = _diffusion(mean_type="x0")
  res = d_eps.p_mean_variance(jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(t),
                              clip_denoised=True)
  expected = np.stack([ref.posterior(c.betas, 5, np.ones(SHAPE[1:]), xt[i])[0] for i in range(3)])
  np.testing.assert_allclose(res["mean"], expected, atol=1e-5)


def test_model_output_shape_errors():
  d = _diffusion(var_type="learned_range")
  with pytest.raises(ValueError, match=r"learned_range.*\(3, 4, 4, 4\)"):
    d.p_mean_variance(jnp.zeros(SHAPE), jnp.zeros(SHAPE), jnp.zeros((3,), jnp.int32), clip_denoised=False)
  with pytest.raises(ValueError, match="timesteps t of shape"):
    d.q_sample(jnp.zeros(SHAPE), jnp.zeros((2,), jnp.int32), jnp.zeros(SHAPE))
  with pytest.raises(TypeError, match="integers"):
    d.q_sample(jnp.zeros(SHAPE), jnp.zeros((3,)), jnp.zeros(SHAPE))


def test_constructor_errors_name_field_and_choices():
  betas = D.get_beta_schedule("linear", num_timesteps=5)
  with pytest.raises(ValueError, match=r"mean_type='xnext'.*xprev.*mu.*eps"):
    D.GaussianDiffusion(betas, mean_type="xnext", var_type="fixedlarge", loss_type="kl")
  with pytest.raises(ValueError, match=r"var_type='small'.*fixedsmall"):
    D.GaussianDiffusion(betas, mean_type="eps", var_type="small", loss_type="kl")
  with pytest.raises(ValueError, match=r"loss_type='l2'.*rescaled_mse"):
    D.GaussianDiffusion(betas, mean_type="eps", var_type="fixedsmall", loss_type="l2")
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    D.GaussianDiffusion(np.array([0.1, 1.5]), mean_type="eps", var_type="fixedsmall", loss_type="kl")


# --------------------------------------------------------------------------------------------------------
# Sampling steps.
# --------------------------------------------------------------------------------------------------------


def test_p_sample_adds_noise_except_at_t0():
  d = _diffusion(mean_type="eps", var_type="fixedsmall")
  c = ref.Chain(d.betas)
  ts = np.array([0, 4, 19])
  xt = _rng(13).normal(size=SHAPE)
  out = 0.3 * xt
  z = _rng(14).normal(size=SHAPE)
  res = d.p_sample(jnp.asarray(out, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(ts),
                   jnp.asarray(z, jnp.float32), clip_denoised=False)
  for i, t in enumerate(ts):
    x0 = c.xstart_from_eps(xt[i], t, out[i])
    mean, _ = ref.posterior(c.betas, t, x0, xt[i])
    sd = 0.0 if t == 0 else math.sqrt(c.post_var_clipped(t))
    np.testing.assert_allclose(res["sample"][i], mean + sd * z[i], atol=5e-5)


def test_ddim_step_formula_and_eta1_identity():
  """η = 1 DDIM is ancestral sampling with β̃ variances (DDIM §4.1); η = 0 matches eq. 12 directly."""
  d = _diffusion(mean_type="eps", var_type="fixedsmall", T=T_SMALL)
  c = ref.Chain(d.betas)
  ts = np.array([0, 7, 19])
  xt = _rng(15).normal(size=SHAPE)
  out = 0.5 * xt + 0.1
  z = _rng(16).normal(size=SHAPE)
  j = lambda a: jnp.asarray(a, jnp.float32)
  ddim1 = d.ddim_sample(j(out), j(xt), jnp.asarray(ts), j(z), eta=1.0, clip_denoised=False)["sample"]
  ancestral = d.p_sample(j(out), j(xt), jnp.asarray(ts), j(z), clip_denoised=False)["sample"]
  np.testing.assert_allclose(ddim1, ancestral, atol=5e-5)
  ddim0 = d.ddim_sample(j(out), j(xt), jnp.asarray(ts), j(z), eta=0.0, clip_denoised=False)["sample"]
  for i, t in enumerate(ts):
    x0 = c.xstart_from_eps(xt[i], t, out[i])
    expected = math.sqrt(c.ac_prev[t]) * x0 + math.sqrt(1 - c.ac_prev[t]) * out[i]
    np.testing.assert_allclose(ddim0[i], expected, atol=5e-5)
  # The reverse (encoding) step: x_{t+1} = √ᾱ_{t+1} x̂_0 + √(1-ᾱ_{t+1}) ε̂ with ᾱ_T = 0.
  rev = d.ddim_reverse_sample(j(out), j(xt), jnp.asarray(ts), clip_denoised=False)["sample"]
  for i, t in enumerate(ts):
    x0 = c.xstart_from_eps(xt[i], t, out[i])
    a_next = c.ac[t + 1] if t + 1 < c.T else 0.0
    np.testing.assert_allclose(rev[i], math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * out[i], atol=5e-5)


# --------------------------------------------------------------------------------------------------------
# The variational bound and the losses.
# --------------------------------------------------------------------------------------------------------


def _exact_posterior_model(d, x0):
  """The "model" whose mean is the true posterior mean μ̃_t(x_t, x_0) for the fixed data x0."""
  c = ref.Chain(d.betas)
  coef1 = jnp.asarray([ref.posterior(c.betas, t, 1.0, 0.0)[0] for t in range(c.T)], jnp.float32)
  coef2 = jnp.asarray([ref.posterior(c.betas, t, 0.0, 1.0)[0] for t in range(c.T)], jnp.float32)

  def model_fn(x_t, t):
    return coef1[t][:, None, None, None] * x0 + coef2[t][:, None, None, None] * x_t
  return model_fn


def test_vb_terms_vanish_for_the_exact_posterior():
  d = _diffusion(mean_type="xprev", var_type="fixedsmall")
  c = ref.Chain(d.betas)
  x0 = jnp.asarray(_data(17))
  ts = jnp.array([0, 1, 19])
  noise = jnp.asarray(_rng(18).normal(size=SHAPE), jnp.float32)
  xt = d.q_sample(x0, ts, noise)
  bits = d.vb_terms_bpd(_exact_posterior_model(d, x0)(xt, ts), x0, xt, ts, clip_denoised=False)
  np.testing.assert_allclose(bits[1:], 0.0, atol=1e-5)
  # At t = 0 the term is the decoder NLL of x_0 under N(x_0, β̃_1).
  expected0 = -ref.discretized_log_likelihood(x0[0], x0[0], 0.5 * math.log(c.post_var_clipped(0))).mean()
  np.testing.assert_allclose(bits[0], expected0 / math.log(2), rtol=1e-4)


@pytest.mark.parametrize("var_type", ["fixedlarge", "learned_range"])
def test_vb_terms_against_reference(var_type):
  d = _diffusion(mean_type="eps", var_type=var_type)
  c = ref.Chain(d.betas)
  x0 = _data(19)
  ts = np.array([0, 6, 19])
  noise = _rng(20).normal(size=SHAPE)
  xt = np.stack([math.sqrt(c.ac[t]) * x0[i] + math.sqrt(1 - c.ac[t]) * noise[i] for i, t in enumerate(ts)])
  eps_hat = 0.8 * noise + 0.05
  v = _rng(21).uniform(-1, 1, size=SHAPE)
  out = np.concatenate([eps_hat, v], -1) if var_type == "learned_range" else eps_hat
  bits = d.vb_terms_bpd(jnp.asarray(out, jnp.float32), jnp.asarray(x0), jnp.asarray(xt, jnp.float32),
                        jnp.asarray(ts), clip_denoised=False)
  for i, t in enumerate(ts):
    x0_hat = c.xstart_from_eps(xt[i], t, eps_hat[i])
    mean = ref.posterior(c.betas, t, x0_hat, xt[i])[0]
    log_var = (ref.learned_range_log_variance(v[i], c.betas[t], c.post_var_clipped(t))
               if var_type == "learned_range" else np.full(SHAPE[1:], c.fixed_log_variance(var_type, t)))
    np.testing.assert_allclose(bits[i], ref.vb_term_bits(c, x0[i], xt[i], t, mean, log_var), rtol=2e-4,
                               atol=1e-5)


@pytest.mark.parametrize("mean_type", ["xprev", "xstart", "eps"])
def test_training_losses_mse_and_kl(mean_type):
  c = ref.Chain(D.get_beta_schedule("linear", num_timesteps=T_SMALL))
  x0 = _data(22)
  ts = np.array([0, 9, 19])
  noise = _rng(23).normal(size=SHAPE).astype(np.float32)
  xt = np.stack([math.sqrt(c.ac[t]) * x0[i] + math.sqrt(1 - c.ac[t]) * noise[i] for i, t in enumerate(ts)])
  model_fn = lambda x, t: 0.7 * x  # any deterministic network will do
  args = (jnp.asarray(x0), jnp.asarray(ts), jnp.asarray(noise))

  mse = _diffusion(mean_type=mean_type, var_type="fixedsmall", loss_type="mse").training_losses(model_fn, *args)
  assert set(mse) == {"loss", "mse"}
  for i, t in enumerate(ts):
    target = {"xprev": ref.posterior(c.betas, t, x0[i], xt[i])[0], "xstart": x0[i], "eps": noise[i]}[mean_type]
    np.testing.assert_allclose(mse["loss"][i], np.mean((target - 0.7 * xt[i])**2), rtol=1e-4, atol=1e-6)

  for loss_type, factor in (("kl", 1.0), ("rescaled_kl", T_SMALL)):
    d = _diffusion(mean_type=mean_type, var_type="fixedlarge", loss_type=loss_type)
    kl = d.training_losses(model_fn, *args)
    assert set(kl) == {"loss"}
    for i, t in enumerate(ts):
      out = 0.7 * xt[i]
      x0_hat = {"xprev": c.xstart_from_xprev(xt[i], t, out), "xstart": out,
                "eps": c.xstart_from_eps(xt[i], t, out)}[mean_type]
      mean = out if mean_type == "xprev" else ref.posterior(c.betas, t, x0_hat, xt[i])[0]
      expected = ref.vb_term_bits(c, x0[i], xt[i], t, mean, np.full(SHAPE[1:], c.fixed_log_variance("fixedlarge", t)))
      np.testing.assert_allclose(kl["loss"][i], factor * expected, rtol=5e-4, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["mse", "rescaled_mse"])
def test_hybrid_loss_stop_gradient(loss_type):
  """Improved DDPM §3.1: L_hybrid = L_simple + λ L_vb with L_vb seeing a stop-gradient mean, so the mean
  is trained by the MSE alone and the variance by L_vb alone (λ = 1, or T/1000 for rescaled_mse)."""
  T = 40
  d = _diffusion(mean_type="eps", var_type="learned_range", loss_type=loss_type, T=T)
  c = ref.Chain(d.betas)
  x0 = jnp.asarray(_data(24))
  ts = jnp.array([3, 17, 39])
  noise = jnp.asarray(_rng(25).normal(size=SHAPE), jnp.float32)

  def loss(params, key="loss"):
    a, b = params
    model_fn = lambda x, t: jnp.concatenate([a * x, jnp.tanh(b + 0.0 * x)], -1)
    return jnp.sum(d.training_losses(model_fn, x0, ts, noise)[key])

  params = (jnp.float32(0.6), jnp.float32(0.2))
  g_a, g_b = jax.grad(loss)(params)
  xt = np.asarray(d.q_sample(x0, ts, noise), np.float64)
  nz = np.asarray(noise, np.float64)
  n_dims = np.prod(SHAPE[1:])
  # d/da Σ_i mean((ε - a x_t)²) in closed form: the MSE alone.
  expected_g_a = np.sum(-2 * nz * xt) / n_dims + 2 * 0.6 * np.sum(xt**2) / n_dims
  np.testing.assert_allclose(g_a, expected_g_a, rtol=1e-4)
  # d/db: only L_vb depends on b; compare with a central finite difference of the reference bound.
  def ref_vb(b):
    total = 0.0
    for i, t in enumerate(np.asarray(ts)):
      x0_hat = c.xstart_from_eps(xt[i], t, 0.6 * xt[i])
      mean = ref.posterior(c.betas, t, x0_hat, xt[i])[0]
      log_var = ref.learned_range_log_variance(np.full(SHAPE[1:], math.tanh(b)), c.betas[t], c.post_var_clipped(t))
      total += ref.vb_term_bits(c, np.asarray(x0, np.float64)[i], xt[i], t, mean, log_var)
    return total * (T / 1000.0 if loss_type == "rescaled_mse" else 1.0)
  h = 1e-4
  np.testing.assert_allclose(g_b, (ref_vb(0.2 + h) - ref_vb(0.2 - h)) / (2 * h), rtol=2e-3)
  np.testing.assert_allclose(loss(params, "vb"), ref_vb(0.2), rtol=1e-4)


def test_prior_bpd_closed_form():
  d = _diffusion(T=1000)
  x0 = _data(26)
  got = d.prior_bpd(jnp.asarray(x0))
  ac = ref.alphas_cumprod(d.betas)[-1]
  expected = ref.gaussian_kl(math.sqrt(ac) * x0, 1 - ac, 0.0, 1.0).reshape(SHAPE[0], -1).mean(1) / math.log(2)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-7)


def test_calc_bpd_loop_columns_and_sum():
  d = _diffusion(mean_type="eps", var_type="fixedlarge", T=T_SMALL)
  c = ref.Chain(d.betas)
  x0 = _data(27)
  noise = _rng(28).normal(size=(T_SMALL,) + SHAPE).astype(np.float32)
  model_fn = lambda x, t: 0.5 * x + 0.01 * t[:, None, None, None].astype(jnp.float32)
  res = jax.jit(lambda x, n: d.calc_bpd_loop(model_fn, x, noise=n, clip_denoised=True))(jnp.asarray(x0),
                                                                                         jnp.asarray(noise))
  chex.assert_shape([res["terms_bpd"], res["mse"]], (SHAPE[0], T_SMALL))
  chex.assert_shape([res["total_bpd"], res["prior_bpd"]], (SHAPE[0],))
  for t in (0, 5, 19):  # column t uses noise[t] and timestep t
    for i in range(SHAPE[0]):
      xt = math.sqrt(c.ac[t]) * x0[i] + math.sqrt(1 - c.ac[t]) * noise[t, i]
      x0_hat = np.clip(c.xstart_from_eps(xt, t, 0.5 * xt + 0.01 * t), -1, 1)
      mean = ref.posterior(c.betas, t, x0_hat, xt)[0]
      expected = ref.vb_term_bits(c, x0[i], xt, t, mean, np.full(SHAPE[1:], c.fixed_log_variance("fixedlarge", t)))
      np.testing.assert_allclose(res["terms_bpd"][i, t], expected, rtol=5e-4, atol=1e-5)
      np.testing.assert_allclose(res["mse"][i, t], np.mean((x0_hat - x0[i])**2), rtol=1e-4, atol=1e-6)
  prior = ref.gaussian_kl(math.sqrt(c.ac[-1]) * x0, 1 - c.ac[-1], 0.0, 1.0).reshape(SHAPE[0], -1).mean(1) / math.log(2)
  np.testing.assert_allclose(res["prior_bpd"], prior, rtol=1e-3, atol=1e-7)
  np.testing.assert_allclose(res["total_bpd"], np.asarray(res["terms_bpd"], np.float64).sum(1) + prior, rtol=1e-4)


def test_calc_bpd_loop_exact_posterior_leaves_decoder_and_prior():
  d = _diffusion(mean_type="xprev", var_type="fixedsmall", T=T_SMALL)
  c = ref.Chain(d.betas)
  x0 = jnp.asarray(_data(29))
  res = d.calc_bpd_loop(_exact_posterior_model(d, x0), x0, key=jax.random.PRNGKey(0), clip_denoised=False)
  np.testing.assert_allclose(res["terms_bpd"][:, 1:], 0.0, atol=1e-4)
  decoder = [-ref.discretized_log_likelihood(x0[i], x0[i], 0.5 * math.log(c.post_var_clipped(0))).mean()
             / math.log(2) for i in range(SHAPE[0])]
  np.testing.assert_allclose(res["terms_bpd"][:, 0], decoder, rtol=1e-4)
  np.testing.assert_allclose(res["mse"], 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="noise=.*key="):
    d.calc_bpd_loop(_exact_posterior_model(d, x0), x0)


def test_sampled_bpd_is_unbiased_for_the_full_bound():
  # E_{t,ε}[L_T + T·L_t] = L_T + Σ_t E_ε[L_t] = E_ε[calc_bpd_loop total]: Monte Carlo means of the two over
  # independent keys agree within their combined standard error.
  T = 8
  d = _diffusion(mean_type="eps", var_type="fixedlarge", T=T, beta_start=1e-3, beta_end=0.2)
  x0 = jnp.asarray(_data(31, shape=(2, 2, 2, 1)))
  model_fn = lambda x, t: 0.5 * x + 0.01 * t[:, None, None, None].astype(jnp.float32)
  n = 4000
  keys = jax.random.split(jax.random.PRNGKey(5), n)
  est = np.asarray(jax.jit(jax.vmap(lambda k: d.sampled_bpd(model_fn, x0, key=k, num_samples=2)))(keys),
                   np.float64)
  full = np.asarray(jax.jit(jax.vmap(lambda k: d.calc_bpd_loop(model_fn, x0, key=k)["total_bpd"]))(
      jax.random.split(jax.random.PRNGKey(6), n)), np.float64)
  chex.assert_shape(est, (n, 2))
  stderr = np.sqrt(est.var(0, ddof=1) / n + full.var(0, ddof=1) / n)
  assert np.all(np.abs(est.mean(0) - full.mean(0)) < 4 * stderr), (est.mean(0), full.mean(0), stderr)
  assert np.all(est.std(0) > 5 * full.std(0))  # a real estimate: T·L_t spreads far more than the sum
  # The exact-posterior model: every L_t with t ≥ 1 is 0, so each sampled term is T·L_0 if t_k = 0 and 0
  # otherwise; the estimate is L_T + (T / K)·#{k: t_k = 0}·L_0, whose mean is L_T + L_0.
  d = _diffusion(mean_type="xprev", var_type="fixedsmall", T=T)
  exact = _exact_posterior_model(d, x0)
  bound = d.calc_bpd_loop(exact, x0, key=jax.random.PRNGKey(0), clip_denoised=False)
  decoder, prior = np.asarray(bound["terms_bpd"][:, 0]), np.asarray(bound["prior_bpd"])
  est = np.asarray(d.sampled_bpd(exact, x0, key=jax.random.PRNGKey(7), num_samples=4, clip_denoised=False))
  hits = (est - prior) / (T / 4 * decoder)
  np.testing.assert_allclose(hits, np.round(hits), atol=1e-3)
  with pytest.raises(ValueError, match=r"num_samples=0 is invalid"):
    d.sampled_bpd(exact, x0, key=jax.random.PRNGKey(0), num_samples=0)


# --------------------------------------------------------------------------------------------------------
# Sampling loops.
# --------------------------------------------------------------------------------------------------------


def _reference_ancestral(c, mean_type, var_type, model, x_T, step_noise, clip):
  """DDPM Algorithm 2 in float64 with the reference chain; returns (sample, x̂_0 per timestep)."""
  x, preds = np.asarray(x_T, np.float64), {}
  for t in range(c.T - 1, -1, -1):
    out = model(x, t)
    x0_hat = {"xprev": lambda: c.xstart_from_xprev(x, t, out), "xstart": lambda: out,
              "eps": lambda: c.xstart_from_eps(x, t, out)}[mean_type]()
    if clip:
      x0_hat = np.clip(x0_hat, -1, 1)
    mean = out if mean_type == "xprev" else ref.posterior(c.betas, t, x0_hat, x)[0]
    sd = 0.0 if t == 0 else math.exp(0.5 * c.fixed_log_variance(var_type, t))
    preds[t] = x0_hat
    x = mean + sd * step_noise[t]
  return x, preds


@pytest.mark.parametrize("mean_type, var_type", [("xprev", "fixedlarge"), ("eps", "fixedsmall")])
def test_p_sample_loop_replays_reference(mean_type, var_type):
  T = 12
  d = _diffusion(mean_type=mean_type, var_type=var_type, T=T, beta_end=0.2)
  c = ref.Chain(d.betas)
  shape = (2, 3, 3, 1)
  x_T = _rng(30).normal(size=shape)
  step_noise = _rng(31).normal(size=(T,) + shape)
  # A network whose output mixes x_t and the timestep, in both worlds.
  model = lambda x, t: 0.9 * x + 0.02 * t
  model_jax = lambda x, t: 0.9 * x + 0.02 * t[:, None, None, None].astype(jnp.float32)
  expected, preds = _reference_ancestral(c, mean_type, var_type, model, x_T, step_noise, clip=True)
  got = d.p_sample_loop(model_jax, shape, x_T=jnp.asarray(x_T, jnp.float32),
                        step_noise=jnp.asarray(step_noise, jnp.float32), clip_denoised=True)
  np.testing.assert_allclose(got, expected, atol=2e-4)
  # The progressive variant: same sample; slot k holds x̂_0 predicted at t = k·freq.
  sample, xstarts = d.p_sample_loop_progressive(model_jax, shape, x_T=jnp.asarray(x_T, jnp.float32),
                                                step_noise=jnp.asarray(step_noise, jnp.float32),
                                                include_xstartpred_freq=4)
  np.testing.assert_allclose(sample, expected, atol=2e-4)
  chex.assert_shape(xstarts, (2, T // 4) + shape[1:])
  for k in range(T // 4):
    np.testing.assert_allclose(xstarts[:, k], preds[4 * k], atol=2e-4)
  # Drawn from a key: deterministic per key, different across keys.
  a = d.p_sample_loop(model_jax, shape, key=jax.random.PRNGKey(1))
  b = d.p_sample_loop(model_jax, shape, key=jax.random.PRNGKey(1))
  e = d.p_sample_loop(model_jax, shape, key=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(e)).max() > 1e-2
  with pytest.raises(ValueError, match="key=PRNGKey"):
    d.p_sample_loop(model_jax, shape, x_T=jnp.zeros(shape))


# --------------------------------------------------------------------------------------------------------
# Respacing.
# --------------------------------------------------------------------------------------------------------


def test_respace_all_steps_is_the_original():
  d = _diffusion(mean_type="xprev", var_type="fixedlarge", T=T_SMALL)
  s = d.respace(range(T_SMALL))
  np.testing.assert_array_equal(s.timestep_map, np.arange(T_SMALL))
  for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2",
               "posterior_log_variance_clipped"):
    np.testing.assert_allclose(getattr(s, name), getattr(d, name), rtol=1e-12, atol=1e-300)
  # Same p_mean_variance, raw-mean semantics of xprev under clipping included.
  xt = jnp.asarray(_rng(32).normal(size=SHAPE), jnp.float32)
  out = 3.0 * xt
  ts = jnp.array([0, 7, 19])
  a = d.p_mean_variance(out, xt, ts, clip_denoised=True)
  b = s.p_mean_variance(out, xt, ts, clip_denoised=True)
  np.testing.assert_array_equal(b["mean"], out)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_respaced_tables_and_original_timesteps_reach_the_model():
  T = 100
  d = _diffusion(mean_type="eps", var_type="learned_range", T=T)
  kept = D.space_timesteps(T, "ddim10")
  s = d.respace(kept)
  order = np.array(sorted(kept))
  np.testing.assert_array_equal(s.timestep_map, order)
  c = ref.Chain(d.betas)
  np.testing.assert_allclose(s.alphas_cumprod, c.ac[order], rtol=1e-12)  # ᾱ'_i = ᾱ_{τ_i}
  np.testing.assert_allclose(s.betas, 1 - c.ac[order] / np.concatenate([[1.0], c.ac[order[:-1]]]), rtol=1e-10)
  seen = []

  def model_fn(x, t):
    jax.debug.callback(lambda tt: seen.append(np.asarray(tt)), t)
    return jnp.concatenate([0 * x, 0 * x], -1)

  s.p_sample_loop(model_fn, (1, 2, 2, 1), key=jax.random.PRNGKey(0))
  jax.effects_barrier()
  assert [int(v[0]) for v in seen] == sorted(kept, reverse=True)


def test_respaced_xprev_model_uses_original_chain_coefficients():
  """An xprev network trained on the full chain outputs μ̃_τ(x_t, x_0) of the ORIGINAL step τ → τ-1. On a
  respaced chain the mean must be the respaced posterior mean μ̃'(x_t, x_0) (improved-diffusion's reading
  of the output as the respaced mean would give the original one-step mean instead)."""
  T = 100
  d = _diffusion(mean_type="xprev", var_type="fixedsmall", T=T)
  c = ref.Chain(d.betas)
  s = d.respace(D.space_timesteps(T, "ddim10"))
  cs = ref.Chain(s.betas)
  x0 = _data(33)
  xt = _rng(34).normal(size=SHAPE)
  idx = np.array([0, 4, 9])  # respaced indices; τ = 0, 40, 90
  taus = s.timestep_map[idx]
  out = np.stack([ref.posterior(c.betas, tau, x0[i], xt[i])[0] for i, tau in enumerate(taus)])
  res = s.p_mean_variance(jnp.asarray(out, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(idx),
                          clip_denoised=False)
  for i, k in enumerate(idx):
    np.testing.assert_allclose(res["pred_xstart"][i], x0[i], atol=_xprev_tolerance(d, taus[i], 3))
    expected_mean = ref.posterior(cs.betas, k, x0[i], xt[i])[0]
    np.testing.assert_allclose(res["mean"][i], expected_mean, atol=1e-4)
  assert np.abs(np.asarray(res["mean"][1:]) - out[1:]).max() > 1e-2  # not the raw output


def test_ddim_respaced_deterministic_sampling_of_point_mass():
  """For data that is a single point x*, the exact networks of each parameterization make DDIM (η = 0)
  on a respaced chain land on x* from any x_T (DDIM eq. 12 with x̂_0 = x*)."""
  T = 200
  x_star = jnp.asarray(_data(35, shape=(1, 3, 3, 1)))
  x_T = jnp.asarray(_rng(36).normal(size=(4, 3, 3, 1)), jnp.float32)
  for mean_type in ("xprev", "xstart", "eps"):
    d = _diffusion(mean_type=mean_type, var_type="fixedsmall", T=T)
    c = ref.Chain(d.betas)
    sac = jnp.asarray(np.sqrt(c.ac), jnp.float32)
    s1ac = jnp.asarray(np.sqrt(1 - c.ac), jnp.float32)

    def model_fn(x, t, d=d, mean_type=mean_type):  # t is the ORIGINAL timestep
      b = lambda a: a[t][:, None, None, None]
      if mean_type == "xstart":
        return jnp.broadcast_to(x_star, x.shape)
      if mean_type == "eps":
        return (x - b(sac) * x_star) / b(s1ac)
      return d.predict_xprev_from_xstart(x, t, jnp.broadcast_to(x_star, x.shape))  # original chain: d

    s = d.respace(D.space_timesteps(T, "ddim10"))
    got = s.ddim_sample_loop(model_fn, x_T.shape, x_T=x_T, key=jax.random.PRNGKey(0), eta=0.0,
                             clip_denoised=False)
    np.testing.assert_allclose(got, jnp.broadcast_to(x_star, x_T.shape), atol=2e-3, err_msg=mean_type)


def test_ddim_reverse_loop_encodes_point_mass_closed_form():
  """With the exact ε-network of a point mass x*, DDIM trajectories are x_t = √ᾱ_t x* + √(1-ᾱ_t) e with e
  fixed by the start, so encoding from t = 0 ends at √ᾱ_{T-1} x* + √(1-ᾱ_{T-1}) e (where sampling starts)."""
  T = 30
  d = _diffusion(mean_type="eps", var_type="fixedsmall", T=T, beta_end=0.3)
  c = ref.Chain(d.betas)
  x_star = _data(37, shape=(1, 2, 2, 1)).astype(np.float64)
  x_in = x_star + 0.05 * _rng(38).normal(size=(2, 2, 2, 1))
  e = (x_in - math.sqrt(c.ac[0]) * x_star) / math.sqrt(1 - c.ac[0])
  sac = jnp.asarray(np.sqrt(c.ac), jnp.float32)
  s1ac = jnp.asarray(np.sqrt(1 - c.ac), jnp.float32)
  model_fn = lambda x, t: ((x - sac[t][:, None, None, None] * jnp.asarray(x_star, jnp.float32))
                           / s1ac[t][:, None, None, None])
  got = d.ddim_reverse_sample_loop(model_fn, jnp.asarray(x_in, jnp.float32), clip_denoised=False)
  expected = math.sqrt(c.ac[T - 1]) * x_star + math.sqrt(1 - c.ac[T - 1]) * e
  np.testing.assert_allclose(got, expected, atol=1e-3)
  back = d.ddim_sample_loop(model_fn, got.shape, x_T=got, key=jax.random.PRNGKey(0), clip_denoised=False)
  np.testing.assert_allclose(back, np.broadcast_to(x_star, back.shape), atol=1e-3)


# --------------------------------------------------------------------------------------------------------
# Transformations: every public function under jit and vmap.
# --------------------------------------------------------------------------------------------------------


def test_public_functions_jit_and_vmap():
  d = _diffusion(mean_type="eps", var_type="learned_range", loss_type="rescaled_mse", T=T_SMALL)
  x0 = jnp.asarray(_data(39))
  xt = jnp.asarray(_rng(40).normal(size=SHAPE), jnp.float32)
  out = jnp.concatenate([0.5 * xt, jnp.tanh(xt)], -1)
  noise = jnp.asarray(_rng(41).normal(size=SHAPE), jnp.float32)
  ts = jnp.array([0, 5, 19])
  model_fn = lambda x, t: jnp.concatenate([0.5 * x, jnp.tanh(x)], -1)
  calls = {
      "q_mean_variance": lambda x0, xt, out, n, t: d.q_mean_variance(x0, t),
      "q_sample": lambda x0, xt, out, n, t: d.q_sample(x0, t, n),
      "q_posterior_mean_variance": lambda x0, xt, out, n, t: d.q_posterior_mean_variance(x0, xt, t),
      "predict_xstart_from_eps": lambda x0, xt, out, n, t: d.predict_xstart_from_eps(xt, t, n),
      "predict_xstart_from_xprev": lambda x0, xt, out, n, t: d.predict_xstart_from_xprev(xt, t, n),
      "predict_eps_from_xstart": lambda x0, xt, out, n, t: d.predict_eps_from_xstart(xt, t, x0),
      "p_mean_variance": lambda x0, xt, out, n, t: d.p_mean_variance(out, xt, t, clip_denoised=True),
      "p_sample": lambda x0, xt, out, n, t: d.p_sample(out, xt, t, n, clip_denoised=True),
      "ddim_sample": lambda x0, xt, out, n, t: d.ddim_sample(out, xt, t, n, eta=0.5, clip_denoised=True),
      "ddim_reverse_sample": lambda x0, xt, out, n, t: d.ddim_reverse_sample(out, xt, t, clip_denoised=True),
      "vb_terms_bpd": lambda x0, xt, out, n, t: d.vb_terms_bpd(out, x0, xt, t, clip_denoised=True),
      "training_losses": lambda x0, xt, out, n, t: d.training_losses(model_fn, x0, t, n),
      "prior_bpd": lambda x0, xt, out, n, t: d.prior_bpd(x0),
      "normal_kl": lambda x0, xt, out, n, t: D.normal_kl(x0, xt, n, 0.0),
      "discretized_gaussian_log_likelihood": lambda x0, xt, out, n, t: D.discretized_gaussian_log_likelihood(
          x0, means=xt, log_scales=-jnp.abs(n)),
  }
  args = (x0, xt, out, noise, ts)
  for name, f in calls.items():
    eager = f(*args)
    jitted = jax.jit(f)(*args)
    # Fusion under jit reorders float32 arithmetic; logs of tiny bin masses amplify that to ~1e-4.
    chex.assert_trees_all_close(jitted, eager, rtol=1e-3, atol=1e-5, custom_message=name)
    # vmap over the batch of single-example calls (batch of one inside) gives the batched result.
    per_example = jax.vmap(lambda *a: f(*(v[None] for v in a)))(*args)
    per_example = jax.tree.map(lambda y: y[:, 0], per_example)
    chex.assert_trees_all_close(per_example, eager, rtol=1e-3, atol=1e-5, custom_message=name)


# --------------------------------------------------------------------------------------------------------
# μ-space loss weights (mse_weight), each against a route through the float64 references.
# --------------------------------------------------------------------------------------------------------


def _mu_error_pair(betas, t, rng, *, delta_eps=None, delta_x0=None):
  """(‖Δμ‖², ‖Δε‖², ‖Δx̂_0‖²) for a prediction perturbed in ε or in x_0, μ formed by Bayes' rule."""
  m, v = ref.marginal_moments(betas, t)
  x0 = rng.uniform(-1, 1, size=16)
  eps = rng.normal(size=16)
  xt = m * x0 + math.sqrt(v) * eps
  if delta_eps is not None:
    eps_hat = eps + delta_eps
    x0_hat = (xt - math.sqrt(v) * eps_hat) / m
  else:
    x0_hat = x0 + delta_x0
    eps_hat = (xt - m * x0_hat) / math.sqrt(v)
  mu_true, _ = ref.posterior(betas, t, x0, xt)
  mu_hat, _ = ref.posterior(betas, t, x0_hat, xt)
  return (np.sum((mu_hat - mu_true)**2), np.sum((eps_hat - eps)**2), np.sum((x0_hat - x0)**2))


@pytest.mark.parametrize("schedule,T", [("linear", 1000), ("cosine", 100), ("linear", 25)])
def test_mse_weights_against_bayes_rule_routes(schedule, T):
  betas = D.get_beta_schedule(schedule, num_timesteps=T)
  rng = _rng(3)
  gamma = 5.0
  tables = {w: D.GaussianDiffusion(betas, mean_type="xprev", var_type="fixedlarge", loss_type="mse",
                                   mse_weight=w, min_snr_gamma=gamma).mse_weights for w in D.MSE_WEIGHTS}
  small = D.GaussianDiffusion(betas, mean_type="xprev", var_type="fixedsmall", loss_type="mse",
                              mse_weight="kl").mse_weights
  ac = ref.alphas_cumprod(betas)
  for t in sorted({0, 1, T // 3, T // 2, T - 2, T - 1}):
    d_mu, d_eps, _ = _mu_error_pair(betas, t, rng, delta_eps=rng.normal(size=16) * 0.1)
    np.testing.assert_allclose(tables["eps"][t], d_eps / d_mu, rtol=1e-7)   # λ‖Δμ‖² = ‖Δε‖²
    d_mu, _, d_x0 = _mu_error_pair(betas, t, rng, delta_x0=rng.normal(size=16) * 0.1)
    np.testing.assert_allclose(tables["x0"][t], d_x0 / d_mu, rtol=1e-7)     # λ‖Δμ‖² = ‖Δx̂_0‖²
    snr = ac[t] / (1 - ac[t])
    np.testing.assert_allclose(tables["min_snr"][t], tables["eps"][t] * min(snr, gamma) / snr, rtol=1e-10)
    assert tables["none"][t] == 1.0
    if t > 0:
      # The KL of two Gaussians with the same variance σ² minus the KL with the true mean: (Δμ)²/(2σ²).
      for var_type, table in (("fixedlarge", tables["kl"]), ("fixedsmall", small)):
        _, post_var = ref.posterior(betas, t, np.zeros(1), np.zeros(1))
        sigma2 = betas[t] if var_type == "fixedlarge" else post_var
        mu_a, mu_b = np.zeros(1), np.full(1, 0.3)
        extra = ref.gaussian_kl(mu_a, post_var, mu_b, sigma2) - ref.gaussian_kl(mu_a, post_var, mu_a, sigma2)
        np.testing.assert_allclose(table[t] * 0.09, extra[0] / math.log(2), rtol=1e-9)
  # t = 0: σ² is the t = 1 posterior variance for both fixed types (the original's log-variance clip).
  _, post_var1 = ref.posterior(betas, 1, np.zeros(1), np.zeros(1))
  np.testing.assert_allclose(tables["kl"][0], 1 / (2 * post_var1 * math.log(2)), rtol=1e-9)


def test_eps_weighted_mu_mse_equals_eps_mse_for_the_same_prediction():
  """L_simple written in μ-space: the ε-equivalent weight makes an xprev network's loss the ε loss."""
  T = 1000
  mu_d = D.create_diffusion(mean_type="xprev", var_type="fixedsmall", loss_type="mse", mse_weight="eps")
  x0_d = D.create_diffusion(mean_type="xprev", var_type="fixedsmall", loss_type="mse", mse_weight="x0")
  eps_d = D.create_diffusion(mean_type="eps", var_type="fixedsmall", loss_type="mse")
  xs_d = D.create_diffusion(mean_type="xstart", var_type="fixedsmall", loss_type="mse")
  x0 = jnp.asarray(_data(1, (6, 4, 4, 2)))
  noise = jnp.asarray(_rng(2).normal(size=x0.shape), jnp.float32)
  eps_hat = jnp.asarray(noise + 0.3 * _rng(4).normal(size=x0.shape), jnp.float32)
  t = jnp.array([0, 1, 17, 500, 998, T - 1], jnp.int32)
  # The prediction in every space, built from ε̂ in float64 with the reference's marginal and posterior.
  betas = mu_d.betas
  mu_hat, x0_hat = np.zeros(x0.shape), np.zeros(x0.shape)
  for i, ti in enumerate(np.asarray(t)):
    m, v = ref.marginal_moments(betas, int(ti))
    xt = m * np.asarray(x0[i], np.float64) + math.sqrt(v) * np.asarray(noise[i], np.float64)
    x0_hat[i] = (xt - math.sqrt(v) * np.asarray(eps_hat[i], np.float64)) / m
    mu_hat[i] = ref.posterior(betas, int(ti), x0_hat[i], xt)[0]
  mu_hat, x0_hat = jnp.asarray(mu_hat, jnp.float32), jnp.asarray(x0_hat, jnp.float32)
  loss_mu = mu_d.training_losses(lambda x, tt: mu_hat, x0, t, noise)["loss"]
  loss_eps = eps_d.training_losses(lambda x, tt: eps_hat, x0, t, noise)["loss"]
  np.testing.assert_allclose(loss_mu, loss_eps, rtol=2e-3)
  loss_mu_x0 = x0_d.training_losses(lambda x, tt: mu_hat, x0, t, noise)["loss"]
  loss_x0 = xs_d.training_losses(lambda x, tt: x0_hat, x0, t, noise)["loss"]
  # float32 μ at t = 999 carries ~1e-7 absolute error, amplified by 1/coef1 ≈ 7.8e3 in x̂_0 space.
  np.testing.assert_allclose(loss_mu_x0[:-2], loss_x0[:-2], rtol=2e-3)
  np.testing.assert_allclose(loss_mu_x0[-2:], loss_x0[-2:], rtol=0.1)


def test_mse_weight_is_refused_where_it_has_no_meaning():
  betas = D.get_beta_schedule("linear", num_timesteps=10)
  with pytest.raises(ValueError, match=r"mse_weight='bogus'.*none, eps, x0, kl, min_snr"):
    D.GaussianDiffusion(betas, mean_type="xprev", var_type="fixedlarge", loss_type="mse", mse_weight="bogus")
  with pytest.raises(ValueError, match=r"needs mean_type='xprev'"):
    D.GaussianDiffusion(betas, mean_type="eps", var_type="fixedlarge", loss_type="mse", mse_weight="eps")
  with pytest.raises(ValueError, match=r"fixed variance"):
    D.GaussianDiffusion(betas, mean_type="xprev", var_type="learned", loss_type="mse", mse_weight="kl")
  with pytest.raises(ValueError, match=r"min_snr_gamma=0"):
    D.GaussianDiffusion(betas, mean_type="xprev", var_type="fixedlarge", loss_type="mse",
                        mse_weight="min_snr", min_snr_gamma=0)
  # A respaced chain keeps the weight.
  d = D.GaussianDiffusion(betas, mean_type="xprev", var_type="fixedlarge", loss_type="mse", mse_weight="eps")
  assert d.respace([0, 4, 9]).mse_weight == "eps"


def test_classifier_free_guidance_in_mu_space_equals_guidance_in_eps_space():
  # μ = (x_t − β_t/√(1−ᾱ_t)·ε)/√α_t is affine in ε at fixed (x_t, t): guiding μ_∅, μ_y with weight w gives
  # the μ of the guided ε, ε_∅ + w(ε_y − ε_∅) (float64, the closed forms written here, not the code's).
  d = _diffusion(T=1000)
  betas = np.asarray(d.betas, np.float64)
  alphas_cumprod = np.cumprod(1.0 - betas)
  rng = _rng(41)
  x_t = rng.normal(size=SHAPE)
  eps_y, eps_null = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
  for t in (0, 10, 500, 999):
    def mu(eps, t=t):
      return (x_t - betas[t] / math.sqrt(1.0 - alphas_cumprod[t]) * eps) / math.sqrt(1.0 - betas[t])

    def x0(eps, t=t):
      return (x_t - math.sqrt(1.0 - alphas_cumprod[t]) * eps) / math.sqrt(alphas_cumprod[t])
    for w in (0.0, 1.0, 2.0, 4.5):
      eps_w = eps_null + w * (eps_y - eps_null)
      for f in (mu, x0):
        got = D.classifier_free_guidance(f(eps_y), f(eps_null), w, mean_channels=SHAPE[-1])
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, f(eps_w), rtol=1e-12, atol=1e-12)
  # A learned variance block is taken from the conditional output, unguided.
  cond, uncond = rng.normal(size=SHAPE[:-1] + (4,)), rng.normal(size=SHAPE[:-1] + (4,))
  out = np.asarray(D.classifier_free_guidance(jnp.asarray(cond), jnp.asarray(uncond), 3.0, mean_channels=2))
  np.testing.assert_allclose(out[..., :2], uncond[..., :2] + 3.0 * (cond[..., :2] - uncond[..., :2]), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(out[..., 2:], cond[..., 2:], rtol=1e-6)
