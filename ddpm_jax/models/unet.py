"""The U-Net of DDPM (Ho et al. 2020, `diffusion_tf/models/unet.py`) as a Flax Linen module.

With default options the network and its initialisation are those of the original, and the parameter
tree mirrors the original TF variable names one-to-one (`model/down_0/block_0/conv1/W` is
`params['down_0']['block_0']['conv1']['kernel']`; see `ddpm_jax.models.convert`), so released
checkpoints load unchanged. Options from Improved DDPM (Nichol & Dhariwal 2021) — class conditioning,
multi-head attention, scale-shift norm, resampling res blocks — and bf16 compute / rematerialisation
are off by default.

Usage:
  model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
               out_ch=3)
  params = model.init({'params': key}, x, t)['params']
  out = model.apply({'params': params}, x, t, train=True, rngs={'dropout': key})
"""

from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax.models import layers

Dtype = Any


class TimestepEmbed(nn.Module):
  """temb = dense1(swish(dense0(sinusoidal(t)))) with width 4·ch (the original 'temb' scope)."""
  ch: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    temb = layers.get_timestep_embedding(t, self.ch)
    temb = layers.Nin(4 * self.ch, name='dense0', **kw)(temb)
    temb = layers.Nin(4 * self.ch, name='dense1', **kw)(layers.swish(temb))
    chex.assert_shape(temb, (t.shape[0], 4 * self.ch))
    return temb


# Recomputes the block's activations in the backward pass instead of storing them. All call arguments
# are arrays (`deterministic` is a field), so no static_argnums are needed.
_RematResnetBlock = nn.remat(layers.ResnetBlock)


class _BlockOptions(nn.Module):
  """Fields shared by the level modules below (not used on its own)."""
  dropout: float = 0.0
  deterministic: bool = True
  use_scale_shift_norm: bool = False
  num_heads: int = 1
  num_head_channels: Optional[int] = None
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def res_block(self, out_ch: int, name: str, *, resample: Optional[str] = None) -> nn.Module:
    cls = _RematResnetBlock if self.remat else layers.ResnetBlock
    return cls(out_ch=out_ch, dropout=self.dropout, deterministic=self.deterministic,
               use_scale_shift_norm=self.use_scale_shift_norm, resample=resample, dtype=self.dtype,
               param_dtype=self.param_dtype, name=name)

  def attn_block(self, name: str) -> nn.Module:
    return layers.AttnBlock(num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                            dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class DownLevel(_BlockOptions):
  """One resolution of the contracting path (the original 'down_{i}' scope).

  Returns the outputs of every res block (after its attention, if any) and of the downsampler: the
  skip connections the expanding path consumes in reverse order. The downsampler ('downsample') is a
  `layers.Downsample`, or with `resblock_updown` a downsampling res block keeping the channel count.
  """
  out_ch: int = 0
  num_res_blocks: int = 0
  attn_resolutions: Sequence[int] = ()
  downsample: bool = False
  resamp_with_conv: bool = True
  resblock_updown: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array) -> list[jax.Array]:
    outputs = []
    for i_block in range(self.num_res_blocks):
      h = self.res_block(self.out_ch, f'block_{i_block}')(h, temb)
      # As in the original, attention is decided by the *current* feature-map height.
      if h.shape[1] in self.attn_resolutions:
        h = self.attn_block(f'attn_{i_block}')(h)
      outputs.append(h)
    if self.downsample and self.resblock_updown:
      outputs.append(self.res_block(self.out_ch, 'downsample', resample='down')(outputs[-1], temb))
    elif self.downsample:
      outputs.append(layers.Downsample(
          with_conv=self.resamp_with_conv, dtype=self.dtype, param_dtype=self.param_dtype,
          name='downsample')(outputs[-1]))
    return outputs


class MidLevel(_BlockOptions):
  """res block → attention → res block at the lowest resolution (the original 'mid' scope)."""

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array) -> jax.Array:
    c = h.shape[-1]
    h = self.res_block(c, 'block_1')(h, temb)
    h = self.attn_block('attn_1')(h)
    return self.res_block(c, 'block_2')(h, temb)


