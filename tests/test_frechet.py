"""Tests of ddpm_jax.evaluation.frechet against closed forms and hand-computed cases (float64 NumPy)."""

import math

import numpy as np
import pytest

from ddpm_jax.evaluation import frechet


def _random_rotation(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def test_activation_statistics_matches_numpy_mean_and_cov():
  x = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
  mu, sigma = frechet.activation_statistics(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  # np.cov with rowvar=False uses ddof=1, the convention of the reference FID code.
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_distance_of_a_set_to_itself_is_zero():
  x = np.random.default_rng(1).normal(size=(200, 16)) @ np.random.default_rng(2).normal(size=(16, 16))
  mu, sigma = frechet.activation_statistics(x)
  scale = np.trace(sigma)
  assert 0.0 <= frechet.frechet_distance(mu, sigma, mu, sigma) < 1e-10 * scale


def test_one_dimensional_gaussians_exact():
  # In 1-D the distance is (m1 - m2)² + (s1 - s2)² with s the standard deviations.
  for m1, v1, m2, v2 in [(0.0, 1.0, 0.0, 4.0), (1.5, 0.25, -2.0, 9.0), (3.0, 2.0, 3.0, 2.0)]:
    expected = (m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2
    got = frechet.frechet_distance([m1], [[v1]], [m2], [[v2]])
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_commuting_covariances_match_closed_form():
  # Σ1 = U diag(a) Uᵀ, Σ2 = U diag(b) Uᵀ commute: d² = ‖μ1 − μ2‖² + Σ_i (√a_i − √b_i)².
  rng = np.random.default_rng(3)
  d = 12
  u = _random_rotation(rng, d)
  a, b = rng.uniform(0.1, 5.0, size=d), rng.uniform(0.1, 5.0, size=d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, (u * a) @ u.T, mu2, (u * b) @ u.T)
  assert got == pytest.approx(expected, rel=1e-10)


def test_non_commuting_two_by_two_closed_form():
  # For 2×2 PSD matrices, Σ1Σ2 has eigenvalues λ1, λ2 ≥ 0 with λ1 + λ2 = Tr(Σ1Σ2) and λ1λ2 = det Σ1 det Σ2,
  # so Tr((Σ1Σ2)^{1/2}) = √λ1 + √λ2 = sqrt(Tr(Σ1Σ2) + 2 sqrt(det Σ1 det Σ2)).
  s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
  s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
  mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
  tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
  # The distance is symmetric in its two arguments.
  assert frechet.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-12)


def test_rank_one_covariance_exact():
  # Σ1 = v vᵀ (singular): det Σ1 = 0, so Tr((Σ1Σ2)^{1/2}) = sqrt(vᵀ Σ2 v) by the 2×2 identity above.
  v = np.array([1.2, -0.7])
  s1 = np.outer(v, v)
  s2 = np.array([[1.0, 0.4], [0.4, 0.8]])
  expected = np.trace(s1) + np.trace(s2) - 2 * math.sqrt(v @ s2 @ v)
  got = frechet.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
  assert got == pytest.approx(expected, rel=1e-12)


def test_rank_deficient_high_dimensional_covariances_are_accurate():
  # Rank-5 covariances in 64-D (like fewer samples than features), sharing an eigenbasis so the commuting
  # closed form applies; a few eigenvalues are tiny (1e-12) to stress the square roots.
  rng = np.random.default_rng(4)
  d = 64
  u = _random_rotation(rng, d)
  a, b = np.zeros(d), np.zeros(d)
  a[:5] = [3.0, 1.0, 0.5, 1e-12, 2.0]
  b[2:7] = [4.0, 1e-12, 0.1, 2.0, 1.0]
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(np.zeros(d), (u * a) @ u.T, np.zeros(d), (u * b) @ u.T)
  assert np.isfinite(got) and got >= 0
  assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
  # Sample statistics of 20 points in 64-D: rank 19. Distance to itself is ~0, never negative or NaN.
  x = rng.normal(size=(20, d))
  mu, sigma = frechet.activation_statistics(x)
  assert np.linalg.matrix_rank(sigma) == 19
  self_distance = frechet.frechet_distance(mu, sigma, mu, sigma)
  assert 0.0 <= self_distance < 1e-9 * np.trace(sigma)


def test_monte_carlo_statistics_converge_to_closed_form():
  rng = np.random.default_rng(5)
  d, n = 3, 200_000
  u = _random_rotation(rng, d)
  a, b = np.array([1.0, 0.3, 2.0]), np.array([0.2, 1.5, 2.5])
  mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
  x1 = mu1 + (rng.normal(size=(n, d)) * np.sqrt(a)) @ u.T
  x2 = mu2 + (rng.normal(size=(n, d)) * np.sqrt(b)) @ u.T
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(*frechet.activation_statistics(x1), *frechet.activation_statistics(x2))
  # Standard error of the estimate at this n is ~0.005 on a value of ~2.5.
  assert got == pytest.approx(expected, rel=0.02)


def test_frechet_argument_errors():
  mu, sigma = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match="mu2"):
    frechet.frechet_distance(mu, sigma, np.zeros(4), sigma)
  with pytest.raises(ValueError, match="sigma2"):
    frechet.frechet_distance(mu, sigma, mu, np.eye(4))
  with pytest.raises(ValueError, match="sigma1 must have rank 2"):
    frechet.frechet_distance(mu, np.ones(3), mu, sigma)
  with pytest.raises(ValueError, match="NaN"):
    frechet.frechet_distance(mu, np.full((3, 3), np.nan), mu, sigma)
  with pytest.raises(ValueError, match="eps"):
    frechet.frechet_distance(mu, sigma, mu, sigma, eps=0.0)
  with pytest.raises(ValueError, match="at least 2 rows"):
    frechet.activation_statistics(np.zeros((1, 3)))
  with pytest.raises(ValueError, match="features must have rank 2"):
    frechet.activation_statistics(np.zeros(3))


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = frechet.inception_score(np.full((100, 10), 0.1), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_balanced_one_hot_predictions_is_k():
  for k in (2, 7, 10):
    probs = np.eye(k)[np.arange(20 * k) % k]  # each chunk of 2k rows holds every class twice
    mean, std = frechet.inception_score(probs, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_hand_computed_case():
  # Rows (1, 0) and (1/2, 1/2): p(y) = (3/4, 1/4);
  # KL1 = log(4/3); KL2 = 1/2 log((1/2)/(3/4)) + 1/2 log((1/2)/(1/4)) = 1/2 log(2/3) + 1/2 log 2.
  probs = np.array([[1.0, 0.0], [0.5, 0.5]])
  kl1 = math.log(4 / 3)
  kl2 = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
  mean, std = frechet.inception_score(probs, splits=1)
  assert mean == pytest.approx(math.exp((kl1 + kl2) / 2), rel=1e-12) and std == 0.0
  # Two splits of one row each: every chunk is its own marginal, so each score is exp(0) = 1.
  assert frechet.inception_score(probs, splits=2) == pytest.approx((1.0, 0.0))


def test_inception_score_argument_errors():
  good = np.full((10, 4), 0.25)
  with pytest.raises(ValueError, match="probs must have rank 2"):
    frechet.inception_score(np.full(4, 0.25))
  with pytest.raises(ValueError, match="sum to 1"):
    frechet.inception_score(np.full((10, 4), 0.3), splits=2)
  with pytest.raises(ValueError, match="non-negative"):
    frechet.inception_score(np.array([[1.5, -0.5]]), splits=1)
  for splits in (0, 11, 2.5, True):
    with pytest.raises(ValueError, match="splits"):
      frechet.inception_score(good, splits=splits)
