"""Tests of the shipped MNIST classifier and the MNIST-FD / MNIST-IS proxies built on it."""

import hashlib
import os

import jax
import numpy as np
import pytest

from ddpm_jax.data import load_bundled_mnist
from ddpm_jax.evaluation import mnist_classifier


@pytest.fixture(scope="module")
def mnist():
  data = load_bundled_mnist()
  return {split: (data["images"][data[f"{split}_indices"]], data["labels"][data[f"{split}_indices"]])
          for split in ("train", "test")}


def test_shipped_weights_match_their_provenance():
  info = mnist_classifier.load_classifier_info()
  path = os.path.join(mnist_classifier.ASSET_DIR, mnist_classifier.WEIGHTS_FILE)
  with open(path, "rb") as f:
    raw = f.read()
  assert hashlib.sha256(raw).hexdigest() == info["weights_sha256"]
  assert len(raw) < 1_000_000
  assert info["test_n"] == 500 and info["test_accuracy"] >= 0.97


def test_held_out_accuracy_is_at_least_the_recorded_one(mnist):
  images, labels = mnist["test"]
  model, params = mnist_classifier.load_classifier()
  # Straight through model.apply on the whole split, not through the batched wrapper.
  _, logits = jax.jit(model.apply)(params, images.astype(np.float32) / 127.5 - 1.0)
  accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))
  assert accuracy >= mnist_classifier.load_classifier_info()["test_accuracy"] - 0.005
  # The batched wrapper (last batch zero-padded) gives the same probabilities as the direct softmax.
  logits = np.asarray(logits, np.float64)
  softmax = np.exp(logits - logits.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  features, probs = mnist_classifier.classifier_features_and_probs(images, batch_size=200)
  assert features.shape == (500, 128) and probs.shape == (500, 10)
  np.testing.assert_allclose(probs, softmax, atol=1e-5)


def test_mnist_fd_orders_real_digits_far_below_corruptions(mnist):
  train_images, _ = mnist["train"]
  test_images, _ = mnist["test"]
  rng = np.random.default_rng(0)
  real = mnist_classifier.mnist_fd(train_images)
  assert real["reference"] == "mnist5k/test" and real["reference_n"] == 500 and real["n"] == 4500
  assert 0.0 <= real["mnist_fd"] < 5.0

  noise = rng.integers(0, 256, size=(500, 28, 28, 1)).astype(np.uint8)
  blank = np.zeros((500, 28, 28, 1), np.uint8)
  flat = test_images.reshape(500, -1)
  shuffled = flat[:, rng.permutation(flat.shape[1])].reshape(test_images.shape)  # same pixel histogram
  for name, images in (("noise", noise), ("blank", blank), ("shuffled", shuffled)):
    fd = mnist_classifier.mnist_fd(images)["mnist_fd"]
    assert fd > 20 * real["mnist_fd"], (name, fd, real["mnist_fd"])


def test_mnist_is_of_real_digits_is_near_ten_and_of_noise_low(mnist):
  train_images, _ = mnist["train"]
  # The bundled splits are sorted by class; IS chunks are contiguous, so shuffle first.
  perm = np.random.default_rng(1).permutation(train_images.shape[0])
  real = mnist_classifier.mnist_is(train_images[perm])
  assert real["n"] == 4500 and real["splits"] == 10
  assert 8.0 < real["mnist_is"] <= 10.0
  noise = np.random.default_rng(2).integers(0, 256, size=(500, 28, 28, 1)).astype(np.uint8)
  assert mnist_classifier.mnist_is(noise)["mnist_is"] < 3.0


def test_uint8_and_unit_range_float_inputs_agree(mnist):
  images, _ = mnist["test"]
  as_float = images.astype(np.float64) / 255.0 * 2.0 - 1.0  # another road to [-1, 1]
  fd_uint8 = mnist_classifier.mnist_fd(images)["mnist_fd"]
  fd_float = mnist_classifier.mnist_fd(as_float)["mnist_fd"]
  assert fd_uint8 < 1e-3  # the reference set against itself
  assert fd_float == pytest.approx(fd_uint8, abs=1e-4)
  f_uint8, p_uint8 = mnist_classifier.classifier_features_and_probs(images)
  f_float, p_float = mnist_classifier.classifier_features_and_probs(as_float.astype(np.float32))
  np.testing.assert_allclose(f_float, f_uint8, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p_float, p_uint8, atol=1e-6)


def test_bad_inputs_raise_clear_errors(mnist):
  images, _ = mnist["test"]
  with pytest.raises(ValueError, match=r"\[N, 28, 28, 1\]"):
    mnist_classifier.mnist_fd(images[..., 0])
  with pytest.raises(ValueError, match=r"\[N, 28, 28, 1\]"):
    mnist_classifier.classifier_features_and_probs(np.transpose(images, (0, 3, 1, 2)))
  with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
    mnist_classifier.mnist_fd(images.astype(np.float32))  # 0..255 floats
  with pytest.raises(ValueError, match="dtype int32"):
    mnist_classifier.mnist_fd(images.astype(np.int32))
  with pytest.raises(ValueError, match="at least 2"):
    mnist_classifier.mnist_fd(images[:1])
  with pytest.raises(ValueError, match="reference"):
    mnist_classifier.mnist_fd(images, reference="validation")
  with pytest.raises(ValueError, match="batch_size"):
    mnist_classifier.classifier_features_and_probs(images, batch_size=0)
  with pytest.raises(ValueError, match="splits"):
    mnist_classifier.mnist_is(images[:5])


def test_missing_or_corrupt_weights_raise(tmp_path):
  with pytest.raises(mnist_classifier.ClassifierAssetError, match="not found"):
    mnist_classifier.load_classifier(str(tmp_path / "absent.npz"))
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a zip file")
  with pytest.raises(mnist_classifier.ClassifierAssetError, match="unreadable"):
    mnist_classifier.load_classifier(str(garbage))
  wrong = tmp_path / "wrong.npz"
  np.savez(wrong, **{"Dense_0/kernel": np.zeros((3, 3), np.float32)})
  with pytest.raises(mnist_classifier.ClassifierAssetError, match="missing"):
    mnist_classifier.load_classifier(str(wrong))
  shapes = mnist_classifier.param_shapes()
  bad_shape = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
  bad_shape["Dense_1/bias"] = np.zeros(11, np.float32)
  np.savez(tmp_path / "bad_shape.npz", **bad_shape)
  with pytest.raises(mnist_classifier.ClassifierAssetError, match="Dense_1/bias"):
    mnist_classifier.load_classifier(str(tmp_path / "bad_shape.npz"))