class UpLevel(_BlockOptions):
  """One resolution of the expanding path (the original 'up_{i}' scope).

  Runs num_res_blocks + 1 res blocks, each on [h | skip] concatenated on channels with the skips
  taken from the end of `skips`, then upsamples unless this is the top level: with a `layers.Upsample`
  ('upsample'), or with `resblock_updown` an upsampling res block of the same name keeping the channels.
  """
  out_ch: int = 0
  num_res_blocks: int = 0
  attn_resolutions: Sequence[int] = ()
  upsample: bool = False
  resamp_with_conv: bool = True
  resblock_updown: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, skips: Sequence[jax.Array], temb: jax.Array) -> jax.Array:
    chex.assert_equal(len(skips), self.num_res_blocks + 1)
    for i_block in range(self.num_res_blocks + 1):
      skip = skips[-1 - i_block]
      h = self.res_block(self.out_ch, f'block_{i_block}')(jnp.concatenate([h, skip], axis=-1), temb)
      if h.shape[1] in self.attn_resolutions:
        h = self.attn_block(f'attn_{i_block}')(h)
    if self.upsample and self.resblock_updown:
      h = self.res_block(self.out_ch, 'upsample', resample='up')(h, temb)
    elif self.upsample:
      h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=self.dtype,
                          param_dtype=self.param_dtype, name='upsample')(h)
    return h


