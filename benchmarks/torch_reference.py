r"""A PyTorch version of the project's DDPM U-Net, train step and sampling step, as a speed reference.

Written from `ddpm_jax/models/unet.py` and `ddpm_jax/models/layers.py` (not taken from any other code
base) so that `compare_torch.py` can time the same network in both frameworks on the same CPU. The network
is built from a project config (through `ddpm_jax.experiment.create_model`, so the fields and output channels are
the ones the JAX side uses) and its parameter count is checked against the Flax model's: 1,112,801 for the
main-job net (`configs/mnist_mu.py`), 35,746,307 for the CIFAR-10 net (`configs/cifar10_mu_vlb_fixed.py`).

What is reproduced, operation for operation: sinusoidal timestep embedding (sin block first) → dense →
swish → dense (width 4·ch); conv_in 3×3; per level `num_res_blocks` res blocks (GroupNorm(32, eps 1e-6) →
swish → conv3×3, + dense(swish(temb)), GroupNorm → swish → dropout → conv3×3, a 1×1 "NIN" shortcut when
the channel count changes), single-head self-attention (C^-1/2 logits, 1×1 q/k/v/proj_out) after each res
block whose feature-map height is in `attn_resolutions`; downsampling by a 3×3 stride-2 conv with
TensorFlow "SAME" padding (0 before, 1 after on even sizes, `layers.tf_same_padding`); the middle res /
attention / res; the up path with skip concatenations and num_res_blocks + 1 blocks per level, nearest ×2
upsampling + conv; GroupNorm → swish → conv3×3 out, times `model.output_scale`, plus x_t on the mean
channels when `model.output_residual` is 'identity' (or g·x_t, g learned, for 'learned'): the main-job
net's x_t + 0.01·conv_out(h). Initialisation mirrors `layers.default_init`
(variance-scaling fan_avg uniform, 1e-10 for the zero-initialised convs); weights do not change the cost.
Not reproduced (refused with an error): class conditioning, multi-head attention, scale-shift norm,
pooling resamplers. The torch net is always built in float32; bfloat16 compute is `dtype="bfloat16"` on
the trainer/sampler (torch.autocast), the counterpart of `config.model.dtype="bfloat16"` on the JAX side.
Devices: the net, images and steps run wherever `model.to(device)` puts them (CPU by default; CUDA for the
GPU rows of compare_torch.py).

Implementation choices (measured on the 2-core development CPU, torch 2.14, main-job net, batch 32):
  * Memory layout: NCHW (torch's default). channels_last was ~11% slower for the train step (0.63 vs
    0.56 s/step, best of 4, one thread) and no faster for the forward pass (0.23 s at batch 32 in both);
    `layout="channels_last"` is kept for other machines.
  * Attention: `torch.nn.functional.scaled_dot_product_attention` with one head (its default scale is
    C^-1/2, the original's).
  * swish(temb) is computed once per forward and shared by all res blocks (XLA CSEs the same expression
    on the JAX side).
  * Dropout layers are omitted when the rate is 0 (Flax's Dropout returns its input at rate 0 too).
  * Train step (`TorchTrainer.step`): random t (uniform), x_t = √ᾱ_t·x₀ + √(1-ᾱ_t)·ε with the config's
    schedule, forward in train mode, MSE of the output against a fixed random target, backward,
    `clip_grad_norm_(foreach=True)` at `optim.grad_clip` (the JAX optimizer clips too), `torch.optim.Adam`
    (fused CPU kernel when this torch has one, else foreach) and an EMA update of every parameter with
    `torch._foreach_lerp_` (ema += (1 - decay)·(p - ema), one multi-tensor op).
  * Sampling step (`TorchSampler.step`): one network evaluation in eval mode under `torch.no_grad()`.
  * Eager mode (no torch.compile); `torch.set_num_threads(threads)` sets the intra-op pool.

`load_flax_params` copies a Flax parameter tree into the torch net (compare_torch.py starts both sides from
the same weights); with the same weights the outputs agree to float32 rounding (`max_output_difference`:
1.2e-7 for the main-job net, whose output is x_t + 0.01·conv_out; the CIFAR-10 net's is printed too).

  python benchmarks/torch_reference.py  # self-check: both parameter counts, 2 tiny steps each, output equality

Needs torch (`pip install -e ".[bench]"`); importing this module without torch works, using it does not.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ddpm_jax` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

try:
  import torch  # noqa: E402
  import torch.nn.functional as F  # noqa: E402
  _Module = torch.nn.Module
  _TORCH_IMPORT_ERROR = None
except ImportError as e:  # the CI and run-time venvs have no torch; only the use of this module needs it
  torch = F = None
  _Module = object
  _TORCH_IMPORT_ERROR = e

from ddpm_jax.models.layers import GROUP_NORM_EPSILON, NUM_GROUPS, ZERO_INIT_SCALE, tf_same_padding  # noqa: E402

INSTALL_MESSAGE = ('PyTorch is needed for the torch reference benchmark but could not be imported ({error}). '
                   'Install the benchmark extra from the repository root:  pip install -e ".[bench]"')

# The parameter counts of the two configs the comparison runs (DESIGN.md, "Facts worth having at hand").
KNOWN_PARAM_COUNTS = {"configs/mnist_mu.py": 1_112_801, "configs/cifar10_mu_vlb_fixed.py": 35_746_307}

LAYOUTS = ("nchw", "channels_last")


def require_torch() -> None:
  """Exits with the install command (status 1) when torch cannot be imported."""
  if torch is None:
    raise SystemExit(INSTALL_MESSAGE.format(error=_TORCH_IMPORT_ERROR))


# ------------------------------------------------------------------------------------------------------------
# Layers.
# ------------------------------------------------------------------------------------------------------------


def _default_init_(weight, bias, scale: float = 1.0) -> None:
  """variance_scaling(scale, fan_avg, uniform), scale 0 meaning 1e-10 (`layers.default_init`); bias 0."""
  scale = ZERO_INIT_SCALE if scale == 0 else scale
  receptive = int(np.prod(weight.shape[2:])) if weight.dim() > 2 else 1
  fan_out, fan_in = weight.shape[0] * receptive, weight.shape[1] * receptive
  limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
  with torch.no_grad():
    weight.uniform_(-limit, limit)
    bias.zero_()


def _conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding: int = 0, init_scale: float = 1.0):
  conv = torch.nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding)
  _default_init_(conv.weight, conv.bias, init_scale)
  return conv


def _dense(in_f: int, out_f: int, init_scale: float = 1.0):
  lin = torch.nn.Linear(in_f, out_f)
  _default_init_(lin.weight, lin.bias, init_scale)
  return lin


def _norm(ch: int):
  return torch.nn.GroupNorm(NUM_GROUPS, ch, eps=GROUP_NORM_EPSILON)


def timestep_embedding(t, dim: int):
  """[sin(t·f) | cos(t·f)], f_i = exp(-i·log(10000)/(half - 1)), zero-padded to odd `dim` (as the original)."""
  half = dim // 2
  freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
  args = t.to(torch.float32)[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
  return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResnetBlock(_Module):
  """h = conv1(swish(norm1(x))) + dense(swish(temb)); h = conv2(dropout(swish(norm2(h)))); x' + h."""

  def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float):
    super().__init__()
    self.norm1 = _norm(in_ch)
    self.conv1 = _conv(in_ch, out_ch, 3, padding=1)
    self.temb_proj = _dense(temb_ch, out_ch)
    self.norm2 = _norm(out_ch)
    self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
    self.conv2 = _conv(out_ch, out_ch, 3, padding=1, init_scale=0.0)
    self.nin_shortcut = _conv(in_ch, out_ch, 1) if in_ch != out_ch else None

  def forward(self, x, temb_act):
    """`temb_act` is swish(temb), computed once per network evaluation."""
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb_proj(temb_act)[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
    return shortcut + h


class AttnBlock(_Module):
  """x + proj_out(softmax(q·kᵀ / √C)·v), single head over the H·W positions; q, k, v 1×1 convs of norm(x)."""

  def __init__(self, ch: int):
    super().__init__()
    self.norm = _norm(ch)
    self.q = _conv(ch, ch, 1)
    self.k = _conv(ch, ch, 1)
    self.v = _conv(ch, ch, 1)
    self.proj_out = _conv(ch, ch, 1, init_scale=0.0)

  def forward(self, x):
    b, c, height, width = x.shape
    h = self.norm(x)
    tokens = lambda a: a.reshape(b, c, height * width).transpose(1, 2)[:, None]  # [B, 1, HW, C]
    out = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
    out = out[:, 0].transpose(1, 2).reshape(b, c, height, width)
    return x + self.proj_out(out)


class Downsample(_Module):
  """3×3 stride-2 conv with TensorFlow SAME padding (pad 0 before, 1 after on an even size)."""

  def __init__(self, ch: int):
    super().__init__()
    self.conv = _conv(ch, ch, 3, stride=2)

  def forward(self, x):
    top, bottom = tf_same_padding(x.shape[2], kernel_size=3, stride=2)
    left, right = tf_same_padding(x.shape[3], kernel_size=3, stride=2)
    return self.conv(F.pad(x, (left, right, top, bottom)))


class Upsample(_Module):
  """Nearest-neighbour ×2, then a 3×3 conv."""

  def __init__(self, ch: int):
    super().__init__()
    self.conv = _conv(ch, ch, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# ------------------------------------------------------------------------------------------------------------
# The U-Net.
# ------------------------------------------------------------------------------------------------------------


class UNet(_Module):
  """The DDPM U-Net of `ddpm_jax.models.unet.UNet` (default options) on NCHW tensors: forward(x, t) → output."""

  def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
               attn_resolutions: Sequence[int], dropout: float, in_ch: int, resolution: int,
               output_scale: float = 1.0, output_residual: str = "none"):
    super().__init__()
    self.ch, self.num_res_blocks = ch, num_res_blocks
    if output_residual not in ("none", "identity", "learned"):
      raise ValueError(f"output_residual={output_residual!r} is invalid: expected 'none', 'identity' or 'learned'.")
    if output_residual != "none" and out_ch < in_ch:
      raise ValueError(f"output_residual={output_residual!r} needs out_ch >= in_ch, got {out_ch} < {in_ch}.")
    # out = s·conv_out(h), plus x_t (or g·x_t, g learned per channel) on the first in_ch channels.
    self.output_scale, self.output_residual = float(output_scale), output_residual
    self.residual_gain = torch.nn.Parameter(torch.ones(in_ch)) if output_residual == "learned" else None
    temb_ch = 4 * ch
    self.temb_dense0 = _dense(ch, temb_ch)
    self.temb_dense1 = _dense(temb_ch, temb_ch)
    self.conv_in = _conv(in_ch, ch, 3, padding=1)
    # (torch submodule name, Flax parameter path) of every block, for `load_flax_params`.
    self.flax_paths = [("temb_dense0", ("temb", "dense0")), ("temb_dense1", ("temb", "dense1")),
                       ("conv_in", ("conv_in",))]

    # The contracting path, in call order: ('block', module, has_attn) / ('down', module); the channel
    # count of every tensor pushed on the skip stack is tracked to size the expanding path's inputs.
    self.down = torch.nn.ModuleList()
    self.down_attn = torch.nn.ModuleDict()
    skip_ch = [ch]
    cur, res = ch, resolution
    num_levels = len(ch_mult)
    for i_level, mult in enumerate(ch_mult):
      out = ch * mult
      for i_block in range(num_res_blocks):
        self.down.append(ResnetBlock(cur, out, temb_ch, dropout))
        idx = len(self.down) - 1
        self.flax_paths.append((f"down.{idx}", (f"down_{i_level}", f"block_{i_block}")))
        cur = out
        if res in attn_resolutions:
          self.down_attn[str(idx)] = AttnBlock(cur)
          self.flax_paths.append((f"down_attn.{idx}", (f"down_{i_level}", f"attn_{i_block}")))
        skip_ch.append(cur)
      if i_level != num_levels - 1:
        self.down.append(Downsample(cur))
        self.flax_paths.append((f"down.{len(self.down) - 1}", (f"down_{i_level}", "downsample")))
        res //= 2
        skip_ch.append(cur)

    self.mid_block_1 = ResnetBlock(cur, cur, temb_ch, dropout)
    self.mid_attn_1 = AttnBlock(cur)
    self.mid_block_2 = ResnetBlock(cur, cur, temb_ch, dropout)
    self.flax_paths += [("mid_block_1", ("mid", "block_1")), ("mid_attn_1", ("mid", "attn_1")),
                        ("mid_block_2", ("mid", "block_2"))]

    self.up = torch.nn.ModuleList()
    self.up_attn = torch.nn.ModuleDict()
    for i_level in reversed(range(num_levels)):
      out = ch * ch_mult[i_level]
      for i_block in range(num_res_blocks + 1):
        self.up.append(ResnetBlock(cur + skip_ch.pop(), out, temb_ch, dropout))
        idx = len(self.up) - 1
        self.flax_paths.append((f"up.{idx}", (f"up_{i_level}", f"block_{i_block}")))
        cur = out
        if res in attn_resolutions:
          self.up_attn[str(idx)] = AttnBlock(cur)
          self.flax_paths.append((f"up_attn.{idx}", (f"up_{i_level}", f"attn_{i_block}")))
      if i_level != 0:
        self.up.append(Upsample(cur))
        self.flax_paths.append((f"up.{len(self.up) - 1}", (f"up_{i_level}", "upsample")))
        res *= 2
    assert not skip_ch, "every skip connection must be consumed"

    self.norm_out = _norm(cur)
    self.conv_out = _conv(cur, out_ch, 3, padding=1, init_scale=0.0)
    self.flax_paths += [("norm_out", ("norm_out",)), ("conv_out", ("conv_out",))]

  def forward(self, x, t):
    temb = self.temb_dense1(F.silu(self.temb_dense0(timestep_embedding(t, self.ch))))
    temb_act = F.silu(temb)
    hs = [self.conv_in(x)]
    for i, layer in enumerate(self.down):
      if isinstance(layer, Downsample):
        hs.append(layer(hs[-1]))
      else:
        h = layer(hs[-1], temb_act)
        if str(i) in self.down_attn:
          h = self.down_attn[str(i)](h)
        hs.append(h)
    h = self.mid_block_2(self.mid_attn_1(self.mid_block_1(hs[-1], temb_act)), temb_act)
    for i, layer in enumerate(self.up):
      if isinstance(layer, Upsample):
        h = layer(h)
      else:
        h = layer(torch.cat([h, hs.pop()], dim=1), temb_act)
        if str(i) in self.up_attn:
          h = self.up_attn[str(i)](h)
    assert not hs, "every skip connection must be consumed"
    out = self.conv_out(F.silu(self.norm_out(h))).float()
    if self.output_scale != 1.0:
      out = out * self.output_scale
    if self.output_residual != "none":
      c = x.shape[1]
      skip = x.float() if self.residual_gain is None else x.float() * self.residual_gain.view(1, c, 1, 1)
      out = torch.cat([out[:, :c] + skip, out[:, c:]], dim=1)
    return out


def _copy_leaf(module, leaf: dict) -> int:
  """Copies one Flax layer's parameters into a torch layer; returns the number of values copied."""
  if isinstance(module, torch.nn.GroupNorm):
    pairs = [(module.weight, leaf["scale"]), (module.bias, leaf["bias"])]
  elif isinstance(module, torch.nn.Linear):  # Nin kernel [in, out] → weight [out, in]
    pairs = [(module.weight, np.asarray(leaf["kernel"]).T), (module.bias, leaf["bias"])]
  elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):  # Nin on feature maps
    pairs = [(module.weight, np.asarray(leaf["kernel"]).T[:, :, None, None]), (module.bias, leaf["bias"])]
  elif isinstance(module, torch.nn.Conv2d):  # HWIO → OIHW
    pairs = [(module.weight, np.asarray(leaf["kernel"]).transpose(3, 2, 0, 1)), (module.bias, leaf["bias"])]
  else:
    raise TypeError(f"no Flax counterpart for {type(module).__name__}")
  with torch.no_grad():
    for param, value in pairs:
      value = torch.from_numpy(np.array(value, np.float32))  # a writable copy
      if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"shape mismatch: Flax {tuple(value.shape)} vs torch {tuple(param.shape)}")
      param.copy_(value)
  return sum(int(np.prod(p.shape)) for p, _ in pairs)


