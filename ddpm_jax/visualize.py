"""Pictures: images in [-1, 1] to uint8, sample grids as PNG."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats → uint8 as the original code did: clip((x + 1) · 127.5, 0, 255), truncated."""
  x = np.asarray(images, np.float32)
  return np.clip((x + 1.0) * 127.5, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, *, ncol: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into one [rows·(H+pad)+pad, ncol·(W+pad)+pad, C] image."""
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"make_grid expects uint8 images [N, H, W, C], got {images.dtype}{images.shape}.")
  n, h, w, c = images.shape
  ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
  return grid


def save_image(path: str, image: np.ndarray, *, scale: int = 1) -> str:
  """Writes a uint8 [H, W, C] image (C = 1 or 3) as PNG, optionally enlarged `scale`× (nearest)."""
  image = np.asarray(image)
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if scale > 1:
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  pil.save(path)
  return path


def save_grid(path: str, images, *, ncol: int | None = None) -> str:
  """Saves samples in [-1, 1] (or uint8) [N, H, W, C] as one PNG grid; small images are enlarged."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  scale = max(1, 64 // images.shape[1])
  return save_image(path, make_grid(images, ncol=ncol), scale=min(scale, 4))
