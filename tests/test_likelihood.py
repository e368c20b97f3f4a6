"""likelihood.py: the `--mode bpd` report's aggregation against a hand computation."""

import math

import numpy as np
import pytest

from ddpm_jax import likelihood


def test_bound_report_against_hand_computation():
  rng = np.random.default_rng(0)
  n, T = 7, 5
  terms = rng.uniform(0.0, 1.0, (n, T))
  priors = rng.uniform(0.0, 1e-3, n)
  mse = rng.uniform(0.0, 0.5, (n, T))
  totals = terms.sum(1) + priors
  r = likelihood.bound_report(terms.sum(0), (terms ** 2).sum(0), mse.sum(0), (np.sqrt(mse) * 127.5).sum(0),
                              totals, priors)
  mean_terms = terms.mean(0)
  np.testing.assert_allclose(r["terms_bpd"], mean_terms)
  np.testing.assert_allclose(r["terms_bpd_stderr"], terms.std(0, ddof=1) / math.sqrt(n))
  np.testing.assert_allclose(r["total_bpd_stderr"], totals.std(ddof=1) / math.sqrt(n))
  assert r["total_bpd"] == pytest.approx(r["prior_bpd"] + r["sum_of_terms_bpd"], rel=1e-12)
  # Holding x_t costs the prior plus every term above t; x_{T-1} costs the prior alone.
  for t in range(T):
    assert r["rate_bpd"][t] == pytest.approx(priors.mean() + mean_terms[t + 1:].sum(), rel=1e-12)
  assert r["decoder_nll_bpd"] == pytest.approx(mean_terms[0])
  np.testing.assert_allclose(r["distortion_rmse"], (np.sqrt(mse) * 127.5).mean(0))
