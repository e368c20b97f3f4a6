"""FID and Inception Score on the standard "FID Inception" network, in JAX (Flax Linen, NHWC).

The network is the Inception-v3 frozen in TensorFlow's graph `classify_image_graph_def.pb` of
`inception-2015-12-05.tgz`: the graph behind the reference FID code (TTUR, Heusel et al. 2017), the reference
Inception Score code (openai/improved-gan, Salimans et al. 2016) and most FID/IS numbers of the GAN and early
diffusion literature (DDPM's evaluation code is a NumPy port of tfgan's metrics on a TF Inception graph of
this date, with 2048-d pool features and 1008 logits). Its weights are read from pytorch-fid's port of that
graph, `pt_inception-2015-12-05-6726825d.pth` (see `FID_WEIGHTS_URL`), which its author verified against the
TF graph to ~1e-8 mean absolute error on identical inputs. It differs from torchvision's Inception-v3 in four places:

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

**Preprocessing** (`preprocess_images`) takes uint8 images [N, H, W, 3] (or [N, H, W, 1], repeated to three
channels as an RGB conversion of a grey image would) and produces [N, 299, 299, 3] float32 in two
flavours:

- `"tf1"` (default) — what the TF graph does to what TTUR / improved-gan feed it (the uint8 values as float
  into `ExpandDims:0`): `ResizeBilinear` to 299×299 with TF 1.x's legacy coordinate map (no half-pixel
  centres, align_corners=False): output pixel i samples input coordinate  i·(in/out); then the graph's
  `(x − 128) · (1/128)`, i.e. values in [−1, 127/128].
- `"pytorch_fid"` — pytorch-fid: `x/255`, `F.interpolate(mode="bilinear", align_corners=False)`, which uses
  half-pixel centres: output pixel i samples  max((i + ½)·(in/out) − ½, 0); then `2x − 1`, i.e. [−1, 1].

Both interpolate linearly between the samples floor(c) and min(floor(c)+1, in−1). The two maps differ by
c_tf1 − c_pytorch = (1 − in/out)/2, ≈ 0.45 input pixels for 32→299: the "tf1" image is the half-pixel one
moved up and left by that much, its last rows and columns replicating the edge pixels. So the two feed the
network slightly different images (and differently scaled ones: 1/128 vs 2/255 per level); pytorch-fid's
README reports FIDs ~0.08 apart from TTUR's in one test. For numbers comparable with the TF-era literature
use `"tf1"`, and always state which one was used (the statistics cache records it).

**Inception Score.** The reference IS code (openai/improved-gan `inception_score/model.py`) does *not* use
the graph's `softmax:0`: it takes pool_3 and multiplies by the weight matrix of `softmax/logits/MatMul`,
**without the bias**, and takes the softmax over **all 1008** outputs (none dropped, although only 1000 are
ImageNet classes). torch-fidelity reproduces this as its default `logits_unbiased`. So
`inception_features_and_logits(..., logits_bias=False)` (the default) returns  pool3 · W ; pass
`logits_bias=True` for the graph's own logits  pool3 · W + b.

**Weights** come only from a local file (nothing is downloaded): the `.pth` above — read without PyTorch by a
restricted unpickler that knows only the handful of globals a state dict needs — or a `.npz` with the same
state-dict keys (`python -m ddpm_jax.evaluation.inception convert in.pth out.npz` writes one).
"""

import argparse
import collections
import functools
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import zipfile

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ddpm_jax.evaluation import frechet

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
PREPROCESSINGS = ("tf1", "pytorch_fid")
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   f"{FID_WEIGHTS_FILE}")
# First hex digits of the sha256 of FID_WEIGHTS_FILE (the suffix in its name, as torch.hub names files);
# `convert` notes a mismatch but does not refuse the file (keys and shapes are what is checked).
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
_STATISTICS_FORMAT = 1


class InceptionWeightsError(RuntimeError):
  """The Inception weights file is missing, unreadable, unsafe, or does not fit `FIDInceptionV3`."""


# ----------------------------------------------------------------------------------------------------------
# Network.


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

  Input [N, 299, 299, 3] float32 as produced by `preprocess_images` (≈[−1, 1]). `__call__` returns
  (pool3 [N, 2048], logits [N, 1008]), both float32; `logits_bias` chooses pool3·W + b (the graph's
  `softmax/logits`) or pool3·W (what the reference IS code uses). Parameter names follow the PyTorch
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
# Preprocessing.


