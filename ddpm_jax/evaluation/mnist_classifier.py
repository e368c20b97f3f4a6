"""A small MNIST CNN and the offline sample-quality proxies built on it: MNIST-FD and an MNIST IS.

FID and IS need Inception-v3 weights, which a fresh machine without network does not have, and which were
trained on ImageNet, not on digits. For the bundled MNIST digits this module offers a stand-in with the
same formulas on a different network:

- `mnist_fd`: the Fréchet distance (`frechet.frechet_distance`) between Gaussians fitted to the 128-d
  penultimate features of `MnistClassifier` for the given images and for a bundled reference split;
- `mnist_is`: the Inception Score formula (`frechet.inception_score`) on the classifier's softmax
  outputs; at most 10 (the number of classes).

These are offline proxies for FID/IS on the bundled digits, meant for comparing models and checkpoints
within this project. Their values are NOT comparable with FID or IS numbers from the literature (different
network, feature dimension, data and sample counts), nor with MNIST-FD numbers computed with different
classifier weights.

The classifier was trained by `tools/train_mnist_classifier.py` on the 4,500-digit `train` split only; its
weights ship as `assets/mnist_classifier.npz`, with provenance and held-out accuracy in
`assets/mnist_classifier.json`.
"""

import functools
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ddpm_jax.evaluation import frechet

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
FEATURE_DIM = 128
ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
WEIGHTS_FILE = "mnist_classifier.npz"
INFO_FILE = "mnist_classifier.json"
REFERENCE_SPLITS = ("test", "train")
# Float inputs are meant to be in [-1, 1]; this slack only forgives float32 round-off of clipped samples.
_RANGE_TOLERANCE = 1e-3


class MnistClassifier(nn.Module):
  """Three 3×3 conv layers (32, 64, 64 channels, ReLU, 2×2 max-pool after each) → dense 128 → dense 10.

  Input [N, 28, 28, 1] in [-1, 1] (NHWC); the spatial size goes 28 → 14 → 7 → 3, so the dense layer sees
  3·3·64 = 576 values. `__call__` returns (features [N, 128], logits [N, 10]); the features are the
  post-ReLU activations of the 128-unit layer, the penultimate layer used for MNIST-FD. No dropout or
  batch norm, so the network is a pure function of (params, images) with no train/eval switch.
  """

  @nn.compact
  def __call__(self, images):
    chex.assert_rank(images, 4)
    chex.assert_shape(images, (None, *IMAGE_SHAPE))
    h = images
    for channels in (32, 64, 64):
      h = nn.relu(nn.Conv(channels, (3, 3), padding="SAME")(h))
      h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
    h = h.reshape(h.shape[0], -1)
    features = nn.relu(nn.Dense(FEATURE_DIM)(h))
    logits = nn.Dense(NUM_CLASSES)(features)
    return features, logits


class ClassifierAssetError(RuntimeError):
  """The shipped classifier weights are missing, unreadable or do not fit `MnistClassifier`."""


