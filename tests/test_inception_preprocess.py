"""Tests of ddpm_jax.evaluation.inception_preprocess: the "tf1" and "pytorch_fid" resizes and scalings.

The reference is a float64 interpolation-matrix form of the bilinear resizes, independent of the code under
test.
"""

import numpy as np
import pytest

from ddpm_jax.evaluation import inception_preprocess as pre

# ---------------------------------------------------------------------------------------------------------
# Preprocessing against a float64 interpolation-matrix reference.


def _interp_matrix(n_in, n_out, half_pixel):
  """[n_out, n_in] float64 bilinear weights: row i puts (1-w, w) on inputs floor(c), min(floor(c)+1, n-1)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    c = (i + 0.5) * n_in / n_out - 0.5 if half_pixel else i * n_in / n_out
    c = max(c, 0.0)
    lo = min(int(np.floor(c)), n_in - 1)
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1.0 - (c - lo)
    m[i, hi] += c - lo
  return m


def _reference_preprocess(images, preprocessing):
  x = images.astype(np.float64)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  mh = _interp_matrix(x.shape[1], 299, preprocessing == "pytorch_fid")
  mw = _interp_matrix(x.shape[2], 299, preprocessing == "pytorch_fid")
  y = np.einsum("ph,nhwc->npwc", mh, x, optimize=True)
  y = np.einsum("npwc,qw->npqc", y, mw, optimize=True)
  return (y - 128.0) / 128.0 if preprocessing == "tf1" else 2.0 * (y / 255.0) - 1.0


@pytest.mark.parametrize("preprocessing", ["tf1", "pytorch_fid"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 7, 5, 1), (1, 400, 301, 3)])
def test_preprocessing_matches_float64_reference(preprocessing, shape):
  images = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
  got = np.asarray(pre.preprocess_images(images, preprocessing=preprocessing))
  assert got.dtype == np.float32 and got.shape == (shape[0], 299, 299, 3)
  # Both reference kernels (and this code) compute the scale in/out and the coordinates c in float32, so c
  # is off the float64 value by up to ~2.5·c·eps32; the pixel slope in output units is at most 2 (255/128
  # or 2·255/255), so values may differ by ~5·c·eps32, plus float32 rounding of the values themselves.
  atol = 5 * max(shape[1:3]) * np.finfo(np.float32).eps + 2e-6
  np.testing.assert_allclose(got, _reference_preprocess(images, preprocessing), rtol=0, atol=atol)


def test_preprocessing_edge_facts():
  images = np.random.default_rng(3).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
  tf1 = np.asarray(pre.preprocess_images(images, preprocessing="tf1"))
  pt = np.asarray(pre.preprocess_images(images, preprocessing="pytorch_fid"))
  x = images.astype(np.float64)
  # TF 1.x legacy map: output 0 samples input 0 exactly; the last output row (c = 298·32/299 ≈ 31.9)
  # replicates the last input row. Its range is [−1, 127/128].
  np.testing.assert_allclose(tf1[0, 0, 0], (x[0, 0, 0] - 128) / 128, atol=1e-6)
  np.testing.assert_allclose(tf1[0, -1, 0], (x[0, -1, 0] - 128) / 128, atol=1e-6)
  # Half-pixel map: output 0 has c = 0.5·32/299 − 0.5 < 0, clamped to input 0.
  np.testing.assert_allclose(pt[0, 0, 0], x[0, 0, 0] / 127.5 - 1, atol=1e-6)
  assert not np.allclose(tf1, pt, atol=1e-2)  # the two standards really differ
  # 299×299 input: both resizes are the identity.
  big = np.random.default_rng(4).integers(0, 256, size=(1, 299, 299, 3), dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(pre.preprocess_images(big)),
                                ((big.astype(np.float32) - 128) / 128))
  np.testing.assert_allclose(np.asarray(pre.preprocess_images(big, preprocessing="pytorch_fid")),
                             big / 127.5 - 1, atol=1e-6)
  # Grey images are repeated to three channels.
  grey = np.asarray(pre.preprocess_images(images[..., :1]))
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  with pytest.raises(ValueError, match="uint8"):
    pre.preprocess_images(images.astype(np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    pre.preprocess_images(images[..., :2])
  with pytest.raises(ValueError, match="preprocessing must be one of"):
    pre.preprocess_images(images, preprocessing="bicubic")