def load_flax_params(model: "UNet", params: Any) -> None:
  """Sets the torch U-Net's weights to a Flax U-Net's `params` (every parameter, checked by count)."""
  params = {k: v for k, v in params.items()}
  copied = 0
  for torch_name, flax_path in model.flax_paths:
    node = params
    for part in flax_path:
      node = node[part]
    block = model.get_submodule(torch_name)
    children = dict(block.named_children())
    if not children:  # a single layer (conv_in, norm_out, temb dense)
      copied += _copy_leaf(block, node)
      continue
    for child_name, child in children.items():
      if child_name == "dropout" or child is None:
        continue
      copied += _copy_leaf(child, node[child_name])
  if model.residual_gain is not None:
    with torch.no_grad():
      model.residual_gain.copy_(torch.from_numpy(np.array(params["residual_gain"], np.float32)))
    copied += model.residual_gain.numel()
  if copied != count_params(model):
    raise AssertionError(f"copied {copied:,} of {count_params(model):,} parameters from the Flax tree.")


def count_params(model) -> int:
  return int(sum(p.numel() for p in model.parameters()))


def flax_param_count(flax_model, image_shape: Sequence[int]) -> int:
  """Parameters of the Flax U-Net at this image shape, from shapes only (`jax.eval_shape`: nothing is run)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(lambda x, t: flax_model.init({"params": jax.random.PRNGKey(0)}, x, t), x, t)
  return int(sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])))


def build_model(config: ml_collections.ConfigDict, image_shape: Sequence[int], *, layout: str = "nchw",
                expected_params: int | None = None):
  """The torch U-Net of a project config, checked to have exactly the Flax model's parameter count.

  Args:
    config: a project config (`config.model`, `config.diffusion` give the network and its output channels).
    image_shape: (H, W, C) of the images.
    layout: "nchw" or "channels_last" (the memory format of the weights; inputs are converted by callers).
    expected_params: the Flax model's parameter count, if already known; else computed with `jax.eval_shape`.

  Returns:
    The torch module (train mode, float32 parameters, on the CPU: move it with `.to(device)`).
  """
  require_torch()
  from ddpm_jax import experiment as experiment_lib  # pylint: disable=g-import-not-at-top  (imports jax)
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r} is invalid: expected one of {LAYOUTS}.")
  flax_model = experiment_lib.create_model(config, image_shape)
  unsupported = {"num_classes": None, "num_heads": 1, "num_head_channels": None, "use_scale_shift_norm": False,
                 "resamp_with_conv": True, "resblock_updown": False}
  for field, supported in unsupported.items():
    if getattr(flax_model, field) != supported:
      raise NotImplementedError(f"config.model.{field}={getattr(flax_model, field)!r} is not supported by the "
                                f"torch reference (only {supported!r}).")
  if np.dtype(flax_model.dtype).name not in AUTOCAST_DTYPES:
    raise NotImplementedError(f"config.model.dtype={config.model.dtype!r} is not supported by the torch "
                              f"reference (one of {AUTOCAST_DTYPES}; the torch net keeps float32 parameters "
                              "either way and bfloat16 compute is the trainer's/sampler's dtype=).")
  h, w, c = image_shape
  if h != w:
    raise NotImplementedError(f"image_shape={tuple(image_shape)}: the torch reference handles square images only.")
  model = UNet(ch=flax_model.ch, out_ch=flax_model.out_ch, ch_mult=tuple(flax_model.ch_mult),
               num_res_blocks=flax_model.num_res_blocks, attn_resolutions=tuple(flax_model.attn_resolutions),
               dropout=float(flax_model.dropout), in_ch=c, resolution=h,
               output_scale=float(flax_model.output_scale), output_residual=flax_model.output_residual)
  expected = flax_param_count(flax_model, image_shape) if expected_params is None else int(expected_params)
  got = count_params(model)
  if got != expected:
    raise AssertionError(f"torch U-Net has {got:,} parameters, the Flax model {expected:,}: the two networks differ.")
  if layout == "channels_last":
    model = model.to(memory_format=torch.channels_last)
  return model


def to_torch_images(images: np.ndarray, layout: str = "nchw", device: str = "cpu"):
  """NHWC host images → an NCHW float32 torch tensor on `device` in the given memory layout."""
  x = torch.from_numpy(np.array(np.asarray(images, np.float32).transpose(0, 3, 1, 2), order="C", copy=True))
  x = x.to(device)
  return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()


AUTOCAST_DTYPES = ("float32", "bfloat16")


def _autocast(device, dtype: str):
  """The forward's compute-dtype context: float32 as is, or torch.autocast to bfloat16.

  autocast runs convolutions and matrix products in bfloat16 and keeps GroupNorm, softmax and the loss in
  float32, with float32 parameters: the same split as the Flax model at `config.model.dtype="bfloat16"`
  (layers.py: parameters float32, group norm and attention softmax in float32).
  """
  if dtype not in AUTOCAST_DTYPES:
    raise ValueError(f"dtype={dtype!r} is invalid: expected one of {AUTOCAST_DTYPES}.")
  if dtype == "float32":
    return contextlib.nullcontext()
  return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------------------
# Steps.
# ------------------------------------------------------------------------------------------------------------


def _make_adam(params, *, lr: float, betas: tuple[float, float], eps: float):
  """Adam with the fused CPU kernel when this torch has one, else the multi-tensor (foreach) version."""
  try:
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True), "fused"
  except (RuntimeError, TypeError, ValueError):
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True), "foreach"


class TorchTrainer:
  """One training step: random t, q_sample, forward, MSE against a random target, backward, clip, Adam, EMA."""

  def __init__(self, model, config: ml_collections.ConfigDict, *, layout: str = "nchw",
               dtype: str = "float32"):
    require_torch()
    from ddpm_jax import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
    o = config.optim
    self.model, self.layout, self.dtype = model.train(), layout, dtype
    self.device = next(model.parameters()).device
    _autocast(self.device, dtype)  # validates dtype
    self.params = [p for p in model.parameters() if p.requires_grad]
    self.ema_params = [p.detach().clone() for p in self.params]
    self.ema_decay = float(o.ema_decay)
    self.grad_clip = float(o.grad_clip) if o.grad_clip else None
    self.optimizer, self.adam_impl = _make_adam(self.params, lr=float(o.learning_rate),
                                                betas=(float(o.beta1), float(o.beta2)), eps=float(o.eps))
    diffusion = experiment_lib.create_diffusion(config)
    self.num_timesteps = int(config.diffusion.num_timesteps)
    self.sqrt_ac = torch.tensor(diffusion.sqrt_alphas_cumprod, dtype=torch.float32, device=self.device)
    self.sqrt_1m_ac = torch.tensor(diffusion.sqrt_one_minus_alphas_cumprod, dtype=torch.float32,
                                   device=self.device)

  def step(self, x0, target):
    """One optimizer step on the batch x0 [B, C, H, W]; returns the (detached) loss."""
    b = x0.shape[0]
    t = torch.randint(0, self.num_timesteps, (b,), device=self.device)
    noise = torch.randn_like(x0)
    x_t = self.sqrt_ac[t].view(b, 1, 1, 1) * x0 + self.sqrt_1m_ac[t].view(b, 1, 1, 1) * noise
    with _autocast(self.device, self.dtype):
      out = self.model(x_t, t)
    loss = F.mse_loss(out.float(), target)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.grad_clip is not None:
      torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
    self.optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.ema_decay)  # pylint: disable=protected-access
    return loss.detach()


class TorchSampler:
  """One network evaluation as in a sampling step: eval mode, under torch.no_grad()."""

  def __init__(self, model, config: ml_collections.ConfigDict, *, dtype: str = "float32"):
    require_torch()
    self.model, self.dtype = model.eval(), dtype
    self.device = next(model.parameters()).device
    _autocast(self.device, dtype)  # validates dtype
    self.num_timesteps = int(config.diffusion.num_timesteps)

  def step(self, x):
    t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device)
    with torch.no_grad(), _autocast(self.device, self.dtype):
      return self.model(x, t)


# ------------------------------------------------------------------------------------------------------------
# Self-check.
# ------------------------------------------------------------------------------------------------------------


def max_output_difference(config: ml_collections.ConfigDict, image_shape: Sequence[int], *, batch: int = 2,
                          seed: int = 0) -> tuple[float, float]:
  """Runs the Flax U-Net and the torch U-Net (loaded with the Flax weights) on the same inputs.

  Weights are Flax's random init with the zero-initialised layers re-drawn at full scale (so that every
  layer shows in the output). Returns (max |flax - torch|, max |flax|) over a batch of random images and t.
  """
  require_torch()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ddpm_jax import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  flax_model = experiment_lib.create_model(config, image_shape)
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (batch,) + tuple(image_shape)).astype(np.float32)
  t = rng.integers(0, config.diffusion.num_timesteps, (batch,)).astype(np.int32)
  params = flax_model.init({"params": jax.random.PRNGKey(seed)}, jnp.asarray(x), jnp.asarray(t))["params"]
  # Near-zero-initialised kernels (conv2, proj_out, conv_out) would hide whole branches: redraw them all.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(treedef, [
      jax.random.normal(k, a.shape) * (0.1 if a.ndim == 1 else 1.0 / np.sqrt(np.prod(a.shape[:-1])))
      + (1.0 if a.ndim == 1 else 0.0) for k, a in zip(keys, leaves)])
  expected = np.asarray(jax.jit(lambda p, x, t: experiment_lib.model_fn(flax_model, p)(x, t))(params, x, t))
  model = build_model(config, image_shape).eval()
  load_flax_params(model, jax.device_get(params))
  with torch.no_grad():
    got = model(to_torch_images(x), torch.from_numpy(t).long()).numpy().transpose(0, 2, 3, 1)
  return float(np.max(np.abs(got - expected))), float(np.max(np.abs(expected)))


def _load_config(path: str) -> ml_collections.ConfigDict:
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(config=os.path.join(common.REPO_ROOT, path), preset=None, dtype=None,
                            image_size=None, overrides=[])
  return common.build_config(args)[0]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores).")
  parser.add_argument("--layout", choices=LAYOUTS, default="nchw")
  args = parser.parse_args(argv)
  require_torch()
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads or os.cpu_count())
  torch.manual_seed(0)
  for path, expected in KNOWN_PARAM_COUNTS.items():
    config = _load_config(path)
    shape = common.image_shape(config)
    model = build_model(config, shape, layout=args.layout)  # asserts against the Flax count
    assert count_params(model) == expected, (path, count_params(model), expected)
    x = to_torch_images(np.random.default_rng(0).uniform(-1, 1, (2,) + tuple(shape)), args.layout)
    trainer = TorchTrainer(model, config, layout=args.layout)
    target = torch.randn(x.shape[0], model.conv_out.out_channels, *x.shape[2:])
    losses = [float(trainer.step(x, target)) for _ in range(2)]
    out = TorchSampler(model, config).step(x)
    assert out.shape == target.shape and all(math.isfinite(v) for v in losses)
    # bfloat16 compute (autocast) on the same weights and noise: close to float32, not equal.
    torch.manual_seed(1)
    out32 = TorchSampler(model, config).step(x)
    torch.manual_seed(1)
    out16 = TorchSampler(model, config, dtype="bfloat16").step(x)
    rel = float((out16.float() - out32).abs().max() / out32.abs().max().clamp_min(1e-12))
    assert out16.dtype == torch.float32 and 0 < rel < 0.1, rel  # float32 out, as the Flax model's
    bf16_loss = float(TorchTrainer(model, config, layout=args.layout, dtype="bfloat16").step(x, target))
    assert math.isfinite(bf16_loss)
    print(f"{path}: {count_params(model):,} parameters (= Flax), 2 train steps at batch 2 "
          f"(loss {losses[-1]:.4f}, Adam {trainer.adam_impl}), forward {tuple(out.shape)}; bfloat16 autocast "
          f"forward within {rel:.1e} of float32, a bfloat16 train step: ok")
  # Same weights, same inputs, same outputs: both nets (the main-job one adds x_t to 0.01·conv_out, which
  # would hide a difference inside the network; the CIFAR-10 one returns conv_out as it is).
  for path in KNOWN_PARAM_COUNTS:
    config = _load_config(path)
    diff, scale = max_output_difference(config, common.image_shape(config))
    print(f"{path} with the Flax weights: max |torch - flax| = {diff:.2e} (outputs up to {scale:.2f})")
    if not diff <= 1e-4 * max(scale, 1.0):
      raise AssertionError(f"{path}: torch and Flax outputs differ by {diff:.2e}.")


if __name__ == "__main__":
  main()