def param_shapes():
  """The {'/'-joined name: shape} of `MnistClassifier`'s parameters (from abstract init, no compute)."""
  abstract = jax.eval_shape(MnistClassifier().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, *IMAGE_SHAPE), jnp.float32))
  flat = traverse_util.flatten_dict(abstract["params"], sep="/")
  return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def flatten_params(params):
  """{'/'-joined name: float32 ndarray} of a params tree: the layout of the `.npz` asset."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return {name: np.asarray(value, np.float32) for name, value in flat.items()}


def unflatten_params(flat):
  """Inverse of `flatten_params`, checking the names and shapes against `MnistClassifier`.

  Raises:
    ClassifierAssetError: if a parameter is missing, unexpected, or of the wrong shape or dtype.
  """
  expected = param_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  if missing or unexpected:
    raise ClassifierAssetError(f"classifier weights do not match MnistClassifier: missing {missing}, "
                               f"unexpected {unexpected}")
  for name, shape in expected.items():
    value = flat[name]
    if tuple(value.shape) != shape or value.dtype != np.float32:
      raise ClassifierAssetError(f"classifier weight {name!r} has shape {value.shape} and dtype "
                                 f"{value.dtype}; expected {shape} float32")
  return traverse_util.unflatten_dict({name: jnp.asarray(v) for name, v in flat.items()}, sep="/")


@functools.cache
def load_classifier(path=None):
  """Loads the shipped MNIST classifier.

  Args:
    path: a `.npz` of flattened parameters; defaults to the shipped `assets/mnist_classifier.npz`.

  Returns:
    (model, params): a `MnistClassifier` and its {'params': ...} variables, ready for `model.apply`.

  Raises:
    ClassifierAssetError: if the file is missing, not a readable `.npz`, or does not fit the network.
  """
  path = os.path.join(ASSET_DIR, WEIGHTS_FILE) if path is None else path
  if not os.path.isfile(path):
    raise ClassifierAssetError(f"MNIST classifier weights not found at {path}; rebuild them with "
                               f"`python tools/train_mnist_classifier.py`")
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except Exception as e:  # a truncated or foreign file raises one of several zip/format errors
    raise ClassifierAssetError(f"MNIST classifier weights at {path} are unreadable: {e!r}") from e
  params = unflatten_params(flat)
  return MnistClassifier(), {"params": params}


def load_classifier_info():
  """The provenance JSON shipped next to the weights (seed, epochs, held-out accuracy, sha256, ...)."""
  with open(os.path.join(ASSET_DIR, INFO_FILE), encoding="utf-8") as f:
    return json.load(f)


def preprocess_images(images):
  """Validates a batch of digits and maps it to float32 in [-1, 1].

  Args:
    images: [N, 28, 28, 1] (NHWC), either uint8 pixels 0..255 (mapped by x/127.5 − 1, as the data
      pipeline) or floating point already in [-1, 1] (model samples; clip them first).

  Returns:
    float32 NumPy array [N, 28, 28, 1] in [-1, 1].
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] < 1:
    raise ValueError(f"images must have shape [N, 28, 28, 1] (NHWC, N ≥ 1), got {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 in 0..255 or floating point in [-1, 1], got dtype "
                     f"{images.dtype}")
  images = images.astype(np.float32)
  if not np.all(np.isfinite(images)):
    raise ValueError("images contains NaN or infinite values")
  lo, hi = float(images.min()), float(images.max())
  if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
    raise ValueError(f"float images must lie in [-1, 1], got values in [{lo}, {hi}]; clip samples "
                     f"first, or pass uint8 pixels 0..255")
  return np.clip(images, -1.0, 1.0)


@jax.jit
def _features_and_probs(params, images):
  features, logits = MnistClassifier().apply(params, images)
  return features, jax.nn.softmax(logits, axis=-1)


