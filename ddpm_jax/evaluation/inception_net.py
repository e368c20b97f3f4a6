"""The standard "FID Inception" network in JAX (Flax Linen, NHWC), BatchNorm folded into its convolutions.

The network is the Inception-v3 frozen in TensorFlow's graph `classify_image_graph_def.pb` of
`inception-2015-12-05.tgz`: the graph behind the reference FID code (TTUR, Heusel et al. 2017), the reference
Inception Score code (openai/improved-gan, Salimans et al. 2016) and most FID/IS numbers of the GAN and early
diffusion literature (DDPM's evaluation code is a NumPy port of tfgan's metrics on a TF Inception graph of
this date, with 2048-d pool features and 1008 logits). Its weights are read from pytorch-fid's port of that
graph (`inception_weights`), which its author verified against the TF graph to ~1e-8 mean absolute error on
identical inputs. It differs from torchvision's Inception-v3 in four places:

- 1008 output classes (the TF graph's, not ImageNet's 1000), and no auxiliary classifier;
- the 3×3 average pools in the branch_pool of Mixed_5b/5c/5d (A blocks), 6b–6e (C blocks) and 7b (first E
  block) divide by the number of *unpadded* inputs in the window (TF's SAME average pool; PyTorch's
  `count_include_pad=False`);
- Mixed_7c's branch_pool is a 3×3 *max* pool (stride 1, SAME), not an average pool;
- BatchNorm has eps = 1e-3. Here it is folded into the convolutions (inference mode):
      conv(x; W) · γ/√(σ²+ε) + (β − μ·γ/√(σ²+ε)) = conv(x; W·s) + b,   s = γ/√(σ²+ε),   b = β − μ·s,
  so every conv layer carries a kernel [kh, kw, in, out] (HWIO) and a bias [out].

Outputs, per image: the 2048-d `pool_3` features (global mean of Mixed_7c, the FID features) and the 1008
logits of the final linear layer.

The FID Inception code is split by job: this module (the network), `inception_preprocess` (uint8 images →
network input), `inception_weights` (weights files → params) and `inception` (features in batches, cached
reference statistics, FID@N / IS@N).
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3


def _pad(kernel_size):
  """Symmetric 'same' padding of a stride-1 conv with odd kernel: ((kh//2, kh//2), (kw//2, kw//2))."""
  return tuple((k // 2, k // 2) for k in kernel_size)


def avg_pool_3x3_same(x):
  """3×3 stride-1 average pool, padding 1, averaging only over the in-image inputs of each window.

  This is TF's SAME average pool (PyTorch's count_include_pad=False): a corner output averages 4 inputs,
  an edge output 6 and an interior output 9.
  """
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x):
  """3×3 stride-1 max pool, padding 1 (padding never wins: it is −inf)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
  """Base of the Inception blocks: `self.conv(x, name, out, kernel, ...)` is conv (BN folded) + ReLU."""
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  def conv(self, x, name, features, kernel_size, *, strides=(1, 1), padding=None):
    padding = _pad(kernel_size) if padding is None else padding
    y = nn.Conv(features, kernel_size, strides=strides, padding=padding, use_bias=True,
                precision=self.precision, name=name)(x)
    return nn.relu(y)


class InceptionA(_Block):
  """35×35 block (Mixed_5b/c/d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool(no pad count)→1×1."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(x, "branch1x1", 64, (1, 1))
    b5 = self.conv(x, "branch5x5_1", 48, (1, 1))
    b5 = self.conv(b5, "branch5x5_2", 64, (5, 5))
    b3 = self.conv(x, "branch3x3dbl_1", 64, (1, 1))
    b3 = self.conv(b3, "branch3x3dbl_2", 96, (3, 3))
    b3 = self.conv(b3, "branch3x3dbl_3", 96, (3, 3))
    bp = self.conv(avg_pool_3x3_same(x), "branch_pool", self.pool_features, (1, 1))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """35→17 reduction (Mixed_6a): 3×3/2 | 1×1→3×3→3×3/2 | max-pool 3×3/2 (all VALID)."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(x, "branch3x3", 384, (3, 3), strides=(2, 2), padding="VALID")
    bd = self.conv(x, "branch3x3dbl_1", 64, (1, 1))
    bd = self.conv(bd, "branch3x3dbl_2", 96, (3, 3))
    bd = self.conv(bd, "branch3x3dbl_3", 96, (3, 3), strides=(2, 2), padding="VALID")
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
  """17×17 block (Mixed_6b–6e) with factorised 7×7 convs; avg-pool branch counts only unpadded inputs."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = self.conv(x, "branch1x1", 192, (1, 1))
    b7 = self.conv(x, "branch7x7_1", c7, (1, 1))
    b7 = self.conv(b7, "branch7x7_2", c7, (1, 7))
    b7 = self.conv(b7, "branch7x7_3", 192, (7, 1))
    bd = self.conv(x, "branch7x7dbl_1", c7, (1, 1))
    bd = self.conv(bd, "branch7x7dbl_2", c7, (7, 1))
    bd = self.conv(bd, "branch7x7dbl_3", c7, (1, 7))
    bd = self.conv(bd, "branch7x7dbl_4", c7, (7, 1))
    bd = self.conv(bd, "branch7x7dbl_5", 192, (1, 7))
    bp = self.conv(avg_pool_3x3_same(x), "branch_pool", 192, (1, 1))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """17→8 reduction (Mixed_7a): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool 3×3/2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(x, "branch3x3_1", 192, (1, 1))
    b3 = self.conv(b3, "branch3x3_2", 320, (3, 3), strides=(2, 2), padding="VALID")
    b7 = self.conv(x, "branch7x7x3_1", 192, (1, 1))
    b7 = self.conv(b7, "branch7x7x3_2", 192, (1, 7))
    b7 = self.conv(b7, "branch7x7x3_3", 192, (7, 1))
    b7 = self.conv(b7, "branch7x7x3_4", 192, (3, 3), strides=(2, 2), padding="VALID")
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
  """8×8 block (Mixed_7b: avg-pool branch, no pad count; Mixed_7c: max-pool branch, as in the TF graph)."""
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(x, "branch1x1", 320, (1, 1))
    b3 = self.conv(x, "branch3x3_1", 384, (1, 1))
    b3 = jnp.concatenate([self.conv(b3, "branch3x3_2a", 384, (1, 3)),
                          self.conv(b3, "branch3x3_2b", 384, (3, 1))], axis=-1)
    bd = self.conv(x, "branch3x3dbl_1", 448, (1, 1))
    bd = self.conv(bd, "branch3x3dbl_2", 384, (3, 3))
    bd = jnp.concatenate([self.conv(bd, "branch3x3dbl_3a", 384, (1, 3)),
                          self.conv(bd, "branch3x3dbl_3b", 384, (3, 1))], axis=-1)
    pooled = avg_pool_3x3_same(x) if self.pool == "avg" else max_pool_3x3_same(x)
    bp = self.conv(pooled, "branch_pool", 192, (1, 1))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class _Logits(nn.Module):
  """The final linear layer, pool3 · W (+ b): kernel [2048, 1008], bias [1008]."""
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, *, use_bias):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (FEATURE_DIM, NUM_LOGITS))
    bias = self.param("bias", nn.initializers.zeros, (NUM_LOGITS,))
    y = jnp.dot(x, kernel, precision=self.precision)
    return y + bias if use_bias else y


class FIDInceptionV3(_Block):
  """The FID Inception-v3 (TF graph 2015-12-05) with BatchNorm folded, NHWC.

  Input [N, 299, 299, 3] float32 as produced by `inception_preprocess.preprocess_images` (≈[−1, 1]).
  `__call__` returns (pool3 [N, 2048], logits [N, 1008]), both float32; `logits_bias` chooses pool3·W + b
  (the graph's `softmax/logits`) or pool3·W (what the reference IS code uses). Parameter names follow the PyTorch
  state dict (`Conv2d_1a_3x3`, `Mixed_5b/branch1x1`, ..., `fc`), each conv holding `kernel` (HWIO) and
  `bias`. Convolutions run at `precision` (HIGHEST by default, so that TPUs and TF32-capable GPUs do not
  drop to bf16/TF32 passes, which would perturb the features).
  """

  @nn.compact
  def __call__(self, x, *, logits_bias=True):
    chex.assert_rank(x, 4)
    chex.assert_shape(x, (None, INPUT_SIZE, INPUT_SIZE, 3))
    p = self.precision
    conv = self.conv
    h = conv(x, "Conv2d_1a_3x3", 32, (3, 3), strides=(2, 2), padding="VALID")   # 149×149×32
    h = conv(h, "Conv2d_2a_3x3", 32, (3, 3), padding="VALID")                   # 147×147×32
    h = conv(h, "Conv2d_2b_3x3", 64, (3, 3))                                    # 147×147×64
    h = _max_pool_3x3_s2(h)                                                     # 73×73×64
    h = conv(h, "Conv2d_3b_1x1", 80, (1, 1))                                    # 73×73×80
    h = conv(h, "Conv2d_4a_3x3", 192, (3, 3), padding="VALID")                  # 71×71×192
    h = _max_pool_3x3_s2(h)                                                     # 35×35×192
    h = InceptionA(precision=p, pool_features=32, name="Mixed_5b")(h)           # 35×35×256
    h = InceptionA(precision=p, pool_features=64, name="Mixed_5c")(h)           # 35×35×288
    h = InceptionA(precision=p, pool_features=64, name="Mixed_5d")(h)           # 35×35×288
    h = InceptionB(precision=p, name="Mixed_6a")(h)                             # 17×17×768
    h = InceptionC(precision=p, channels_7x7=128, name="Mixed_6b")(h)
    h = InceptionC(precision=p, channels_7x7=160, name="Mixed_6c")(h)
    h = InceptionC(precision=p, channels_7x7=160, name="Mixed_6d")(h)
    h = InceptionC(precision=p, channels_7x7=192, name="Mixed_6e")(h)           # 17×17×768
    h = InceptionD(precision=p, name="Mixed_7a")(h)                             # 8×8×1280
    h = InceptionE(precision=p, pool="avg", name="Mixed_7b")(h)                 # 8×8×2048
    h = InceptionE(precision=p, pool="max", name="Mixed_7c")(h)                 # 8×8×2048
    chex.assert_shape(h, (x.shape[0], 8, 8, FEATURE_DIM))
    pool3 = jnp.mean(h, axis=(1, 2))
    logits = _Logits(precision=p, name="fc")(pool3, use_bias=logits_bias)
    chex.assert_shape(pool3, (x.shape[0], FEATURE_DIM))
    chex.assert_shape(logits, (x.shape[0], NUM_LOGITS))
    return pool3, logits


# ----------------------------------------------------------------------------------------------------------
# Parameters.


@functools.cache
def param_shapes():
  """{'/'-joined Flax name: shape} of `FIDInceptionV3`'s folded parameters (abstract init, no compute)."""
  abstract = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = traverse_util.flatten_dict(abstract["params"], sep="/")
  return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def count_params(params):
  """Total number of scalars in a params tree."""
  return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))