def bilinear_source_coordinates(in_size, out_size, *, preprocessing):
  """Per output index: (lower input index, upper input index, weight of the upper one), float32.

  "tf1" (TF 1.x ResizeBilinear, align_corners=False, no half-pixel centres): c = i · (in/out).
  "pytorch_fid" (F.interpolate bilinear, align_corners=False): c = max((i + ½) · (in/out) − ½, 0).
  In both, lower = floor(c), upper = min(lower + 1, in − 1), weight = c − lower; the scale in/out and
  the coordinates are float32, as in both reference kernels. Computed once per shape at trace time.
  """
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
  scale = np.float32(in_size) / np.float32(out_size)
  i = np.arange(out_size, dtype=np.float32)
  if preprocessing == "tf1":
    c = i * scale
  else:
    c = np.maximum((i + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
  lower = np.minimum(np.floor(c), in_size - 1).astype(np.int32)
  upper = np.minimum(lower + 1, in_size - 1).astype(np.int32)
  weight = (c - lower).astype(np.float32)
  return lower, upper, weight


def _check_uint8_images(images):
  """Shape/dtype check shared by the host and traced paths (shapes and dtypes are static under jit)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or min(images.shape[:3]) < 1:
    raise ValueError(f"images must have shape [N, H, W, 3] or [N, H, W, 1] (NHWC, N, H, W ≥ 1), got "
                     f"{tuple(images.shape)}")
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}; quantise model "
                     f"samples first, e.g. np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8), as "
                     f"the reference protocol scores saved 8-bit images")


def preprocess_images(images, *, preprocessing="tf1", size=INPUT_SIZE):
  """uint8 [N, H, W, 3|1] → float32 [N, size, size, 3], the network input of the chosen reference.

  A one-channel image is repeated to three channels (what an RGB conversion of a grey image gives, e.g.
  PIL's `convert("RGB")` in pytorch-fid). Then, per `preprocessing` (see the module docstring):

  - "tf1":          y = (bilinear_tf1(x) − 128) · 2⁻⁷                    ∈ [−1, 127/128]
  - "pytorch_fid":  y = 2 · bilinear_half_pixel(x / 255) − 1             ∈ [−1, 1]

  where each bilinear resize interpolates along W first and then along H, as TF's kernel does:
  top = a + (b − a)·wx, bottom = c + (d − c)·wx, out = top + (bottom − top)·wy ("tf1"), or with PyTorch's
  weight form (1−w)·a + w·b ("pytorch_fid"). Pure jnp, jit-able (the index tables are trace-time constants).
  """
  _check_uint8_images(images)
  n, h, w, c = images.shape
  x = jnp.asarray(images).astype(jnp.float32)
  if c == 1:
    x = jnp.broadcast_to(x, (n, h, w, 3))
  if preprocessing == "pytorch_fid":
    x = x / 255.0
  ylo, yhi, wy = bilinear_source_coordinates(h, size, preprocessing=preprocessing)
  xlo, xhi, wx = bilinear_source_coordinates(w, size, preprocessing=preprocessing)
  wx = jnp.asarray(wx)[None, None, :, None]
  wy = jnp.asarray(wy)[None, :, None, None]
  left, right = jnp.take(x, xlo, axis=2), jnp.take(x, xhi, axis=2)
  if preprocessing == "tf1":
    x = left + (right - left) * wx
    top, bottom = jnp.take(x, ylo, axis=1), jnp.take(x, yhi, axis=1)
    x = top + (bottom - top) * wy
    x = (x - 128.0) * (1.0 / 128.0)
  else:
    x = (1.0 - wx) * left + wx * right
    top, bottom = jnp.take(x, ylo, axis=1), jnp.take(x, yhi, axis=1)
    x = (1.0 - wy) * top + wy * bottom
    x = 2.0 * x - 1.0
  chex.assert_shape(x, (n, size, size, 3))
  return x


# ----------------------------------------------------------------------------------------------------------
# Parameters: shapes, the PyTorch state-dict layout, BatchNorm folding.


@functools.cache
def param_shapes():
  """{'/'-joined Flax name: shape} of `FIDInceptionV3`'s folded parameters (abstract init, no compute)."""
  abstract = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = traverse_util.flatten_dict(abstract["params"], sep="/")
  return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def _conv_layers():
  """[(flax prefix 'Mixed_5b/branch1x1', torch prefix 'Mixed_5b.branch1x1', HWIO kernel shape)]."""
  layers = []
  for name, shape in param_shapes().items():
    if name.endswith("/kernel") and not name.startswith("fc/"):
      prefix = name[:-len("/kernel")]
      layers.append((prefix, prefix.replace("/", "."), shape))
  return layers


@functools.cache
def state_dict_shapes():
  """{key: shape} of the PyTorch state dict of pytorch-fid's FID Inception (BatchNorm not folded).

  Per conv layer `P`: `P.conv.weight` [out, in, kh, kw] (OIHW) and `P.bn.{weight, bias, running_mean,
  running_var}` [out]; plus `fc.weight` [1008, 2048] and `fc.bias` [1008]. A `P.bn.num_batches_tracked`
  scalar, which newer PyTorch versions save, is accepted and ignored.
  """
  shapes = {}
  for _, torch_prefix, (kh, kw, cin, cout) in _conv_layers():
    shapes[f"{torch_prefix}.conv.weight"] = (cout, cin, kh, kw)
    for field in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{torch_prefix}.bn.{field}"] = (cout,)
  shapes["fc.weight"] = (NUM_LOGITS, FEATURE_DIM)
  shapes["fc.bias"] = (NUM_LOGITS,)
  return shapes


def params_from_state_dict(state_dict, *, source="state dict"):
  """Folds a PyTorch FID-Inception state dict into `FIDInceptionV3` variables {'params': ...}.

  For each conv layer, with s = γ / √(σ² + 1e-3):  kernel = transpose(W, OIHW→HWIO) · s,
  bias = β − μ · s (computed in float64, stored float32). fc: kernel = weightᵀ, bias = bias.

  Raises:
    InceptionWeightsError: naming `source`, if keys are missing or unexpected, or a shape is wrong, or a
      value is not finite.
  """
  expected = state_dict_shapes()
  keys = {k for k in state_dict if not k.endswith(".bn.num_batches_tracked")}
  missing = sorted(set(expected) - keys)
  unexpected = sorted(keys - set(expected))
  if missing or unexpected:
    hint = (" (AuxLogits.* keys: these look like torchvision's Inception weights, which are not the FID "
            "weights)" if any(k.startswith("AuxLogits.") for k in unexpected) else "")
    raise InceptionWeightsError(
        f"{source} does not match the FID Inception-v3 state dict: {len(missing)} missing keys "
        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
        f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}{hint}; expected pytorch-fid's "
        f"{FID_WEIGHTS_FILE} ({FID_WEIGHTS_URL})")
  arrays = {}
  for key, shape in expected.items():
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != shape:
      raise InceptionWeightsError(f"{source}: {key!r} has shape {tuple(value.shape)}, expected {shape}")
    if not np.issubdtype(value.dtype, np.floating):
      raise InceptionWeightsError(f"{source}: {key!r} has dtype {value.dtype}, expected floating point")
    value = value.astype(np.float64)
    if not np.all(np.isfinite(value)):
      raise InceptionWeightsError(f"{source}: {key!r} contains NaN or infinite values")
    arrays[key] = value
  flat = {}
  for flax_prefix, p, _ in _conv_layers():
    scale = arrays[f"{p}.bn.weight"] / np.sqrt(arrays[f"{p}.bn.running_var"] + BN_EPS)
    if not np.all(np.isfinite(scale)):
      raise InceptionWeightsError(f"{source}: {p}.bn.running_var + {BN_EPS} must be > 0")
    kernel = np.transpose(arrays[f"{p}.conv.weight"], (2, 3, 1, 0)) * scale
    flat[f"{flax_prefix}/kernel"] = kernel.astype(np.float32)
    flat[f"{flax_prefix}/bias"] = (arrays[f"{p}.bn.bias"] - arrays[f"{p}.bn.running_mean"] * scale
                                   ).astype(np.float32)
  flat["fc/kernel"] = arrays["fc.weight"].T.astype(np.float32)
  flat["fc/bias"] = arrays["fc.bias"].astype(np.float32)
  for name, shape in param_shapes().items():
    chex.assert_shape(flat[name], shape)
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}


def count_params(params):
  """Total number of scalars in a params tree."""
  return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------------------------------------
# Reading PyTorch `.pth` files without PyTorch.
#
# torch.save writes one of two layouts, both around a pickle whose tensors are rebuilt by
# `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])`
# and whose storages are persistent ids ('storage', torch.<T>Storage, key, location, numel[, view]):
# - zip (torch ≥ 1.6): `<prefix>/data.pkl` + raw little-endian storages `<prefix>/data/<key>`
#   (+ `<prefix>/byteorder`, "little"/"big", in newer versions);
# - legacy (earlier; older released weights such as torchvision's 2017-2019 files): a stream of pickles —
#   magic number, protocol version 1001, sys_info, the object, the sorted list of storage keys — followed by
#   each storage as int64 numel + raw bytes.
# The unpickler below resolves only the globals a state dict needs and refuses everything else, so a
# hostile file cannot run code.

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
    "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "b1",
}


