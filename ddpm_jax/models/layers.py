"""Building blocks of the DDPM U-Net (Ho et al. 2020, `diffusion_tf/nn.py` and `models/unet.py`).

Every layer here reproduces one operation of the original TF1 network exactly (initialisers, padding,
normalisation constants), so that released checkpoints load and run unchanged. The options added by
Improved DDPM (Nichol & Dhariwal 2021: multi-head attention, scale-shift norm, resampling res
blocks) are off by default.

Parameters are always created in `param_dtype` (float32); `dtype` is the computation dtype. Group
normalisation and the attention softmax are computed in float32 whatever `dtype` is, because their
reductions lose too much precision in bfloat16.
"""

import functools
import math
from typing import Any, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# tf.contrib.layers.group_norm defaults used by the original `normalize`.
NUM_GROUPS = 32
GROUP_NORM_EPSILON = 1e-6
# The original `default_init(0.)` substitutes this scale: near-zero, not exactly zero, so that the
# fan-based variance stays well defined.
ZERO_INIT_SCALE = 1e-10


def default_init(scale: float = 1.0) -> jax.nn.initializers.Initializer:
  """variance_scaling(scale, fan_avg, uniform) with scale 0 meaning 1e-10, as `nn.default_init`."""
  return nn.initializers.variance_scaling(
      ZERO_INIT_SCALE if scale == 0 else scale, mode='fan_avg', distribution='uniform')


def tf_same_padding(size: int, *, kernel_size: int, stride: int) -> tuple[int, int]:
  """The (before, after) padding of TensorFlow's "SAME" convention along one axis.

  The output has ceil(size / stride) entries; the total padding needed for that is split with the
  smaller half *before*, so a stride-2 3-tap filter on an even size pads 0 before and 1 after.
  """
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


def swish(x: jax.Array) -> jax.Array:
  """x·sigmoid(x), the original `nonlinearity` (tf.nn.swish)."""
  return nn.swish(x)


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int) -> jax.Array:
  """Sinusoidal embedding of (integer or real) timesteps, as `nn.get_timestep_embedding`.

  With half = embedding_dim // 2 and frequencies f_i = exp(-i·log(10000) / (half - 1)) for
  i = 0..half-1, returns [sin(t·f) | cos(t·f)] (sin block first), zero-padded by one column when
  embedding_dim is odd (the tensor2tensor variant of Vaswani et al. 2017, §3.5).

  Args:
    timesteps: [B] timesteps.
    embedding_dim: the output width; at least 4 (the frequency spacing divides by half - 1).

  Returns:
    [B, embedding_dim] float32 embedding.
  """
  if timesteps.ndim != 1:
    raise ValueError(f'timesteps must have shape [B], got shape {timesteps.shape}.')
  if embedding_dim < 4:
    raise ValueError(f'embedding_dim must be at least 4, got {embedding_dim}.')
  half_dim = embedding_dim // 2
  log_spacing = math.log(10000) / (half_dim - 1)
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -log_spacing)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [(0, 0), (0, 1)])
  chex.assert_shape(emb, (timesteps.shape[0], embedding_dim))
  return emb


def _sum_spatial(v: jax.Array) -> jax.Array:
  """Σ over H and W of an NHWC float32 array → [B, C], as a batched product with a ones vector (see
  `add_bias` for why not a reduction)."""
  b, h, w, c = v.shape
  # [B, 1, HW] @ [B, HW, C]: the array keeps its NHWC layout (a ones operand [HW] on the other side made
  # XLA transpose v to [B·C, HW] first).
  ones = jnp.ones((b, 1, h * w), v.dtype)
  return jnp.einsum('bop,bpc->bc', ones, v.reshape(b, h * w, c), precision=jax.lax.Precision.HIGHEST)


