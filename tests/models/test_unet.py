"""Tests of the Flax DDPM U-Net: sizes, layer semantics against hand-computed cases, options."""

import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm_jax.models import layers
from ddpm_jax.models.unet import UNet, unet_from_config

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), out_ch=3, dropout=0.1)


def _shapes(model, size, *, in_ch=3, batch=1, y=False):
  x = jax.ShapeDtypeStruct((batch, size[0], size[1], in_ch), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  yy = jax.ShapeDtypeStruct((batch,), jnp.int32) if y else None
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, yy)
  out = jax.eval_shape(model.apply, variables, x, t, yy)
  return variables['params'], out


@pytest.mark.parametrize('ch_mult,size,count,arrays', [
    ((1, 2, 2, 2), 32, 35_746_307, 328),   # CIFAR-10 (paper, Appendix B)
    ((1, 1, 2, 2, 4, 4), 256, 113_673_219, None),   # LSUN / CelebA-HQ 256²
])
def test_parameter_counts_of_the_paper_models(ch_mult, size, count, arrays):
  model = UNet(ch=128, ch_mult=ch_mult, num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
               out_ch=3)
  params, out = _shapes(model, (size, size))
  leaves = jax.tree.leaves(params)
  assert sum(math.prod(p.shape) for p in leaves) == count
  if arrays is not None:
    assert len(leaves) == arrays
  assert all(p.dtype == jnp.float32 for p in leaves)
  assert out.shape == (1, size, size, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize('kwargs,size,out_ch', [
    (dict(TINY), (8, 8), 3),
    (dict(TINY, out_ch=6), (8, 8), 6),   # learned variances: [mean | variance] channels
    (dict(TINY, ch_mult=(1, 2, 2), out_ch=2), (16, 8), 2),   # non-square, 1-channel data
    (dict(TINY, resamp_with_conv=False, num_heads=2), (8, 8), 3),
])
def test_output_shapes(kwargs, size, out_ch):
  in_ch = 1 if out_ch == 2 else 3
  params, out = _shapes(UNet(**kwargs), size, in_ch=in_ch, batch=2)
  assert out.shape == (2, *size, out_ch) and out.dtype == jnp.float32
  if not kwargs.get('resamp_with_conv', True):
    assert 'downsample' not in params['down_0'] and 'upsample' not in params['up_1']


def test_bad_inputs_and_fields_raise_clear_errors():
  model = UNet(**dict(TINY, ch_mult=(1, 2, 2)))
  with pytest.raises(ValueError, match=r'10x10 is not divisible by 2\*\*\(len\(ch_mult\) - 1\) = 4'):
    _shapes(model, (10, 10))
  with pytest.raises(ValueError, match=r'UNet.ch=16 .*divisible by the 32 GroupNorm groups'):
    UNet(**dict(TINY, ch=16))
  with pytest.raises(ValueError, match=r'UNet.ch_mult=\(1, 1.5\) .*positive ints'):
    UNet(**dict(TINY, ch_mult=(1, 1.5)))
  with pytest.raises(ValueError, match='num_classes=4'):
    _shapes(UNet(**dict(TINY, num_classes=4)), (8, 8))
  with pytest.raises(ValueError, match='unconditional'):
    _shapes(UNet(**TINY), (8, 8), y=True)
  with pytest.raises(ValueError, match='num_head_channels=24 does not divide'):
    _shapes(UNet(**dict(TINY, num_head_channels=24)), (8, 8))
  with pytest.raises(ValueError, match='param_dtype'):
    UNet(**TINY, param_dtype=jnp.bfloat16)


def _apply_layer(layer, params, x):
  return np.asarray(layer.apply({'params': params}, jnp.asarray(x, jnp.float32)))


def test_tf_same_padding_is_zero_before_one_after_for_stride_2():
  assert layers.tf_same_padding(8, kernel_size=3, stride=2) == (0, 1)
  assert layers.tf_same_padding(7, kernel_size=3, stride=2) == (1, 1)
  assert layers.tf_same_padding(8, kernel_size=3, stride=1) == (1, 1)


def test_downsample_conv_uses_tf_same_padding():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  ones = {'conv': {'kernel': np.ones((3, 3, 1, 1), np.float32), 'bias': np.zeros(1, np.float32)}}
  # Windows start at rows/cols 0 and 2; the second runs into one row/column of zero padding:
  # 45 = sum x[0:3, 0:3], 39 = sum x[0:3, 2:4], 66 = sum x[2:4, 0:3], 50 = sum x[2:4, 2:4].
  # (Symmetric padding would give 10 = sum x[0:2, 0:2] at the top-left.)
  got = _apply_layer(layers.Downsample(with_conv=True), ones, x)
  np.testing.assert_array_equal(got[0, :, :, 0], [[45, 39], [66, 50]])
  # A kernel that picks its top-left tap samples x[2i, 2j] exactly: no padding before.
  corner = np.zeros((3, 3, 1, 1), np.float32)
  corner[0, 0] = 1
  got = _apply_layer(layers.Downsample(with_conv=True),
                     {'conv': {'kernel': corner, 'bias': np.full(1, 0.5, np.float32)}}, x)
  np.testing.assert_array_equal(got[0, :, :, 0], x[0, ::2, ::2, 0] + 0.5)
  # Without a conv: 2x2 average pooling.
  got = _apply_layer(layers.Downsample(with_conv=False), {}, x)
  np.testing.assert_array_equal(got[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_upsample_is_nearest_neighbour_times_two():
  x = np.array([1., 2., 3., 4., 5., 6.], np.float32).reshape(1, 2, 3, 1)
  got = _apply_layer(layers.Upsample(with_conv=False), {}, x)[0, :, :, 0]
  np.testing.assert_array_equal(got, [[1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3],
                                      [4, 4, 5, 5, 6, 6], [4, 4, 5, 5, 6, 6]])
  # The original's resize(align_corners=True, NEAREST) index rule: round(j·(n-1)/(2n-1)).
  for n in (2, 3, 4, 16):
    src = np.array([int(np.floor(j * (n - 1) / (2 * n - 1) + 0.5)) for j in range(2 * n)])
    np.testing.assert_array_equal(src, np.arange(2 * n) // 2)


@pytest.mark.parametrize('dim', [32, 7])
def test_timestep_embedding_matches_formula(dim):
  t = np.array([0, 1, 17, 999])
  half = dim // 2
  freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
  want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
  if dim % 2:
    want = np.pad(want, [(0, 0), (0, 1)])
  got = np.asarray(layers.get_timestep_embedding(jnp.asarray(t), dim))
  assert got.shape == (4, dim)
  np.testing.assert_allclose(got, want, atol=2e-4)  # float32 sin/cos of arguments up to 999


@pytest.fixture(scope='module')
def tiny():
  """The tiny model, real init, and a randomly perturbed copy (so no layer is ~zero)."""
  model = UNet(**TINY)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.array([3, 700], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), x, t)['params']

  def perturb(p):  # kernels ~ N(0, 1/fan_in), vectors ± 0.2
    fan_in = math.prod(p.shape[:-1]) if p.ndim > 1 else 25.0
    return p + (rng.normal(size=p.shape) / math.sqrt(fan_in)).astype(np.float32)

  perturbed = jax.tree.map(perturb, params)
  return model, params, perturbed, x, t


def test_init_follows_the_original(tiny):
  model, params, _, x, t = tiny
  # variance_scaling(scale, fan_avg, uniform) has std sqrt(scale / fan_avg); scale 1e-10 on the layers
  # the original initialises with init_scale=0.
  def std_ratio(kernel, scale):
    fan_in, fan_out = math.prod(kernel.shape[:-1]), math.prod(kernel.shape[:-2]) * kernel.shape[-1]
    return float(np.std(kernel)) / math.sqrt(scale / ((fan_in + fan_out) / 2))
  assert abs(std_ratio(params['down_0']['block_0']['conv1']['kernel'], 1.0) - 1) < 0.1
  assert abs(std_ratio(params['temb']['dense0']['kernel'], 1.0) - 1) < 0.1
  for kernel in (params['down_0']['block_0']['conv2']['kernel'], params['mid']['attn_1']['proj_out']
                 ['kernel'], params['up_1']['block_1']['conv2']['kernel'], params['conv_out']['kernel']):
    assert abs(std_ratio(kernel, 1e-10) - 1) < 0.2
  assert not np.any(np.asarray(params['conv_out']['bias']))
  np.testing.assert_array_equal(params['norm_out']['scale'], 1.0)
  # The output conv's weights are ~1e-6, so the output is ~1e-5 (O(1) with scale-1 init).
  out = np.asarray(jax.jit(model.apply)({'params': params}, x, t))
  assert out.shape == (2, 8, 8, 3) and np.abs(out).max() < 1e-3


def test_dropout_only_in_training(tiny):
  model, _, params, x, t = tiny
  apply = jax.jit(model.apply, static_argnames='train')
  eval_a = apply({'params': params}, x, t, train=False, rngs={'dropout': jax.random.key(1)})
  eval_b = apply({'params': params}, x, t, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = apply({'params': params}, x, t, train=True, rngs={'dropout': jax.random.key(1)})
  train_b = apply({'params': params}, x, t, train=True, rngs={'dropout': jax.random.key(2)})
  scale = float(jnp.abs(eval_a).max())
  assert scale > 0.1
  assert float(jnp.abs(train_a - eval_a).max()) > 1e-2 * scale
  assert float(jnp.abs(train_a - train_b).max()) > 1e-2 * scale
  no_dropout = UNet(**dict(TINY, dropout=0.0))
  np.testing.assert_allclose(
      no_dropout.apply({'params': params}, x, t, train=True, rngs={'dropout': jax.random.key(1)}),
      eval_a, atol=1e-5 * scale)


def test_bfloat16_compute_close_to_float32(tiny):
  _, _, params, x, t = tiny
  model16 = UNet(**TINY, dtype=jnp.bfloat16)
  init16 = jax.eval_shape(model16.init, jax.random.key(0), x, t)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init16))
  out32 = np.asarray(jax.jit(UNet(**TINY).apply)({'params': params}, x, t))
  out16 = jax.jit(model16.apply)({'params': params}, x, t)
  assert out16.dtype == jnp.float32
  err = np.abs(np.asarray(out16) - out32).max() / np.abs(out32).max()
  assert 0 < err < 5e-2, err  # bf16 has an 8-bit mantissa: ~1% error, not zero (it really ran)


def test_class_conditioning_changes_output_only_for_different_labels(tiny):
  _, _, params, x, t = tiny
  model = UNet(**TINY, num_classes=4)
  key = jax.random.key(3)
  params = dict(params, label_emb={'embedding': jax.random.normal(key, (4, 4 * TINY['ch']))})
  apply = jax.jit(model.apply)
  x = jnp.concatenate([x[:1], x[:1]])
  t = jnp.array([100, 100], jnp.int32)
  out = np.asarray(apply({'params': params}, x, t, jnp.array([1, 2])))
  same = np.asarray(apply({'params': params}, x, t, jnp.array([1, 1])))
  np.testing.assert_array_equal(same[0], same[1])
  np.testing.assert_array_equal(out[0], same[0])
  assert np.abs(out[1] - out[0]).max() > 1e-2 * np.abs(out[0]).max()


def test_remat_gives_same_values_and_gradients(tiny):
  _, _, params, x, t = tiny

  def loss(model, p):
    return jnp.mean(model.apply({'params': p}, x, t) ** 2)

  plain = jax.jit(jax.value_and_grad(lambda p: loss(UNet(**TINY), p)))(params)
  rematted_fn = jax.value_and_grad(lambda p: loss(UNet(**TINY, remat=True), p))
  jaxpr = str(jax.make_jaxpr(rematted_fn)(params))
  assert 'remat' in jaxpr or 'checkpoint' in jaxpr
  rematted = jax.jit(rematted_fn)(params)
  np.testing.assert_allclose(rematted[0], plain[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(rematted[1]), jax.tree.leaves(plain[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_unet_from_config():
  cfg = ml_collections.ConfigDict(dict(
      ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
      resamp_with_conv=True, out_ch=6, name='unet', dtype='bfloat16'))
  model = unet_from_config(cfg)
  assert (model.ch, model.ch_mult, model.attn_resolutions, model.out_ch) == (
      128, (1, 2, 2, 2), (16,), 6)
  assert model.dtype == jnp.bfloat16 and model.num_classes is None and model.num_heads == 1
  with pytest.raises(ValueError, match=r"missing required field\(s\) \['out_ch'\]"):
    unet_from_config(ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != 'out_ch'}))
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['channels'\]"):
    unet_from_config(ml_collections.ConfigDict(dict(cfg.items(), channels=3)))
  with pytest.raises(ValueError, match="dtype='fp8'"):
    unet_from_config(ml_collections.ConfigDict(dict(cfg.items(), dtype='fp8')))
  with pytest.raises(ValueError, match='UNet.dropout=1.5'):
    unet_from_config(ml_collections.ConfigDict(dict(cfg.items(), dropout=1.5)))


def test_output_scale_and_residual_paths():
  """out = g·x + s·conv_out(h) with g = 1 ('identity') or learned per channel (init 1), on the mean block."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.array([3, 700], jnp.int32)
  base = UNet(**TINY)
  params = jax.jit(base.init)(jax.random.key(0), x, t)['params']
  params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  f = np.asarray(base.apply({'params': params}, x, t), np.float64)
  s = 0.01
  scaled = UNet(**TINY, output_scale=s)
  np.testing.assert_allclose(scaled.apply({'params': params}, x, t), s * f, rtol=1e-5, atol=1e-7)
  ident = UNet(**TINY, output_scale=s, output_residual='identity')
  np.testing.assert_allclose(ident.apply({'params': params}, x, t), np.asarray(x) + s * f, rtol=1e-5,
                             atol=1e-6)
  learned = UNet(**TINY, output_scale=s, output_residual='learned')
  lparams = jax.jit(learned.init)(jax.random.key(0), x, t)['params']
  np.testing.assert_array_equal(lparams['residual_gain'], np.ones(3, np.float32))
  gain = jnp.array([0.5, 1.0, 2.0], jnp.float32)
  out = learned.apply({'params': {**params, 'residual_gain': gain}}, x, t)
  np.testing.assert_allclose(out, np.asarray(x) * np.asarray(gain) + s * f, rtol=1e-5, atol=1e-6)
  # Learned variance (2C outputs): the path feeds only the mean block.
  wide = dict(TINY, out_ch=6)
  wparams = jax.jit(UNet(**wide).init)(jax.random.key(1), x, t)['params']
  wf = np.asarray(UNet(**wide).apply({'params': wparams}, x, t))
  wo = np.asarray(UNet(**wide, output_residual='identity').apply({'params': wparams}, x, t))
  np.testing.assert_allclose(wo[..., :3], wf[..., :3] + np.asarray(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(wo[..., 3:], wf[..., 3:])


@pytest.mark.parametrize('field,value,match', [
    ('output_scale', 0.0, r'UNet.output_scale=0.0 is invalid: expected a positive finite number'),
    ('output_residual', 'skip', r"UNet.output_residual='skip' is invalid: expected one of 'none', "
                                r"'identity', 'learned'"),
])
def test_output_options_are_validated(field, value, match):
  with pytest.raises(ValueError, match=match):
    UNet(**TINY, **{field: value})


@pytest.mark.parametrize('c', [32, 64, 96])
def test_group_norm_values_and_written_out_gradient(c):
  """layers.group_norm (sums as products with ones, hand-written VJP) against the textbook formula in float64
  NumPy (values) and against finite differences of that formula (gradients along random directions)."""
  rng = np.random.default_rng(c)
  x = (rng.normal(size=(2, 4, 4, c)) * 2 + 1).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, size=c).astype(np.float32)
  bias = rng.normal(size=c).astype(np.float32)
  w = rng.normal(size=x.shape)

  def ref(x, scale, bias):  # float64 NumPy: moments over H, W and each group's channels
    xg = x.reshape(2, 4, 4, 32, c // 32)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * scale + bias

  args64 = [a.astype(np.float64) for a in (x, scale, bias)]
  y = layers.group_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), 32, 1e-6)
  np.testing.assert_allclose(y, ref(*args64), rtol=1e-5, atol=1e-5)
  loss = lambda *a: float(np.sum(ref(*a) * w))
  grads = jax.grad(lambda *a: jnp.sum(layers.group_norm(*a, 32, 1e-6) * w), argnums=(0, 1, 2))(
      jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
  for i, g in enumerate(grads):
    direction = rng.normal(size=args64[i].shape)
    h = 1e-4
    plus = list(args64); plus[i] = args64[i] + h * direction
    minus = list(args64); minus[i] = args64[i] - h * direction
    fd = (loss(*plus) - loss(*minus)) / (2 * h)
    np.testing.assert_allclose(np.sum(np.asarray(g, np.float64) * direction), fd, rtol=1e-3, atol=1e-3)


def test_add_bias_gradient_is_the_sum_over_leading_axes():
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(3, 5, 5, 7)), jnp.float32)
  b = jnp.asarray(rng.normal(size=7), jnp.float32)
  w = rng.normal(size=y.shape).astype(np.float32)
  np.testing.assert_array_equal(layers.add_bias(y, b), y + b)
  gy, gb = jax.grad(lambda y, b: jnp.sum(layers.add_bias(y, b) * w), argnums=(0, 1))(y, b)
  np.testing.assert_array_equal(gy, w)
  np.testing.assert_allclose(gb, w.astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)


def test_label_dropout_adds_a_null_class_row():
  base = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
              resamp_with_conv=True, out_ch=1, num_classes=10)
  plain = unet_from_config(ml_collections.ConfigDict(base))
  cfg = unet_from_config(ml_collections.ConfigDict(dict(base, label_dropout=0.1)))
  assert not plain.null_class and cfg.null_class
  x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
  shapes = jax.eval_shape(cfg.init, jax.random.key(0), x, t, jnp.array([3, 10]))['params']
  assert shapes['label_emb']['embedding'].shape == (11, 4 * 32)  # labels 0..9 and the null class 10
  plain_shapes = jax.eval_shape(plain.init, jax.random.key(0), x, t, jnp.array([3, 9]))['params']
  assert plain_shapes['label_emb']['embedding'].shape == (10, 4 * 32)
  with pytest.raises(ValueError, match=r'label_dropout=1.0 is invalid: expected a probability in \[0, 1\)'):
    unet_from_config(ml_collections.ConfigDict(dict(base, label_dropout=1.0)))
  with pytest.raises(ValueError, match=r'label_dropout=0.1 is invalid: expected 0 for an unconditional'):
    unet_from_config(ml_collections.ConfigDict(dict(base, num_classes=None, label_dropout=0.1)))


# --- resblock_updown (Improved DDPM's residual up/down-sampling) -------------------------------------------


def _closed_form_param_count(*, ch, ch_mult, num_res_blocks, attn_resolutions, size, in_ch, out_ch,
                             resamp_with_conv=True, resblock_updown=False, use_scale_shift_norm=False):
  """The U-Net's parameter count from its layer shapes, in plain Python (no Flax)."""
  conv = lambda ci, co: 9 * ci * co + co   # 3×3 kernel + bias
  dense = lambda ci, co: ci * co + co      # NIN / dense
  norm = lambda c: 2 * c                   # GroupNorm scale + bias
  emb = 4 * ch

  def res(ci, co):  # norm1, conv1, temb_proj (2·co with scale-shift), norm2, conv2, NIN shortcut if ci ≠ co
    return (norm(ci) + conv(ci, co) + dense(emb, (2 if use_scale_shift_norm else 1) * co) + norm(co)
            + conv(co, co) + (dense(ci, co) if ci != co else 0))

  attn = lambda c: norm(c) + 4 * dense(c, c)   # norm, q, k, v, proj_out
  # A level transition at width c: a resampling res block (c → c), a 3×3 conv, or nothing (pool/repeat).
  resample = lambda c: res(c, c) if resblock_updown else (conv(c, c) if resamp_with_conv else 0)

  total = dense(ch, emb) + dense(emb, emb) + conv(in_ch, ch)   # temb dense0/dense1, conv_in
  skips, cur, res_hw = [ch], ch, size
  for i, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += res(cur, ch * mult) + (attn(ch * mult) if res_hw in attn_resolutions else 0)
      cur = ch * mult
      skips.append(cur)
    if i != len(ch_mult) - 1:
      total += resample(cur)
      skips.append(cur)
      res_hw //= 2
  total += 2 * res(cur, cur) + attn(cur)   # mid
  for i, mult in reversed(list(enumerate(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += res(cur + skips.pop(), ch * mult) + (attn(ch * mult) if res_hw in attn_resolutions else 0)
      cur = ch * mult
    if i != 0:
      total += resample(cur)
      res_hw *= 2
  assert not skips
  return total + norm(cur) + conv(cur, out_ch)   # norm_out, conv_out


def test_closed_form_reproduces_the_paper_count():
  # Anchors the formula itself on the published CIFAR-10 model (35.7M, Ho et al. 2020 App. B).
  assert _closed_form_param_count(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                                  size=32, in_ch=3, out_ch=3) == 35_746_307


@pytest.mark.parametrize('resblock_updown,resamp_with_conv,use_scale_shift_norm', [
    (False, True, False), (True, True, False), (True, False, True), (False, False, True)])
def test_parameter_count_matches_closed_form(resblock_updown, resamp_with_conv, use_scale_shift_norm):
  arch = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), out_ch=3)
  opts = dict(resamp_with_conv=resamp_with_conv, use_scale_shift_norm=use_scale_shift_norm)
  params, _ = _shapes(UNet(**arch, **opts, resblock_updown=resblock_updown), (16, 16))
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  assert count == _closed_form_param_count(**arch, **opts, resblock_updown=resblock_updown, size=16,
                                           in_ch=3)
  if resblock_updown:
    # Each of the 4 transitions (widths 32, 64 down; 64, 64 up) trades its conv(c, c) (if any) for a
    # res block (c, c): 2 norms, conv1, conv2, temb_proj of k·c outputs (k = 2 with scale-shift).
    k = 2 if use_scale_shift_norm else 1
    extra = sum(4 * c + 2 * (9 * c * c + c) + 4 * 32 * k * c + k * c - (9 * c * c + c) * resamp_with_conv
                for c in (32, 64, 64, 64))
    plain, _ = _shapes(UNet(**arch, **opts), (16, 16))
    assert count - sum(math.prod(p.shape) for p in jax.tree.leaves(plain)) == extra


def _tree_lines(params):
  return sorted('/'.join(k.key for k in path) + ' ' + str(tuple(p.shape))
                for path, p in jax.tree_util.tree_leaves_with_path(params))


def test_resblock_updown_false_leaves_the_parameter_tree_unchanged():
  params, _ = _shapes(UNet(**TINY, resblock_updown=False), (8, 8))
  lines = _tree_lines(params)
  # sha256 of the 144 sorted 'path shape' lines of UNet(**TINY), taken before resblock_updown existed
  # (commit 6f5bbb5); the TF-checkpoint import depends on these names.
  assert len(lines) == 144
  assert hashlib.sha256('\n'.join(lines).encode()).hexdigest() == (
      '3b802f326e42df95dfcc2715886a6d2258186c80ec501a957b230b3028103cfc')
  assert [l for l in lines if 'sample' in l] == [
      'down_0/downsample/conv/bias (32,)', 'down_0/downsample/conv/kernel (3, 3, 32, 32)',
      'up_1/upsample/conv/bias (64,)', 'up_1/upsample/conv/kernel (3, 3, 64, 64)']
  cfg = dict(TINY, resamp_with_conv=True)
  without = unet_from_config(ml_collections.ConfigDict(cfg))
  assert without.resblock_updown is False
  with_false = unet_from_config(ml_collections.ConfigDict(dict(cfg, resblock_updown=False)))
  assert _tree_lines(_shapes(without, (8, 8))[0]) == _tree_lines(_shapes(with_false, (8, 8))[0]) == lines


def test_resblock_updown_is_validated_and_read_from_config():
  with pytest.raises(ValueError, match=r"UNet.resblock_updown='yes' is invalid: expected a bool"):
    UNet(**TINY, resblock_updown='yes')
  cfg = ml_collections.ConfigDict(dict(TINY, resamp_with_conv=True, resblock_updown=True))
  assert unet_from_config(cfg).resblock_updown is True
  with pytest.raises(ValueError, match=r"ResnetBlock.resample='sideways' is invalid"):
    jax.eval_shape(layers.ResnetBlock(32, resample='sideways').init, jax.random.key(0),
                   jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 8)))


def _avg_pool_np(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample_np(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


@pytest.mark.parametrize('resample', ['down', 'up'])
def test_resampling_res_block_matches_its_description(resample):
  """out = R(x) + conv2(dropout(swish(norm2(conv1(R(swish(norm1(x)))) + dense(swish(temb)))))), in NumPy."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 32)).astype(np.float32)
  temb = rng.normal(size=(2, 16)).astype(np.float32)
  block = layers.ResnetBlock(32, resample=resample)
  params = jax.eval_shape(block.init, jax.random.key(0), x, temb)['params']
  fan_in = lambda p: math.prod(p.shape[:-1]) if len(p.shape) > 1 else 4
  params = jax.tree.map(lambda p: (rng.normal(size=p.shape) / math.sqrt(fan_in(p))).astype(np.float32), params)
  got = np.asarray(block.apply({'params': params}, x, temb))

  def gn(v, p):
    vg = v.reshape(*v.shape[:3], 32, -1)
    mean, var = vg.mean(axis=(1, 2, 4), keepdims=True), vg.var(axis=(1, 2, 4), keepdims=True)
    return ((vg - mean) / np.sqrt(var + 1e-6)).reshape(v.shape) * p['scale'] + p['bias']

  def conv(v, p):  # 3×3, stride 1, zero padding 1
    vp = np.pad(v, [(0, 0), (1, 1), (1, 1), (0, 0)])
    h, w = v.shape[1:3]
    return sum(vp[:, i:i + h, j:j + w] @ p['kernel'][i, j] for i in range(3) for j in range(3)) + p['bias']

  swish = lambda v: v / (1 + np.exp(-v))
  r = _avg_pool_np if resample == 'down' else _upsample_np
  x64, p64 = x.astype(np.float64), jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  h = conv(r(swish(gn(x64, p64['norm1']))), p64['conv1'])
  h = h + (swish(temb.astype(np.float64)) @ p64['temb_proj']['kernel'] + p64['temb_proj']['bias'])[:, None, None]
  want = r(x64) + conv(swish(gn(h, p64['norm2'])), p64['conv2'])
  assert got.shape == want.shape == ((2, 2, 2, 32) if resample == 'down' else (2, 8, 8, 32))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resblock_updown_forward_gradients_and_identity_at_init():
  model = UNet(**TINY, resblock_updown=True)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.array([3, 700], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), x, t)['params']
  block_params = {'conv1', 'conv2', 'norm1', 'norm2', 'temb_proj'}
  assert set(params['down_0']['downsample']) == set(params['up_1']['upsample']) == block_params
  assert params['down_0']['downsample']['conv1']['kernel'].shape == (3, 3, 32, 32)
  assert params['up_1']['upsample']['conv1']['kernel'].shape == (3, 3, 64, 64)

  # At init conv2 is ~0 (scale 1e-10), so each transition is its parameter-free resampling of its input;
  # with conv2 exactly 0, exactly so.
  capture = jax.jit(lambda p: model.apply({'params': p}, x, t, capture_intermediates=True,
                                          mutable=['intermediates']))

  def transitions(p):
    out, state = capture(p)
    inter = state['intermediates']
    get = lambda *path: np.asarray(functools.reduce(lambda d, k: d[k], path, inter)['__call__'][0])
    return (out, get('down_0', 'block_0'), get('down_0', 'downsample'),   # TINY: no attention at 8×8
            get('up_1', 'attn_1'), get('up_1', 'upsample'))

  out, d_in, d_out, u_in, u_out = transitions(params)
  assert out.shape == (2, 8, 8, 3) and np.all(np.isfinite(out))
  assert d_out.shape == (2, 4, 4, 32) and u_out.shape == (2, 8, 8, 64)
  np.testing.assert_allclose(d_out, _avg_pool_np(d_in), atol=1e-4 * np.abs(d_in).max())
  np.testing.assert_allclose(u_out, _upsample_np(u_in), atol=1e-4 * np.abs(u_in).max())
  zeroed = jax.tree.map(lambda p: p, params)
  for level, name in (('down_0', 'downsample'), ('up_1', 'upsample')):
    zeroed[level][name]['conv2'] = jax.tree.map(jnp.zeros_like, params[level][name]['conv2'])
  _, d_in, d_out, u_in, u_out = transitions(zeroed)
  np.testing.assert_allclose(d_out, _avg_pool_np(d_in), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(u_out, _upsample_np(u_in))

  # Gradients reach every parameter of the resampling blocks (perturbed, so no layer is ~0).
  fan_in = lambda p: math.prod(p.shape[:-1]) if p.ndim > 1 else 25
  perturbed = jax.tree.map(
      lambda p: p + jnp.asarray(rng.normal(size=p.shape) * 0.2 / math.sqrt(fan_in(p)), jnp.float32), params)
  grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({'params': p}, x, t) ** 2)))(perturbed)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for level, name in (('down_0', 'downsample'), ('up_1', 'upsample')):
    for path, g in jax.tree_util.tree_leaves_with_path(grads[level][name]):
      assert float(jnp.abs(g).max()) > 0, (level, name, jax.tree_util.keystr(path))

  # remat and bfloat16 compute keep the same parameter tree.
  for variant in (UNet(**TINY, resblock_updown=True, remat=True),
                  UNet(**TINY, resblock_updown=True, dtype=jnp.bfloat16)):
    assert _tree_lines(_shapes(variant, (8, 8))[0]) == _tree_lines(params)