class _StorageType:
  """Stands in for a `torch.<T>Storage` class in a persistent id; not callable."""

  def __init__(self, name):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  """One storage of the file: dtype, element count, and (once read) its data as a 1-D array."""

  def __init__(self, key, dtype, numel):
    self.key, self.dtype, self.numel, self.data = key, dtype, numel, None


class _PendingTensor:
  """A tensor whose storage may not be read yet (legacy files store the data after the pickle)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """Replacement for torch._utils._rebuild_tensor(_v2): extra args (requires_grad, hooks) are ignored."""
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
  return _PendingTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                        tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for state dicts: resolves only OrderedDict, the tensor-rebuild functions and Storage types."""

  def __init__(self, file, *, source, storages=None):
    super().__init__(file)
    self._source = source
    self._storages = storages

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name} from {self._source}: a weights file may only reference "
        f"collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and torch.<T>Storage")

  def persistent_load(self, pid):
    if self._storages is None:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in {self._source}")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in {self._source}")
    _, storage_type, key, _, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"persistent id {pid!r} in {self._source} names no Storage type")
    if len(pid) == 6 and pid[5] is not None:
      raise pickle.UnpicklingError(f"storage views (view metadata {pid[5]!r}) in {self._source} are not "
                                   f"supported")
    key = str(key)
    ref = self._storages.get(key)
    if ref is None:
      ref = self._storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
    elif ref.dtype != storage_type.dtype:
      raise pickle.UnpicklingError(f"storage {key} of {self._source} is used with two dtypes")
    return ref