def _group_mean(per_channel_sum: jax.Array, groups: int, n: int) -> jax.Array:
  """[B, C] per-channel sums → each group's mean (sum / n) repeated over its channels, as [B, C].

  The repetition over a group's channels is a product with the one-hot [G, C] matrix, not `jnp.repeat`:
  XLA:CPU fuses a repeat's broadcast-and-reshape into every elementwise loop that reads the result and
  recomputes the channel → group index per element there, which made the GroupNorm and swish loops
  2.5-3.5× slower than the same loop reading a plain [B, C] array (28×28×96, batch 32: 3.2 ms against
  0.96 ms). The product's result is a plain array."""
  b, c = per_channel_sum.shape
  g = jnp.sum(per_channel_sum.reshape(b, groups, c // groups), axis=-1) / n
  if groups == c:
    return g
  one_hot = jnp.repeat(jnp.eye(groups, dtype=g.dtype), c // groups, axis=1)  # [G, C], a constant
  return jnp.dot(g, one_hot, precision=jax.lax.Precision.HIGHEST)


def _group_norm_stats(x, groups, eps):
  """x: NHWC float32 → (mean, r) as [B, C]: each channel's group mean and 1/sqrt(var + eps)."""
  b, h, w, c = x.shape
  n = h * w * (c // groups)
  mean = _group_mean(_sum_spatial(x), groups, n)
  var = _group_mean(_sum_spatial(jnp.square(x - mean[:, None, None, :])), groups, n)
  return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float) -> jax.Array:
  """y = (x - mean_g) / sqrt(var_g + eps) · scale + bias for NHWC x, the moments of each example's group g
  of C/groups consecutive channels taken over H, W and those channels, in float32; cast back to x's dtype.

  The variance is two-pass, E[(x - mean)²], not E[x²] - mean², to avoid cancellation. Written for
  XLA:CPU's speed, with the same values (to float32 rounding) as the plain formula: every sum over H and W
  is a product with a ones vector and the group sums follow on [B, C]; reducing a [B, H, W, G, C/G] view
  over axes (1, 2, 4) was 5-20× slower (28×28×64, batch 32: 8.4 ms, PyTorch 0.4 ms). The per-example
  statistics are [B, C] arrays (see `_group_mean`), so every pass over the activations is a plain
  elementwise loop. The gradient is written out (x̂ = (x - mean)·r, g = dy·scale, means over each group,
  S = Σ over H and W of one example):
    dx = r · (g - mean(g) - x̂ · mean(g · x̂)),   dscale = Σ_b S(dy · x̂),   dbias = Σ_b S(dy),
  with mean(g) and mean(g · x̂) taken from the same two per-channel sums S(dy) and S(dy · x̂), times scale.
  The residuals are x itself and the [B, C] statistics: x̂ is recomputed, not stored.
  """
  return _group_norm_fwd(x, scale, bias, groups, eps)[0]


def _group_norm_fwd(x, scale, bias, groups, eps):
  xf = x.astype(jnp.float32)
  mean, r = _group_norm_stats(xf, groups, eps)
  a = r * scale.astype(jnp.float32)  # [B, C]
  y = (xf - mean[:, None, None, :]) * a[:, None, None, :] + bias.astype(jnp.float32)
  return y.astype(x.dtype), (x, mean, r, scale)


def _group_norm_bwd(groups, eps, res, dy):
  del eps
  x, mean, r, scale = res
  b, h, w, c = x.shape
  n = h * w * (c // groups)
  dy = dy.astype(jnp.float32)
  s = scale.astype(jnp.float32)
  xhat = (x.astype(jnp.float32) - mean[:, None, None, :]) * r[:, None, None, :]
  s_dy = _sum_spatial(dy)  # [B, C]
  s_dyx = _sum_spatial(dy * xhat)  # [B, C]
  ones = jnp.ones((b,), jnp.float32)
  dbias = jnp.dot(ones, s_dy, precision=jax.lax.Precision.HIGHEST)
  dscale = jnp.dot(ones, s_dyx, precision=jax.lax.Precision.HIGHEST)
  mg = _group_mean(s_dy * s, groups, n)  # mean(g) per channel, [B, C]
  mgx = _group_mean(s_dyx * s, groups, n)  # mean(g · x̂)
  a = r * s
  dx = dy * a[:, None, None, :] - (r * mg)[:, None, None, :] - xhat * (r * mgx)[:, None, None, :]
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias over the last axis. Same values and gradients as the plain sum; the bias gradient Σ dy over
  every leading axis is taken as a matrix product with a ones vector instead of a reduction, because
  XLA:CPU fuses that reduction with the producers of dy into a slow column reduction (up to 20 ms for one
  bias at 28×28×32, batch 32: benchmarks/RESULTS.md)."""
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, dy):
  flat = dy.reshape(-1, dy.shape[-1])
  ones = jnp.ones((flat.shape[0],), dy.dtype)
  return dy, jnp.dot(ones, flat, precision=jax.lax.Precision.HIGHEST)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class GroupNorm(nn.Module):
  """Group normalisation with 32 groups and eps 1e-6 (tf.contrib.layers.group_norm), in float32.

  y = (x - mean) / sqrt(var + eps) · scale + bias, the moments taken over H, W and the channels of each
  group. Parameters `scale` and `bias` are the original `gamma` and `beta`. The result is cast back to
  the input dtype.
  """
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    b, h, w, c = x.shape
    if c % NUM_GROUPS:
      raise ValueError(
          f'GroupNorm needs a channel count divisible by {NUM_GROUPS} groups, got {c} channels.')
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    return group_norm(x, scale, bias, NUM_GROUPS, GROUP_NORM_EPSILON)


class Conv3x3(nn.Module):
  """3×3 convolution with TF "SAME" padding (`nn.conv2d`); stride 1 or 2.

  Parameters `kernel` [3, 3, in, out] and `bias` [out] are the original `W` and `b`. Padding is
  computed from the input size with `tf_same_padding`, so a stride-2 conv on an even size pads 0
  rows/columns before and 1 after, as TensorFlow does (not symmetric).
  """
  features: int
  stride: int = 1
  init_scale: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    b, h, w, c = x.shape
    kernel = self.param(
        'kernel', default_init(self.init_scale), (3, 3, c, self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    padding = (tf_same_padding(h, kernel_size=3, stride=self.stride),
               tf_same_padding(w, kernel_size=3, stride=self.stride))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(self.stride, self.stride),
        padding=padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = add_bias(y, bias.astype(self.dtype))
    chex.assert_shape(y, (b, -(-h // self.stride), -(-w // self.stride), self.features))
    return y


class Nin(nn.Module):
  """A dense layer over the last (channel) axis: `nn.nin` / `nn.dense` (kernel [in, out] = `W`)."""
  features: int
  init_scale: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel', default_init(self.init_scale), (x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=1)
    return add_bias(y, bias.astype(self.dtype))


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """y[i, j] = mean of x[2i:2i+2, 2j:2j+2] over NHWC H and W (`downsample` without a conv)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """y[i, j] = x[i // 2, j // 2] over NHWC H and W (nearest-neighbour ×2, `upsample` without a conv)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ResnetBlock.resample: the resampling the block applies to both of its paths (None: none).
RESAMPLES = (None, 'up', 'down')


class Downsample(nn.Module):
  """Halve H and W: 3×3 stride-2 conv (TF SAME padding) or 2×2 average pooling (`downsample`)."""
  with_conv: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'Downsample needs even H and W, got input shape {x.shape}.')
    if self.with_conv:
      x = Conv3x3(c, stride=2, dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
    else:
      x = avg_pool_2x2(x)
    chex.assert_shape(x, (b, h // 2, w // 2, c))
    return x


class Upsample(nn.Module):
  """Double H and W by nearest-neighbour repetition, then optionally a 3×3 conv (`upsample`).

  The original resizes with align_corners=True; for an exact factor 2 that maps output index j to
  input index round(j·(n-1)/(2n-1)) = j // 2, i.e. plain repetition.
  """
  with_conv: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = upsample_nearest_2x(x)
    if self.with_conv:
      x = Conv3x3(c, dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
    chex.assert_shape(x, (b, 2 * h, 2 * w, c))
    return x


class ResnetBlock(nn.Module):
  """The residual block of the original `resnet_block`, optionally with scale-shift norm.

  h = conv1(swish(norm1(x))) + dense(swish(temb)); h = conv2(dropout(swish(norm2(h)))) with conv2
  initialised near zero; the output is shortcut(x) + h, where the shortcut is a NIN layer when the
  channel count changes.

  With `use_scale_shift_norm` (Improved DDPM's AdaGN) the temb projection emits 2·out_ch channels
  [scale | shift] and the block computes swish(norm2(h)·(1 + scale) + shift) instead of adding the
  projection before norm2.

  With `resample` 'up' or 'down' (Improved DDPM's `resblock_updown`, after BigGAN's residual
  up/down-sampling blocks) the block also changes the resolution, with R the parameter-free resampling
  (nearest ×2 repetition for 'up', 2×2 average pooling for 'down'):
    h = conv1(R(swish(norm1(x)))),   shortcut = R(x)   (then NIN if the channels change),
  and the rest as above, so the output is R(x) + conv2(...) at the new resolution. The parameters are
  those of the plain block: R adds none.
  """
  out_ch: int
  dropout: float = 0.0
  deterministic: bool = True
  use_scale_shift_norm: bool = False
  resample: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    b, h_, w_, c = x.shape
    chex.assert_shape(temb, (b, None))
    if self.resample not in RESAMPLES:
      raise ValueError(f'ResnetBlock.resample={self.resample!r} is invalid: expected one of {RESAMPLES}.')
    if self.resample == 'down':
      if h_ % 2 or w_ % 2:
        raise ValueError(f'A downsampling ResnetBlock needs even H and W, got input shape {x.shape}.')
      resample, h_, w_ = avg_pool_2x2, h_ // 2, w_ // 2
    elif self.resample == 'up':
      resample, h_, w_ = upsample_nearest_2x, 2 * h_, 2 * w_
    else:
      resample = lambda v: v
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = swish(GroupNorm(param_dtype=self.param_dtype, name='norm1')(x))
    # Resample before conv1, on the normalised activations (so conv1 runs at the output resolution).
    h = Conv3x3(self.out_ch, name='conv1', **kw)(resample(h))

    emb_ch = 2 * self.out_ch if self.use_scale_shift_norm else self.out_ch
    emb = Nin(emb_ch, name='temb_proj', **kw)(swish(temb))[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = GroupNorm(param_dtype=self.param_dtype, name='norm2')(h) * (1 + scale) + shift
      h = swish(h)
    else:
      h = h + emb
      h = swish(GroupNorm(param_dtype=self.param_dtype, name='norm2')(h))
    h = nn.Dropout(rate=self.dropout, deterministic=self.deterministic)(h)
    h = Conv3x3(self.out_ch, init_scale=0.0, name='conv2', **kw)(h)

    x = resample(x)
    if c != self.out_ch:
      x = Nin(self.out_ch, name='nin_shortcut', **kw)(x)
    chex.assert_shape(h, (b, h_, w_, self.out_ch))
    chex.assert_equal_shape([x, h])
    return x + h


class AttnBlock(nn.Module):
  """Self-attention over the H·W positions with a residual connection (`attn_block`).

  q, k, v and proj_out are NIN layers of C channels; proj_out starts near zero. The original is
  single-head with logits scaled by C^-1/2. With `num_heads` > 1 (or `num_head_channels`, as in
  Improved DDPM) the channels are split into contiguous groups of d channels, each attending on its
  own with d^-1/2 scaling; the parameter shapes do not change.
  """
  num_heads: int = 1
  num_head_channels: Optional[int] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    if self.num_head_channels is not None:
      if c % self.num_head_channels:
        raise ValueError(
            f'num_head_channels={self.num_head_channels} does not divide the {c} channels of an '
            'attention block.')
      heads = c // self.num_head_channels
    else:
      if c % self.num_heads:
        raise ValueError(
            f'num_heads={self.num_heads} does not divide the {c} channels of an attention block.')
      heads = self.num_heads
    d = c // heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    h = GroupNorm(param_dtype=self.param_dtype, name='norm')(x)
    split = lambda a: a.reshape(b, height * width, heads, d)
    q = split(Nin(c, name='q', **kw)(h))
    k = split(Nin(c, name='k', **kw)(h))
    v = split(Nin(c, name='v', **kw)(h))
    logits = jnp.einsum('bqnd,bknd->bnqk', q, k).astype(jnp.float32) * (d ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum('bnqk,bknd->bqnd', weights, v).reshape(b, height, width, c)
    h = Nin(c, init_scale=0.0, name='proj_out', **kw)(h)
    chex.assert_equal_shape([h, x])
    return x + h
