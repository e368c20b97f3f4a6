"""Preprocessing of uint8 images into the input of the FID Inception network (`inception_net`).

`preprocess_images` takes uint8 images [N, H, W, 3] (or [N, H, W, 1], repeated to three channels as an RGB
conversion of a grey image would) and produces [N, 299, 299, 3] float32 in two flavours:

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
use `"tf1"`, and always state which one was used (the statistics cache of `inception` records it).
"""

import chex
import jax.numpy as jnp
import numpy as np

from ddpm_jax.evaluation import inception_net

PREPROCESSINGS = ("tf1", "pytorch_fid")


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


def check_uint8_images(images):
  """Shape/dtype check shared by the host and traced paths (shapes and dtypes are static under jit)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or min(images.shape[:3]) < 1:
    raise ValueError(f"images must have shape [N, H, W, 3] or [N, H, W, 1] (NHWC, N, H, W ≥ 1), got "
                     f"{tuple(images.shape)}")
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}; quantise model "
                     f"samples first, e.g. np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8), as "
                     f"the reference protocol scores saved 8-bit images")


def preprocess_images(images, *, preprocessing="tf1", size=inception_net.INPUT_SIZE):
  """uint8 [N, H, W, 3|1] → float32 [N, size, size, 3], the network input of the chosen reference.

  A one-channel image is repeated to three channels (what an RGB conversion of a grey image gives, e.g.
  PIL's `convert("RGB")` in pytorch-fid). Then, per `preprocessing` (see the module docstring):

  - "tf1":          y = (bilinear_tf1(x) − 128) · 2⁻⁷                    ∈ [−1, 127/128]
  - "pytorch_fid":  y = 2 · bilinear_half_pixel(x / 255) − 1             ∈ [−1, 1]

  where each bilinear resize interpolates along W first and then along H, as TF's kernel does:
  top = a + (b − a)·wx, bottom = c + (d − c)·wx, out = top + (bottom − top)·wy ("tf1"), or with PyTorch's
  weight form (1−w)·a + w·b ("pytorch_fid"). Pure jnp, jit-able (the index tables are trace-time constants).
  """
  check_uint8_images(images)
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
