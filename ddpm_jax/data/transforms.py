"""Per-example and per-batch grain transforms of the input pipeline (NumPy only; no JAX, no TensorFlow).

Records arrive from `tfds.data_source` as dicts of NumPy values with an `image` (uint8 HWC) and, for
labelled datasets, a `label`. The transforms here are module-level classes so that grain can pickle them
into worker processes.
"""

import grain
import numpy as np
from PIL import Image


def center_crop_and_resize(image, size):
  """Returns the largest centred square of a uint8 HWC `image`, resized to `size` x `size`.

  The crop keeps min(H, W) rows and columns starting at ((H - s) // 2, (W - s) // 2), the convention of
  the center crops used for CelebA-HQ and LSUN at 256²; the resize is PIL's bicubic filter, which widens
  its kernel when shrinking (so downsampling is antialiased). A square image of the right size is
  returned unchanged.

  Args:
    image: uint8 array [H, W, C] with C in (1, 3, 4).
    size: the output height and width, a positive int.

  Returns:
    uint8 array [size, size, C].
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.dtype != np.uint8 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"image must be a uint8 [H, W, C] array with C in (1, 3, 4); got dtype "
                     f"{image.dtype} and shape {image.shape}")
  if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
    raise ValueError(f"size must be a positive int; got {size!r}")
  height, width, channels = image.shape
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(image)
  # PIL wants a 2-D array for one channel ("L" mode).
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = np.asarray(pil.resize((size, size), resample=Image.Resampling.BICUBIC))
  return resized.reshape(size, size, channels)


class SelectImageAndLabel(grain.transforms.Map):
  """Keeps `image` (uint8 HWC) and `label` (int; 0 for unlabelled datasets such as LSUN/CelebA-HQ)."""

  def map(self, element):
    image = np.asarray(element["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
      raise ValueError(f"expected a uint8 [H, W, C] image from the data source; got dtype {image.dtype} "
                       f"and shape {image.shape}")
    return {"image": image, "label": int(element.get("label", 0))}


class CenterCropResize(grain.transforms.Map):
  """Applies `center_crop_and_resize` to `element['image']` (for the 256² CelebA-HQ/LSUN configs)."""

  def __init__(self, size):
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
      raise ValueError(f"size must be a positive int; got {size!r}")
    self.size = size

  def map(self, element):
    return {**element, "image": center_crop_and_resize(element["image"], self.size)}


class RandomHorizontalFlip(grain.transforms.RandomMap):
  """Mirrors `element['image']` left-right (the width axis of HWC) with probability 1/2.

  The original DDPM training flipped CIFAR-10, CelebA-HQ and LSUN images this way; digits must not be
  flipped (a mirrored 2 is not a 2). The coin comes from the per-element generator grain derives from the
  pipeline seed and the element's position, so the flips are reproducible and survive a checkpoint.
  """

  def random_map(self, element, rng):
    if rng.random() < 0.5:
      return {**element, "image": np.ascontiguousarray(element["image"][:, ::-1, :])}
    return element


class ScaleBatch(grain.transforms.Map):
  """Maps a batch of uint8 images to float32 in [-1, 1] as x / 127.5 - 1 and labels to int32.

  The affine map sends 0 to -1 and 255 to +1, the data scaling of the DDPM paper (Sec. 3.3), under which
  the decoder's discretization bins have half-width 1/255.
  """

  def map(self, batch):
    images = np.asarray(batch["image"])
    if images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images before scaling; got {images.dtype}")
    out = dict(batch)
    out["image"] = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    out["label"] = np.asarray(batch["label"]).astype(np.int32)
    return out
