"""Tests of ddpm_jax.evaluation.inception_net: the FID Inception network's architecture, pools and blocks.

The references are independent of the code under test: a layer table transcribed from the published
architecture (checked against torchvision's documented parameter count) and NumPy pooling and convolution
by explicit windows, on random weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.evaluation import inception_net as net
from ddpm_jax.evaluation import inception_weights

# ---------------------------------------------------------------------------------------------------------
# Architecture and parameter count.

# (in, out, kh, kw) of every conv layer of the FID Inception-v3, transcribed from the published layer list
# (Szegedy et al. 2016, Table 1 / figs. 5-7, as laid out in torchvision's and pytorch-fid's Inception3).


def _mixed_a(cin, pool):
  return [(cin, 64, 1, 1), (cin, 48, 1, 1), (48, 64, 5, 5), (cin, 64, 1, 1), (64, 96, 3, 3),
          (96, 96, 3, 3), (cin, pool, 1, 1)]


def _mixed_c(cin, c7):
  return [(cin, 192, 1, 1), (cin, c7, 1, 1), (c7, c7, 1, 7), (c7, 192, 7, 1), (cin, c7, 1, 1),
          (c7, c7, 7, 1), (c7, c7, 1, 7), (c7, c7, 7, 1), (c7, 192, 1, 7), (cin, 192, 1, 1)]


def _mixed_e(cin):
  return [(cin, 320, 1, 1), (cin, 384, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1), (cin, 448, 1, 1),
          (448, 384, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1), (cin, 192, 1, 1)]


_CONVS = ([(3, 32, 3, 3), (32, 32, 3, 3), (32, 64, 3, 3), (64, 80, 1, 1), (80, 192, 3, 3)]
          + _mixed_a(192, 32) + _mixed_a(256, 64) + _mixed_a(288, 64)
          + [(288, 384, 3, 3), (288, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3)]          # Mixed_6a
          + _mixed_c(768, 128) + _mixed_c(768, 160) + _mixed_c(768, 160) + _mixed_c(768, 192)
          + [(768, 192, 1, 1), (192, 320, 3, 3), (768, 192, 1, 1), (192, 192, 1, 7),      # Mixed_7a
             (192, 192, 7, 1), (192, 192, 3, 3)]
          + _mixed_e(1280) + _mixed_e(2048))


def test_param_count_matches_the_published_architecture():
  conv_weights = sum(i * o * kh * kw for i, o, kh, kw in _CONVS)
  bn_channels = sum(o for _, o, _, _ in _CONVS)
  # Cross-check of the table: torchvision's inception_v3 (1000 classes, with the auxiliary classifier:
  # 1×1 768→128, 5×5 128→768, each with BN, and a 768→1000 linear layer) documents 27,161,264 parameters
  # (pytorch.org/vision, Inception_V3_Weights.IMAGENET1K_V1, num_params).
  aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
  assert conv_weights + 2 * bn_channels + (2048 * 1000 + 1000) + aux == 27_161_264
  # FID Inception: no aux classifier, a 2048→1008 linear layer; 23,850,960 trainable PyTorch parameters.
  torch_trainable = conv_weights + 2 * bn_channels + 2048 * 1008 + 1008
  assert torch_trainable == 23_850_960
  # Folding BN leaves one bias per channel in place of (γ, β): 23,833,744 parameters in 94 conv + 1 fc.
  shapes = net.param_shapes()
  assert len(_CONVS) == 94 and len(shapes) == 2 * 94 + 2
  assert sum(int(np.prod(s)) for s in shapes.values()) == torch_trainable - bn_channels == 23_833_744
  assert sorted(s for s in shapes.values() if len(s) == 4) == sorted(
      (kh, kw, i, o) for i, o, kh, kw in _CONVS)
  assert shapes["fc/kernel"] == (2048, 1008) and shapes["fc/bias"] == (1008,)
  sd = inception_weights.state_dict_shapes()
  assert len(sd) == 94 * 5 + 2
  assert sd["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
  assert sd["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert sd["fc.weight"] == (1008, 2048)


def test_pools_count_only_in_image_inputs():
  x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
  avg = np.zeros_like(x)
  mx = np.zeros_like(x)
  for i in range(5):
    for j in range(4):
      window = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :]
      avg[:, i, j] = window.mean(axis=(1, 2))     # divides by the in-image count (4 at corners, 6, 9)
      mx[:, i, j] = window.max(axis=(1, 2))
  np.testing.assert_allclose(np.asarray(net.avg_pool_3x3_same(jnp.asarray(x))), avg, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(net.max_pool_3x3_same(jnp.asarray(x))), mx)


def _np_conv_relu(x, kernel, bias):
  """float64 NHWC conv, stride 1, symmetric 'same' padding (kh//2, kw//2), + bias, then ReLU."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = x.shape[1:3]
  y = sum(np.einsum("nhwi,io->nhwo", xp[:, a:a + h, b:b + w], kernel[a, b])
          for a in range(kh) for b in range(kw))
  return np.maximum(y + bias, 0.0)


def _np_pool(x, reduce):
  out = np.zeros_like(x)
  for i in range(x.shape[1]):
    for j in range(x.shape[2]):
      out[:, i, j] = reduce(x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2], axis=(1, 2))
  return out


@pytest.mark.parametrize("block", ["A", "E_max"])
def test_blocks_match_numpy_wiring(block):
  """Branch order, kernel shapes, paddings and pool type of a 35×35 (A) and the last 8×8 (E) block,
  against a NumPy transcription of pytorch-fid's FIDInceptionA / FIDInceptionE_2 forward passes."""
  module = net.InceptionA(pool_features=32) if block == "A" else net.InceptionE(pool="max")
  x = np.random.default_rng(8).normal(size=(1, 5, 4, 8))
  shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, jnp.float32))
  rng = np.random.default_rng(9)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3, shapes)
  got = np.asarray(jax.jit(module.apply)(params, x.astype(np.float32)), np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
  c = lambda h, name: _np_conv_relu(h, p[name]["kernel"], p[name]["bias"])  # noqa: E731
  if block == "A":
    want = np.concatenate([
        c(x, "branch1x1"),
        c(c(x, "branch5x5_1"), "branch5x5_2"),
        c(c(c(x, "branch3x3dbl_1"), "branch3x3dbl_2"), "branch3x3dbl_3"),
        c(_np_pool(x, np.mean), "branch_pool")], axis=-1)
  else:
    b3 = c(x, "branch3x3_1")
    bd = c(c(x, "branch3x3dbl_1"), "branch3x3dbl_2")
    want = np.concatenate([
        c(x, "branch1x1"),
        c(b3, "branch3x3_2a"), c(b3, "branch3x3_2b"),
        c(bd, "branch3x3dbl_3a"), c(bd, "branch3x3dbl_3b"),
        c(_np_pool(x, np.max), "branch_pool")], axis=-1)
  assert got.shape == want.shape == ((1, 5, 4, 256) if block == "A" else (1, 5, 4, 2048))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