def _materialize(obj, source):
  """Replaces every _PendingTensor in nested dicts/lists/tuples by a NumPy array (a copy)."""
  if isinstance(obj, _PendingTensor):
    ref = obj.storage
    if ref.data is None:
      raise InceptionWeightsError(f"{source}: storage {ref.key} has no data")
    dtype = ref.data.dtype
    if any(n < 0 for n in obj.size) or any(s < 0 for s in obj.stride) or obj.offset < 0:
      raise InceptionWeightsError(f"{source}: invalid tensor layout size={obj.size} stride={obj.stride}")
    if len(obj.size) != len(obj.stride):
      raise InceptionWeightsError(f"{source}: size {obj.size} and stride {obj.stride} differ in rank")
    if 0 in obj.size:
      return np.zeros(obj.size, dtype.newbyteorder("="))
    last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
    if last >= ref.data.shape[0]:
      raise InceptionWeightsError(f"{source}: tensor (offset {obj.offset}, size {obj.size}, stride "
                                  f"{obj.stride}) overruns storage {ref.key} of {ref.data.shape[0]} "
                                  f"elements")
    view = np.lib.stride_tricks.as_strided(
        ref.data[obj.offset:], shape=obj.size, strides=[s * dtype.itemsize for s in obj.stride],
        writeable=False)
    return np.array(view, dtype=dtype.newbyteorder("="))
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, source)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, source) for v in obj)
  return obj


def _storage_array(ref, raw, byteorder, source):
  need = ref.numel * ref.dtype.itemsize
  if len(raw) < need:
    raise InceptionWeightsError(f"{source}: storage {ref.key} holds {len(raw)} bytes, expected {need}")
  return np.frombuffer(raw, dtype=ref.dtype.newbyteorder(byteorder), count=ref.numel)


def _read_torch_zip(path):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise InceptionWeightsError(f"{path}: a PyTorch zip checkpoint holds one <prefix>/data.pkl, found "
                                  f"{pickles or 'none'}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "<"
    if f"{prefix}byteorder" in names:
      order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise InceptionWeightsError(f"{path}: unknown byteorder record {order!r}")
      byteorder = "<" if order == "little" else ">"
    storages = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), source=path, storages=storages).load()
    for key, ref in storages.items():
      member = f"{prefix}data/{key}"
      if member not in names:
        raise InceptionWeightsError(f"{path}: storage record {member} is missing")
      ref.data = _storage_array(ref, zf.read(member), byteorder, path)
  return obj


