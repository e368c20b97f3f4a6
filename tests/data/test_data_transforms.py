"""Center crop + resize, random flips and [-1, 1] scaling, against NumPy references on synthetic arrays."""

import numpy as np
import pytest

from ddpm_jax.data import transforms


@pytest.mark.parametrize("shape", [(6, 10, 3), (11, 6, 3), (7, 9, 1)])
def test_center_crop_without_resize_is_the_centred_slice(shape):
  height, width, _ = shape
  image = np.arange(np.prod(shape)).reshape(shape).astype(np.uint8)
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  out = transforms.center_crop_and_resize(image, side)
  assert out.dtype == np.uint8 and out.shape == (side, side, shape[2])
  np.testing.assert_array_equal(out, image[top:top + side, left:left + side])


@pytest.mark.parametrize("size", [4, 12])
def test_resize_keeps_constant_images_constant(size):
  image = np.full((8, 13, 3), 173, np.uint8)
  out = transforms.center_crop_and_resize(image, size)
  assert out.shape == (size, size, 3)
  np.testing.assert_array_equal(out, 173)


def test_downsampling_reproduces_a_linear_ramp():
  # f(x) = 40 + 10 x along the width (x = column centre). A normalized symmetric filter maps a linear
  # function to itself, so output column j (centre at input coordinate (j + 0.5) * 2 - 0.5) must read
  # 40 + 10 * (2 j + 0.5) away from the borders, where the 2x-widened bicubic kernel is not truncated.
  columns = 40.0 + 10.0 * np.arange(20)
  image = np.broadcast_to(columns[None, :, None], (20, 20, 1)).round().astype(np.uint8)
  out = transforms.center_crop_and_resize(image, 10).astype(np.float64)
  expected = 40.0 + 10.0 * (2 * np.arange(10) + 0.5)
  np.testing.assert_allclose(out[:, 2:8, 0], np.broadcast_to(expected[2:8], (10, 6)), atol=1.0)


def test_center_crop_resize_rejects_bad_input():
  with pytest.raises(ValueError, match="uint8"):
    transforms.center_crop_and_resize(np.zeros((4, 4, 3), np.float32), 2)
  with pytest.raises(ValueError, match="size"):
    transforms.center_crop_and_resize(np.zeros((4, 4, 3), np.uint8), 0)
  with pytest.raises(ValueError, match="size"):
    transforms.CenterCropResize(-3)


def test_center_crop_resize_map_transform():
  image = np.random.default_rng(0).integers(0, 256, (9, 15, 3), dtype=np.uint8)
  out = transforms.CenterCropResize(9).map({"image": image, "label": 4})
  assert out["label"] == 4
  np.testing.assert_array_equal(out["image"], image[:, 3:12])


def test_random_flip_mirrors_width_about_half_the_time():
  image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  flip = transforms.RandomHorizontalFlip()
  rng = np.random.default_rng(2)
  flipped = 0
  for _ in range(400):
    out = flip.random_map({"image": image, "label": 1}, rng)["image"]
    if np.array_equal(out, image[:, ::-1, :]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  # Binomial(400, 1/2) lies in [160, 240] with probability 1 - 1e-4.
  assert 160 <= flipped <= 240


def test_scale_batch_matches_closed_form():
  pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  out = transforms.ScaleBatch().map({"image": pixels, "label": np.array([0, 1, 2, 9])})
  assert out["image"].dtype == np.float32 and out["label"].dtype == np.int32
  expected = pixels.astype(np.float64) / 127.5 - 1.0
  np.testing.assert_allclose(out["image"], expected, rtol=0, atol=1e-6)
  assert out["image"].min() == -1.0 and out["image"].max() == 1.0
  np.testing.assert_array_equal(out["label"], [0, 1, 2, 9])