class UNet(nn.Module):
  """The DDPM noise-prediction network: a U-Net with timestep embedding and self-attention.

  Attributes:
    ch: base channel count; level i has ch·ch_mult[i] channels. Must be a multiple of 32 (GroupNorm).
    out_ch: output channels (C for ε or x₀ prediction; 2C for learned variances, [mean | variance]).
    num_res_blocks: res blocks per level on the way down (one more on the way up).
    attn_resolutions: feature-map heights at which self-attention follows each res block.
    ch_mult: channel multipliers per level; len(ch_mult) - 1 downsamplings.
    dropout: dropout rate inside res blocks, active only with `train=True`.
    resamp_with_conv: convolutional down/upsampling (True, the original's setting) or pooling/repeat.
    num_classes: None for an unconditional model; otherwise a learned label embedding ('label_emb')
      is added to the timestep embedding and `y` is required. Its entries start N(0, 1), as Improved
      DDPM's (torch's nn.Embedding default), so a label moves temb as much as the timestep does from the
      first step. flax's default, N(0, 1/(4·ch)), gives rows of norm ≈ 1 beside a timestep embedding of
      norm ≈ 5, and at the main job's budget the digit was then learned only weakly (classifier agreement
      38% at guidance w = 3, against 99% with this init: README, "Class-conditional μ-models").
    null_class: the embedding gets one more row, label `num_classes`, the "no label" class that
      classifier-free guidance trains by label dropout and samples as the unconditional model.
    num_heads: attention heads (Improved DDPM); 1 reproduces the original.
    num_head_channels: channels per head; overrides num_heads when set.
    use_scale_shift_norm: AdaGN res blocks (Improved DDPM) instead of adding temb before norm2.
    resblock_updown: Improved DDPM's residual resampling (BigGAN-style): each level transition is a res
      block that resamples inside it (`layers.ResnetBlock(resample='down'/'up')`, channels unchanged)
      instead of a Downsample/Upsample layer. Its parameters take the replaced layer's scope,
      'down_{i}/downsample' and 'up_{i}/upsample' (norm1, conv1, temb_proj, norm2, conv2), and
      `resamp_with_conv` no longer matters. False (the original) leaves the network and its parameter
      names unchanged.
    dtype: computation dtype (e.g. jnp.bfloat16); norms and softmax stay float32, the output is float32.
    param_dtype: parameter dtype, float32.
    remat: rematerialise each res block in the backward pass (less memory, more compute).
    output_scale: a constant s multiplying the last conv's output: out = s·conv_out(h). The last conv
      starts near zero and its input is normalised, so under Adam (update size ≈ lr whatever the gradient
      scale) s sets the output's scale as the last layer's learning rate would: s = 0.01 suits a network
      whose output is ~1% of its input's scale, as a μ-network's correction to x_t is. 1 is the original.
    output_residual: 'none' (the original), 'identity' (out = x + s·conv_out(h): the network learns the
      change from x_t, a residual path of gain 1) or 'learned' (out = g·x + s·conv_out(h), one learned
      scalar g per input channel, initialised at 1). With a learned variance (out_ch = 2C) the path feeds
      the first C channels, the mean block. Needs out_ch ≥ C.
  """
  ch: int
  out_ch: int
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  ch_mult: Sequence[int] = (1, 2, 4, 8)
  dropout: float = 0.0
  resamp_with_conv: bool = True
  num_classes: Optional[int] = None
  null_class: bool = False
  num_heads: int = 1
  num_head_channels: Optional[int] = None
  use_scale_shift_norm: bool = False
  resblock_updown: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  output_scale: float = 1.0
  output_residual: str = 'none'

  def __post_init__(self):
    _check_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: Optional[jax.Array] = None, *,
               train: bool = False) -> jax.Array:
    """Returns the raw network output [B, H, W, out_ch] (float32) for images x [B, H, W, C] at t [B].

    Args:
      x: NHWC images; H and W divisible by 2**(len(ch_mult) - 1).
      t: [B] timesteps (integer, or real for respaced samplers).
      y: [B] integer class labels when num_classes is set, else None.
      train: enables dropout (then pass rngs={'dropout': key}).
    """
    if x.ndim != 4:
      raise ValueError(f'x must be NHWC [B, H, W, C], got shape {x.shape}.')
    b, height, width, _ = x.shape
    factor = 2 ** (len(self.ch_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(
          f'Input spatial size {height}x{width} is not divisible by 2**(len(ch_mult) - 1) = {factor} '
          f'(ch_mult={tuple(self.ch_mult)}); use a size that is a multiple of {factor}.')
    if t.shape != (b,):
      raise ValueError(f't must have shape [B] = ({b},), got {t.shape}.')
    if self.num_classes is None:
      if y is not None:
        raise ValueError('y was given but the UNet is unconditional (num_classes=None).')
    else:
      if y is None:
        raise ValueError(f'y (class labels) is required: the UNet has num_classes={self.num_classes}.')
      if y.shape != (b,) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f'y must be integer labels of shape ({b},), got {y.dtype}{y.shape}.')

    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    opts = dict(dropout=self.dropout, deterministic=not train,
                use_scale_shift_norm=self.use_scale_shift_norm, num_heads=self.num_heads,
                num_head_channels=self.num_head_channels, remat=self.remat, **kw)
    num_levels = len(self.ch_mult)

    temb = TimestepEmbed(self.ch, name='temb', **kw)(t)
    if self.num_classes is not None:
      rows = self.num_classes + (1 if self.null_class else 0)
      temb = temb + nn.Embed(rows, 4 * self.ch, name='label_emb', embedding_init=nn.initializers.normal(1.0),
                             param_dtype=self.param_dtype)(y).astype(temb.dtype)

    hs = [layers.Conv3x3(self.ch, name='conv_in', **kw)(x)]
    for i_level in range(num_levels):
      hs += DownLevel(
          out_ch=self.ch * self.ch_mult[i_level], num_res_blocks=self.num_res_blocks,
          attn_resolutions=tuple(self.attn_resolutions), downsample=i_level != num_levels - 1,
          resamp_with_conv=self.resamp_with_conv, resblock_updown=self.resblock_updown,
          name=f'down_{i_level}', **opts)(hs[-1], temb)

    h = MidLevel(name='mid', **opts)(hs[-1], temb)

    for i_level in reversed(range(num_levels)):
      skips, hs = hs[-(self.num_res_blocks + 1):], hs[:-(self.num_res_blocks + 1)]
      h = UpLevel(
          out_ch=self.ch * self.ch_mult[i_level], num_res_blocks=self.num_res_blocks,
          attn_resolutions=tuple(self.attn_resolutions), upsample=i_level != 0,
          resamp_with_conv=self.resamp_with_conv, resblock_updown=self.resblock_updown,
          name=f'up_{i_level}', **opts)(h, skips, temb)
    assert not hs, 'every skip connection must be consumed'

    h = layers.swish(layers.GroupNorm(param_dtype=self.param_dtype, name='norm_out')(h))
    h = layers.Conv3x3(self.out_ch, init_scale=0.0, name='conv_out', **kw)(h)
    chex.assert_shape(h, (b, height, width, self.out_ch))
    h = h.astype(jnp.float32)
    if self.output_scale != 1.0:
      h = h * jnp.float32(self.output_scale)
    if self.output_residual != 'none':
      c = x.shape[-1]
      if self.out_ch < c:
        raise ValueError(f'output_residual={self.output_residual!r} adds the {c}-channel input to the '
                         f'output, but out_ch={self.out_ch} < {c}.')
      skip = x.astype(jnp.float32)
      if self.output_residual == 'learned':
        skip = skip * self.param('residual_gain', nn.initializers.ones, (c,), self.param_dtype)
      h = h.at[..., :c].add(skip)
    return h


def _check_fields(m: UNet) -> None:
  """Raises ValueError naming the first bad UNet field, its value and what is accepted."""
  def bad(field, value, accepted):
    raise ValueError(f'UNet.{field}={value!r} is invalid: expected {accepted}.')

  if not isinstance(m.ch, (int, np.integer)) or m.ch <= 0:
    bad('ch', m.ch, 'a positive int')
  if not m.ch_mult or any(not isinstance(c, (int, np.integer)) or c <= 0 for c in m.ch_mult):
    bad('ch_mult', m.ch_mult, 'a non-empty sequence of positive ints')
  widths = [m.ch] + [m.ch * c for c in m.ch_mult]
  if any(w % layers.NUM_GROUPS for w in widths):
    bad('ch', m.ch, f'ch and every ch·ch_mult[i] divisible by the {layers.NUM_GROUPS} GroupNorm '
        f'groups (channel widths would be {widths})')
  if not isinstance(m.out_ch, (int, np.integer)) or m.out_ch <= 0:
    bad('out_ch', m.out_ch, 'a positive int')
  if not isinstance(m.num_res_blocks, (int, np.integer)) or m.num_res_blocks < 1:
    bad('num_res_blocks', m.num_res_blocks, 'an int >= 1')
  if isinstance(m.attn_resolutions, (str, int)) or any(
      not isinstance(r, (int, np.integer)) or r <= 0 for r in m.attn_resolutions):
    bad('attn_resolutions', m.attn_resolutions, 'a sequence of positive ints (feature-map heights)')
  if not isinstance(m.dropout, (int, float, np.floating)) or not 0.0 <= m.dropout < 1.0:
    bad('dropout', m.dropout, 'a rate in [0, 1)')
  if m.num_classes is not None and (not isinstance(m.num_classes, (int, np.integer))
                                    or m.num_classes < 1):
    bad('num_classes', m.num_classes, 'None (unconditional) or a positive int')
  if m.null_class and m.num_classes is None:
    bad('null_class', m.null_class, 'False for an unconditional model (the null class is a label row)')
  if not isinstance(m.num_heads, (int, np.integer)) or m.num_heads < 1:
    bad('num_heads', m.num_heads, 'a positive int')
  if m.num_head_channels is not None and (
      not isinstance(m.num_head_channels, (int, np.integer)) or m.num_head_channels < 1):
    bad('num_head_channels', m.num_head_channels, 'None or a positive int')
  if not isinstance(m.resblock_updown, (bool, np.bool_)):
    bad('resblock_updown', m.resblock_updown, 'a bool (False: the original Downsample/Upsample layers)')
  if (not isinstance(m.output_scale, (int, float, np.floating)) or isinstance(m.output_scale, bool)
      or not np.isfinite(m.output_scale) or m.output_scale <= 0):
    bad('output_scale', m.output_scale, 'a positive finite number (1.0: the original network)')
  if m.output_residual not in OUTPUT_RESIDUALS:
    bad('output_residual', m.output_residual, 'one of ' + ', '.join(repr(r) for r in OUTPUT_RESIDUALS))
  if jnp.dtype(m.param_dtype) != jnp.float32:
    bad('param_dtype', m.param_dtype, 'float32 (compute in lower precision with `dtype`)')
  if not jnp.issubdtype(jnp.dtype(m.dtype), jnp.floating):
    bad('dtype', m.dtype, 'a floating dtype such as float32 or bfloat16')


# UNet.output_residual: no path, a gain-1 path, or a learned per-channel gain from x_t to the output.
OUTPUT_RESIDUALS = ('none', 'identity', 'learned')

# Fields of `config.model` that `unet_from_config` reads, with their defaults (None: required).
_REQUIRED = ('ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'dropout', 'resamp_with_conv',
             'out_ch')
_OPTIONAL = {'num_classes': None, 'null_class': False, 'num_heads': 1, 'num_head_channels': None,
             'use_scale_shift_norm': False, 'resblock_updown': False, 'dtype': 'float32', 'remat': False,
             'output_scale': 1.0, 'output_residual': 'none'}
# Fields other parts of the project may keep in `config.model` that do not concern the network.
_IGNORED = ('name',)
# Training options in `config.model` that decide a network field: label_dropout > 0 trains a null class.
_DERIVED = ('label_dropout',)
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def unet_from_config(model_config: ml_collections.ConfigDict) -> UNet:
  """Builds the UNet described by a `config.model` ConfigDict.

  Required fields: ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv, out_ch.
  Optional: num_classes (None), num_heads (1), num_head_channels (None), use_scale_shift_norm (False),
  resblock_updown (False), dtype ('float32' | 'bfloat16' | 'float16'), remat (False), output_scale (1.0),
  output_residual ('none'), label_dropout (0.0; > 0 adds the null class). A 'name' field is ignored; any
  other field is an error (it would otherwise be silently dropped).
  """
  fields = dict(model_config.items()) if hasattr(model_config, 'items') else None
  if fields is None:
    raise TypeError(f'model_config must be an ml_collections.ConfigDict, got {type(model_config)}.')
  missing = [k for k in _REQUIRED if k not in fields]
  if missing:
    raise ValueError(f'config.model is missing required field(s) {missing}; '
                     f'required: {list(_REQUIRED)}, optional: {sorted(_OPTIONAL)}.')
  unknown = sorted(k for k in fields if k not in _REQUIRED and k not in _OPTIONAL
                   and k not in _IGNORED and k not in _DERIVED)
  if unknown:
    raise ValueError(f'config.model has unknown field(s) {unknown}; accepted: '
                     f'{list(_REQUIRED) + sorted(_OPTIONAL) + list(_IGNORED) + list(_DERIVED)}.')
  kwargs = {k: fields[k] for k in _REQUIRED}
  kwargs.update({k: fields.get(k, default) for k, default in _OPTIONAL.items()})
  label_dropout = fields.get('label_dropout') or 0.0
  if not isinstance(label_dropout, (int, float)) or isinstance(label_dropout, bool) or not 0 <= label_dropout < 1:
    raise ValueError(f'config.model.label_dropout={label_dropout!r} is invalid: expected a probability in '
                     '[0, 1) (0: no null class).')
  if label_dropout > 0:
    if kwargs['num_classes'] is None:
      raise ValueError(f'config.model.label_dropout={label_dropout!r} is invalid: expected 0 for an '
                       'unconditional model (set model.num_classes).')
    kwargs['null_class'] = True
  dtype = kwargs['dtype']
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f'config.model.dtype={dtype!r} is invalid: expected one of {sorted(_DTYPES)}.')
    kwargs['dtype'] = _DTYPES[dtype]
  for k in ('ch_mult', 'attn_resolutions'):
    if isinstance(kwargs[k], (str, int)) or not hasattr(kwargs[k], '__iter__'):
      raise ValueError(f'config.model.{k}={kwargs[k]!r} is invalid: expected a sequence of ints.')
    kwargs[k] = tuple(kwargs[k])
  return UNet(**kwargs)