def _read_torch_legacy(path):
  with open(path, "rb") as f:
    head = f.read(2)
    f.seek(0)
    if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
      raise InceptionWeightsError(f"{path} is neither a PyTorch checkpoint (zip or legacy) nor a .npz: it "
                                  f"starts with {head!r}, not a pickle protocol header")

    def plain():  # a pickle that may reference no globals and no storages
      return _RestrictedUnpickler(f, source=path).load()

    try:
      magic = plain()
    except Exception as e:  # not a pickle at all
      raise InceptionWeightsError(f"{path} is neither a PyTorch checkpoint (zip or legacy) nor a .npz: "
                                  f"{e!r}") from e
    if magic != _LEGACY_MAGIC:
      raise InceptionWeightsError(f"{path}: not a PyTorch legacy checkpoint (first pickle is {magic!r})")
    protocol = plain()
    if protocol != _LEGACY_PROTOCOL:
      raise InceptionWeightsError(f"{path}: unsupported legacy protocol version {protocol!r}")
    plain()  # sys_info: informative only, as PyTorch writes legacy sizes and data little-endian
    byteorder = "<"
    storages = {}
    obj = _RestrictedUnpickler(f, source=path, storages=storages).load()
    keys = plain()
    if not isinstance(keys, list):
      raise InceptionWeightsError(f"{path}: malformed storage key list {keys!r}")
    for key in keys:
      ref = storages.get(str(key))
      if ref is None:
        raise InceptionWeightsError(f"{path}: storage {key!r} is not referenced by the pickle")
      header = f.read(8)
      if len(header) != 8:
        raise InceptionWeightsError(f"{path}: truncated before storage {key!r}")
      (numel,) = struct.unpack(byteorder + "q", header)
      if numel != ref.numel:
        raise InceptionWeightsError(f"{path}: storage {key!r} has {numel} elements, the pickle says "
                                    f"{ref.numel}")
      ref.data = _storage_array(ref, f.read(numel * ref.dtype.itemsize), byteorder, path)
  return obj


def read_torch_state_dict(path):
  """{key: NumPy array} of a PyTorch state dict saved by `torch.save`, read without PyTorch.

  Handles both the zip layout (PyTorch ≥ 1.6) and the older legacy stream layout. The pickle may
  reference only collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and the torch.<T>Storage
  types (float16/32/64, int8/16/32/64, uint8, bool); any other global is refused with an
  `InceptionWeightsError`, so loading an untrusted file cannot execute code.
  """
  try:
    obj = _read_torch_zip(path) if zipfile.is_zipfile(path) else _read_torch_legacy(path)
  except pickle.UnpicklingError as e:
    raise InceptionWeightsError(f"{path}: {e}") from e
  except InceptionWeightsError:
    raise
  except Exception as e:  # truncated or corrupt file: EOFError, struct.error, zipfile.BadZipFile, ...
    raise InceptionWeightsError(f"{path} is not a readable PyTorch checkpoint: {e!r}") from e
  obj = _materialize(obj, path)
  if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                          for k, v in obj.items()):
    raise InceptionWeightsError(f"{path} does not hold a flat state dict {{name: tensor}}")
  return dict(obj)


def _is_npz(path):
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
  return bool(names) and all(n.endswith(".npy") for n in names)