def classifier_features_and_probs(images, *, batch_size=500):
  """Penultimate features and softmax class probabilities of the shipped classifier.

  Runs jitted in batches of `batch_size`; the last batch is zero-padded to full size so that one compiled
  shape serves every call.

  Args:
    images: [N, 28, 28, 1] uint8 pixels 0..255, or floating point in [-1, 1] (see `preprocess_images`).
    batch_size: images per forward pass (≥ 1).

  Returns:
    (features float32 [N, 128], probs float32 [N, 10]) as NumPy arrays.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  images = preprocess_images(images)
  _, params = load_classifier()
  n = images.shape[0]
  batch_size = int(min(batch_size, n))
  features, probs = [], []
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    valid = batch.shape[0]
    if valid < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - valid, *IMAGE_SHAPE), np.float32)])
    f, p = _features_and_probs(params, batch)
    features.append(np.asarray(f)[:valid])
    probs.append(np.asarray(p)[:valid])
  features = np.concatenate(features)
  probs = np.concatenate(probs)
  chex.assert_shape(features, (n, FEATURE_DIM))
  chex.assert_shape(probs, (n, NUM_CLASSES))
  return features, probs


@functools.cache
def reference_statistics(reference="test"):
  """(mu, sigma, n) of the classifier features of a bundled MNIST split, computed once per process."""
  if reference not in REFERENCE_SPLITS:
    raise ValueError(f"reference must be one of {REFERENCE_SPLITS}, got {reference!r}")
  from ddpm_jax.data import load_bundled_mnist  # pylint: disable=g-import-not-at-top

  data = load_bundled_mnist()
  images = data["images"][data[f"{reference}_indices"]]
  features, _ = classifier_features_and_probs(images)
  mu, sigma = frechet.activation_statistics(features)
  mu.flags.writeable = False  # cached and shared
  sigma.flags.writeable = False
  return mu, sigma, images.shape[0]


def mnist_fd(images, *, reference="test"):
  """MNIST-FD: Fréchet distance between classifier features of `images` and of a bundled MNIST split.

  An offline proxy for FID on the bundled digits (same formula, `frechet.frechet_distance`, on the
  128-d penultimate features of the shipped `MnistClassifier` instead of Inception pool3); not comparable
  with FID. Lower is better. Like FID it is biased upwards for small N: compare values at equal N.

  Args:
    images: [N, 28, 28, 1], N ≥ 2; uint8 0..255 or float in [-1, 1].
    reference: which split of the bundled 5k MNIST gives the reference statistics: 'test' (500 held-out
      digits, the default) or 'train' (4,500 digits).

  Returns:
    {'mnist_fd': float, 'reference': 'mnist5k/<split>', 'reference_n': int, 'n': N}.
  """
  mu_ref, sigma_ref, n_ref = reference_statistics(reference)
  features, _ = classifier_features_and_probs(images)
  if features.shape[0] < 2:
    raise ValueError(f"mnist_fd needs at least 2 images, got {features.shape[0]}")
  mu, sigma = frechet.activation_statistics(features)
  return {"mnist_fd": frechet.frechet_distance(mu, sigma, mu_ref, sigma_ref),
          "reference": f"mnist5k/{reference}", "reference_n": int(n_ref), "n": int(features.shape[0])}


def mnist_is(images, *, splits=10):
  """MNIST IS: the Inception Score formula on the shipped classifier's predictions; between 1 and 10.

  An offline proxy for IS on digits (`frechet.inception_score` with `MnistClassifier` instead of
  Inception-v3); not comparable with IS. High when each image is confidently one digit and the digits are
  balanced across the 10 classes. With `splits` chunks each chunk should hold well over 10 images.
  The chunks are contiguous rows, as in the reference IS code, which assumes the samples come in random
  order: shuffle class-sorted inputs (such as the bundled splits) first, or each chunk sees few classes.

  Args:
    images: [N, 28, 28, 1], N ≥ splits; uint8 0..255 or float in [-1, 1].
    splits: number of disjoint chunks the score is averaged over (the standard protocol uses 10).

  Returns:
    {'mnist_is': mean, 'mnist_is_std': std over chunks, 'splits': splits, 'n': N}.
  """
  _, probs = classifier_features_and_probs(images)
  mean, std = frechet.inception_score(probs, splits=splits)
  return {"mnist_is": mean, "mnist_is_std": std, "splits": int(splits), "n": int(probs.shape[0])}


def confident_fraction(images, *, threshold=0.9):
  """The fraction of `images` the shipped classifier assigns to one digit with probability > `threshold`:
  a plain-language companion to MNIST-IS (how many samples read as a clear digit).

  Args:
    images: [N, 28, 28, 1], N ≥ 1; uint8 0..255 or float in [-1, 1].
    threshold: in (0, 1).

  Returns:
    {'mnist_confident': fraction in [0, 1], 'threshold': threshold, 'n': N}.
  """
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"threshold={threshold!r} is invalid: expected a probability in (0, 1).")
  _, probs = classifier_features_and_probs(images)
  frac = float(np.mean(np.max(probs, axis=-1) > threshold))
  return {"mnist_confident": frac, "threshold": float(threshold), "n": int(probs.shape[0])}


def label_accuracy(images, labels):
  """The fraction of `images` the shipped classifier reads as the digit they were drawn for.

  For class-conditional samples: with a guidance scale w, the familiar fidelity side of the trade-off
  (MNIST-FD is the diversity side).

  Args:
    images: [N, 28, 28, 1], N ≥ 1; uint8 0..255 or float in [-1, 1].
    labels: [N] the requested digits.

  Returns:
    {'mnist_label_accuracy': fraction in [0, 1], 'n': N}.
  """
  labels = np.asarray(labels)
  if labels.shape != (len(images),):
    raise ValueError(f"labels must have shape ({len(images)},) (one per image); got {labels.shape}.")
  _, probs = classifier_features_and_probs(images)
  return {"mnist_label_accuracy": float(np.mean(np.argmax(probs, axis=-1) == labels)), "n": int(len(labels))}
