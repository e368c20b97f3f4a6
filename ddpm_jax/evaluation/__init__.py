"""Sample-quality metrics: Fréchet distance / Inception Score math and their offline MNIST proxies.

- `frechet`: float64 NumPy `activation_statistics`, `frechet_distance`, `inception_score` (the FID/IS
  formulas, independent of the network that produced the features).
- `mnist_classifier`: a small shipped MNIST CNN and `mnist_fd` / `mnist_is`, offline proxies for FID/IS on
  the bundled digits (not comparable with published FID/IS values).
"""

from ddpm_jax.evaluation.frechet import activation_statistics
from ddpm_jax.evaluation.frechet import frechet_distance
from ddpm_jax.evaluation.frechet import inception_score
from ddpm_jax.evaluation.mnist_classifier import classifier_features_and_probs
from ddpm_jax.evaluation.mnist_classifier import ClassifierAssetError
from ddpm_jax.evaluation.mnist_classifier import load_classifier
from ddpm_jax.evaluation.mnist_classifier import MnistClassifier
from ddpm_jax.evaluation.mnist_classifier import mnist_fd
from ddpm_jax.evaluation.mnist_classifier import mnist_is

__all__ = [
    "ClassifierAssetError",
    "MnistClassifier",
    "activation_statistics",
    "classifier_features_and_probs",
    "frechet_distance",
    "inception_score",
    "load_classifier",
    "mnist_fd",
    "mnist_is",
]