def read_state_dict(path):
  """{key: NumPy array} from a `.pth` (zip or legacy, see `read_torch_state_dict`) or a `.npz`.

  Raises:
    InceptionWeightsError: if the file is missing (the message says where to get it) or unreadable.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InceptionWeightsError(
        f"Inception weights not found at {path!r}. This project downloads nothing at run time: fetch "
        f"pytorch-fid's FID Inception weights {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL} and pass its path "
        f"(or a .npz made from it by `python -m ddpm_jax.evaluation.inception convert "
        f"{FID_WEIGHTS_FILE} fid_inception.npz`)")
  if _is_npz(path):
    try:
      with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
    except Exception as e:  # corrupt member, object arrays, ...
      raise InceptionWeightsError(f"{path} is not a readable .npz of weights: {e!r}") from e
  return read_torch_state_dict(path)


def file_sha256(path):
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def weights_provenance(path, *, prefix_length=16):
  """{'weights_file': basename, 'weights_sha256': first `prefix_length` hex digits} of a weights file."""
  return {"weights_file": os.path.basename(os.fspath(path)),
          "weights_sha256": file_sha256(path)[:prefix_length]}


def load_inception_params(path):
  """Loads FID Inception weights from a local `.pth` or `.npz` and folds them into `FIDInceptionV3` params.

  Args:
    path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (from `FID_WEIGHTS_URL`), or a `.npz` of the
      same state-dict keys (see `convert`). Nothing is downloaded.

  Returns:
    Variables {'params': ...} for `FIDInceptionV3().apply`, float32 NumPy leaves.

  Raises:
    InceptionWeightsError: if the file is missing, unreadable, references disallowed pickle globals, or its
      keys/shapes do not match the FID Inception state dict.
  """
  return params_from_state_dict(read_state_dict(path), source=os.fspath(path))


def convert(in_path, out_path):
  """Re-saves a weights file (`.pth` or `.npz`) as a `.npz` of the same state-dict keys, after checking it.

  Keys and layout are kept as in PyTorch (OIHW, BatchNorm unfolded), so the `.npz` is a lossless,
  pickle-free copy that `load_inception_params` reads. Returns the sha256 of the input file.
  """
  state_dict = read_state_dict(in_path)
  params_from_state_dict(state_dict, source=os.fspath(in_path))  # validates keys and shapes
  tmp = f"{out_path}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **state_dict)
  os.replace(tmp, out_path)
  return file_sha256(in_path)


# ----------------------------------------------------------------------------------------------------------
# Batched evaluation.


@functools.partial(jax.jit, static_argnames=("preprocessing", "logits_bias"))
def _features_and_logits_batch(params, images, *, preprocessing, logits_bias):
  x = preprocess_images(images, preprocessing=preprocessing)
  return FIDInceptionV3().apply(params, x, logits_bias=logits_bias)


def _validate_batch_size(batch_size):
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  return int(batch_size)


def batched_apply(fn, images, *, batch_size, put=None):
  """Applies `fn` to `images` in batches of exactly `batch_size` rows and returns the first N output rows.

  The last batch is padded with zero images to full size (one compiled shape serves every batch) and the
  padded rows are dropped, so each of the N images is evaluated exactly once, in order. `fn` returns a
  tuple of arrays with a leading batch axis; `put` (optional) places each batch (e.g. sharded on a mesh).

  Returns:
    A tuple of NumPy arrays, each with N rows.
  """
  batch_size = _validate_batch_size(batch_size)
  n = images.shape[0]
  pending = []
  for start in range(0, n, batch_size):
    batch = np.asarray(images[start:start + batch_size])
    valid = batch.shape[0]
    if valid < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - valid, *batch.shape[1:]), batch.dtype)])
    # Results stay on device until the loop ends, so that (with JAX's asynchronous dispatch) the host
    # prepares the next batch while the device computes this one.
    pending.append((fn(put(batch) if put is not None else batch), valid))
  out = tuple(np.concatenate([np.asarray(result[k])[:valid] for result, valid in pending])
              for k in range(len(pending[0][0])))
  for o in out:
    chex.assert_axis_dimension(o, 0, n)
  return out


def inception_features_and_logits(params, images, *, batch_size=100, preprocessing="tf1",
                                  logits_bias=False, mesh=None):
  """pool3 features and 1008-way logits of the FID Inception for every image, in batches under jit.

  Args:
    params: {'params': ...} from `load_inception_params`.
    images: uint8 [N, H, W, 3] or [N, H, W, 1] (NHWC, any H, W; resized to 299 inside), N ≥ 1.
    batch_size: images per forward pass; the last batch is zero-padded and the padding dropped.
    preprocessing: "tf1" (the TF graph's resize and scaling, default) or "pytorch_fid".
    logits_bias: False (default): logits = pool3 · W, as the reference Inception Score code; True: the
      graph's logits pool3 · W + b.
    mesh: optional 1-D `jax.sharding.Mesh` with axis 'data' (single process): each batch is sharded over
      it and the parameters replicated; `batch_size` is rounded up to a multiple of the mesh size.

  Returns:
    (features float32 [N, 2048], logits float32 [N, 1008]) as NumPy arrays (upcast to float64 by the
    statistics in `frechet`).
  """
  images = np.asarray(images)
  _check_uint8_images(images)
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
  batch_size = min(_validate_batch_size(batch_size), images.shape[0])
  put = None
  if mesh is None:
    params = jax.device_put(params)  # once, not with every batch
  else:
    from ddpm_jax import sharding  # pylint: disable=g-import-not-at-top

    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices  # round up to a multiple of the mesh size
    params = sharding.replicate(params, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    put = lambda b: jax.device_put(b, batch_sharding)  # pylint: disable=unnecessary-lambda-assignment
  fn = functools.partial(_features_and_logits_batch, params, preprocessing=preprocessing,
                         logits_bias=bool(logits_bias))
  features, logits = batched_apply(fn, images, batch_size=batch_size, put=put)
  chex.assert_shape(features, (images.shape[0], FEATURE_DIM))
  chex.assert_shape(logits, (images.shape[0], NUM_LOGITS))
  return features, logits


def softmax64(logits):
  """Row-wise softmax in float64: p_k = exp(l_k − max l) / Σ_j exp(l_j − max l)."""
  logits = np.asarray(logits, np.float64)
  z = np.exp(logits - logits.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# Reference statistics (cached) and the metrics.


def _canonical(provenance):
  return json.dumps(provenance, sort_keys=True, separators=(",", ":"))


def _load_cached_statistics(cache_path, expected):
  """(mu, sigma) from `cache_path` if it exists, is readable and its provenance equals `expected`."""
  if not os.path.isfile(cache_path):
    return None
  try:
    with np.load(cache_path, allow_pickle=False) as npz:
      if str(npz["provenance"]) != expected:
        return None
      mu, sigma = npz["mu"], npz["sigma"]
  except Exception:  # pylint: disable=broad-except  # a corrupt cache is recomputed, not fatal
    return None
  if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
    return None
  return mu.astype(np.float64), sigma.astype(np.float64)


def reference_statistics(images, *, params, cache_path, provenance, batch_size=100, preprocessing="tf1",
                         mesh=None):
  """pool3 mean and covariance of a reference image set, cached in an `.npz` keyed by provenance.

  The cache holds `mu` [2048], `sigma` [2048, 2048] (float64, ddof=1 as `frechet.activation_statistics`)
  and `provenance` (canonical JSON). It is reused only when the stored provenance equals the requested one
  exactly; otherwise (or if missing or unreadable) the statistics are recomputed and the file rewritten
  (atomically).

  Args:
    images: uint8 [N, H, W, 3|1], or a zero-argument callable returning them (only called on a cache
      miss, so a cache hit need not load the data set).
    params: {'params': ...} from `load_inception_params`.
    cache_path: the `.npz` file to read / write.
    provenance: dict with at least 'dataset' (e.g. "cifar10"), 'split' (e.g. "train"), 'n' (the number of
      images) and 'weights_sha256' (a sha256 prefix of the weights file; `weights_provenance(path)` gives
      it); any further JSON scalars are kept. 'preprocessing' and 'feature' ("pool3") are added.
    batch_size, preprocessing, mesh: as in `inception_features_and_logits`.

  Returns:
    (mu float64 [2048], sigma float64 [2048, 2048], provenance dict as stored).
  """
  if not isinstance(provenance, dict):
    raise ValueError(f"provenance must be a dict, got {type(provenance).__name__}")
  required = ("dataset", "split", "n", "weights_sha256")
  absent = [k for k in required if k not in provenance]
  if absent:
    raise ValueError(f"provenance is missing {absent}; it needs {list(required)}, got {provenance!r}")
  for key, value in provenance.items():
    if not isinstance(key, str) or not isinstance(value, (str, int, float, bool, type(None))):
      raise ValueError(f"provenance[{key!r}] = {value!r} must be a JSON scalar under a str key")
  n = provenance["n"]
  if isinstance(n, bool) or not isinstance(n, int) or n < 2:
    raise ValueError(f"provenance['n'] must be an integer ≥ 2, got {n!r}")
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
  full = {**provenance, "preprocessing": preprocessing, "feature": "pool3",
          "format": _STATISTICS_FORMAT}
  expected = _canonical(full)
  cached = _load_cached_statistics(os.fspath(cache_path), expected)
  if cached is not None:
    return cached[0], cached[1], full

  images = images() if callable(images) else images
  images = np.asarray(images)
  if images.shape[0] != n:
    raise ValueError(f"provenance['n'] = {n} but {images.shape[0]} images were given")
  features, _ = inception_features_and_logits(params, images, batch_size=batch_size,
                                              preprocessing=preprocessing, mesh=mesh)
  mu, sigma = frechet.activation_statistics(features)
  directory = os.path.dirname(os.path.abspath(cache_path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{cache_path}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, mu=mu, sigma=sigma, provenance=np.array(expected))
  os.replace(tmp, cache_path)
  return mu, sigma, full


def inception_metrics(params, images, *, reference=None, splits=10, batch_size=100, preprocessing="tf1",
                      logits_bias=False, mesh=None):
  """FID against `reference` (if given) and Inception Score of `images`, from one pass of the network.

  FID@N = ‖μ − μ_ref‖² + Tr(Σ + Σ_ref − 2(Σ Σ_ref)^{1/2})  on pool3 features (`frechet.frechet_distance`);
  IS@N  = exp(E_x KL(p(y|x) ‖ p(y))) over `splits` chunks (`frechet.inception_score`), with
  p(y|x) = softmax over all 1008 of pool3 · W (no bias, as the reference IS code; `logits_bias=True` uses
  pool3 · W + b, the TF graph's own softmax).
  Both are biased by N: report the label with N (e.g. "FID@50000") and compare at equal N.

  Args:
    params: {'params': ...} from `load_inception_params`.
    images: uint8 [N, H, W, 3|1]; N ≥ 2 for FID and N ≥ splits for IS.
    reference: (mu, sigma, provenance) from `reference_statistics`, or None to skip FID.
    splits: IS chunks (10 in the standard protocol); None to skip IS.
    batch_size, preprocessing, logits_bias, mesh: as in `inception_features_and_logits`.

  Returns:
    A dict with 'n', 'preprocessing', and per metric computed: 'fid', 'fid_label' ("FID@N"), 'reference'
    (its provenance); 'inception_score', 'inception_score_std', 'is_label' ("IS@N"), 'splits',
    'logits_bias'.
  """
  features, logits = inception_features_and_logits(params, images, batch_size=batch_size,
                                                   preprocessing=preprocessing, logits_bias=logits_bias,
                                                   mesh=mesh)
  n = int(features.shape[0])
  result = {"n": n, "preprocessing": preprocessing}
  if reference is not None:
    mu_ref, sigma_ref, ref_provenance = reference
    if ref_provenance.get("preprocessing", preprocessing) != preprocessing:
      raise ValueError(f"reference statistics were computed with preprocessing="
                       f"{ref_provenance.get('preprocessing')!r}, but images use {preprocessing!r}")
    if n < 2:
      raise ValueError(f"FID needs at least 2 images, got {n}")
    mu, sigma = frechet.activation_statistics(features)
    result.update(fid=frechet.frechet_distance(mu, sigma, mu_ref, sigma_ref), fid_label=f"FID@{n}",
                  reference=dict(ref_provenance))
  if splits is not None:
    mean, std = frechet.inception_score(softmax64(logits), splits=splits)
    result.update(inception_score=mean, inception_score_std=std, is_label=f"IS@{n}", splits=int(splits),
                  logits_bias=bool(logits_bias))
  return result


def fid_from_images(params, images, *, reference, batch_size=100, preprocessing="tf1", mesh=None):
  """FID@N of `images` against `reference` = (mu, sigma, provenance) from `reference_statistics`.

  Returns {'fid', 'fid_label': "FID@N", 'n', 'reference', 'preprocessing'}; see `inception_metrics`.
  """
  return inception_metrics(params, images, reference=reference, splits=None, batch_size=batch_size,
                           preprocessing=preprocessing, mesh=mesh)


def inception_score_from_images(params, images, *, splits=10, batch_size=100, preprocessing="tf1",
                                logits_bias=False, mesh=None):
  """IS@N (mean and std over `splits` chunks) of `images`; see `inception_metrics`.

  Returns {'inception_score', 'inception_score_std', 'is_label': "IS@N", 'splits', 'n', ...}.
  """
  return inception_metrics(params, images, reference=None, splits=splits, batch_size=batch_size,
                           preprocessing=preprocessing, logits_bias=logits_bias, mesh=mesh)


# ----------------------------------------------------------------------------------------------------------
# Command line.


def main(argv=None):
  """`python -m ddpm_jax.evaluation.inception convert <in.pth> <out.npz>`."""
  parser = argparse.ArgumentParser(prog="python -m ddpm_jax.evaluation.inception",
                                   description="FID Inception weights tools (no PyTorch needed).")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="check a .pth (or .npz) and re-save it as a pickle-free .npz")
  conv.add_argument("input", help=f"e.g. {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
  conv.add_argument("output", help="the .npz to write")
  args = parser.parse_args(argv)
  try:
    digest = convert(args.input, args.output)
  except InceptionWeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  note = ("" if digest.startswith(FID_WEIGHTS_SHA256_PREFIX) else
          f" (note: pytorch-fid's file has a sha256 starting {FID_WEIGHTS_SHA256_PREFIX})")
  print(f"wrote {args.output} from {args.input} (sha256 {digest}){note}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
