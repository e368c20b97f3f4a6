"""Fréchet distance and Inception Score from network activations / class probabilities, in float64 NumPy.

These are the two sample-quality statistics reported by DDPM (Ho et al. 2020, Table 1):

- the Fréchet distance between Gaussians fitted to two sets of features (Heusel et al. 2017, "GANs Trained
  by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. in §"Fréchet Inception
  Distance"; Dowson & Landau 1982 for the closed form):
      d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),
  which is FID when the features are Inception-v3 pool3 activations;
- the Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", §4):
      IS = exp(E_x KL(p(y|x) ‖ p(y))),
  averaged over `splits` disjoint chunks of the samples.

Nothing here knows which network produced the features: `ddpm_jax.evaluation.mnist_classifier` feeds them
from a small MNIST classifier. No SciPy: the matrix square root is taken through symmetric
eigendecompositions, which are exact for the positive semi-definite matrices involved.
"""

import numpy as np


def _as_float64_array(value, name, ndim):
  """`value` as a float64 array of rank `ndim`, or a ValueError naming `name`."""
  array = np.asarray(value, dtype=np.float64)
  if array.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim}, got shape {array.shape}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return array


def activation_statistics(features):
  """Mean and covariance of a set of feature vectors, the Gaussian fitted for the Fréchet distance.

  As in the reference FID code (TTUR, pytorch-fid), the covariance is the unbiased sample covariance
  (ddof=1), computed in float64.

  Args:
    features: [N, D] array, one feature vector per sample; N ≥ 2.

  Returns:
    (mu [D] float64, sigma [D, D] float64).
  """
  features = _as_float64_array(features, "features", 2)
  n = features.shape[0]
  if n < 2:
    raise ValueError(f"features needs at least 2 rows to estimate a covariance, got shape "
                     f"{features.shape}")
  mu = features.mean(axis=0)
  centred = features - mu
  sigma = centred.T @ centred / (n - 1)
  return mu, sigma


def _psd_sqrt(sigma):
  """Symmetric square root of a symmetric PSD matrix; eigenvalues below zero (round-off) are set to 0."""
  sigma = 0.5 * (sigma + sigma.T)
  eigvals, eigvecs = np.linalg.eigh(sigma)
  return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def _trace_sqrt_product(sigma1, sigma2):
  """Tr((Σ₁ Σ₂)^{1/2}) for symmetric PSD Σ₁, Σ₂.

  Σ₁Σ₂ is similar to the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2} = AᵀA with A = Σ₂^{1/2} Σ₁^{1/2}, so its
  eigenvalues are the squared singular values of A and the trace of its square root is the sum of A's
  singular values (its nuclear norm). Taking singular values of A rather than eigenvalues of AᵀA avoids
  squaring the condition number: a tiny eigenvalue λ of AᵀA then costs an absolute error of about
  ε‖A‖ in √λ rather than √(ε)‖A‖.
  """
  a = _psd_sqrt(sigma2) @ _psd_sqrt(sigma1)
  return float(np.sum(np.linalg.svd(a, compute_uv=False)))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps=1e-6):
  """Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂).

      d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁ Σ₂)^{1/2})      (Dowson & Landau 1982; Heusel et al. 2017)

  Tr((Σ₁Σ₂)^{1/2}) is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
  Σ₁^{1/2} Σ₂ Σ₁^{1/2}, obtained as the singular values of Σ₂^{1/2} Σ₁^{1/2}, with each symmetric square root
  from an eigendecomposition whose round-off negative eigenvalues are clipped to zero. This is well defined
  and accurate for singular (rank-deficient) covariances, e.g. fewer samples than feature dimensions, so
  no regularisation is applied in the normal case. Only if the SVD fails to converge is eps·I added to
  both covariances and the computation repeated, as pytorch-fid does when its `sqrtm` is singular; that
  biases the result by O(eps·D). A result that round-off makes slightly negative is returned as 0.

  Args:
    mu1: [D] mean of the first Gaussian (e.g. of the generated samples' features).
    sigma1: [D, D] covariance of the first Gaussian (symmetric PSD).
    mu2: [D] mean of the second Gaussian (e.g. of the reference data's features).
    sigma2: [D, D] covariance of the second Gaussian (symmetric PSD).
    eps: diagonal offset used only on the fallback path above; must be > 0.

  Returns:
    The distance d² as a Python float (≥ 0).
  """
  mu1 = _as_float64_array(mu1, "mu1", 1)
  mu2 = _as_float64_array(mu2, "mu2", 1)
  sigma1 = _as_float64_array(sigma1, "sigma1", 2)
  sigma2 = _as_float64_array(sigma2, "sigma2", 2)
  d = mu1.shape[0]
  if mu2.shape != (d,):
    raise ValueError(f"mu1 and mu2 must have the same shape, got {mu1.shape} and {mu2.shape}")
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.shape != (d, d):
      raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {sigma.shape}")
  if not eps > 0:
    raise ValueError(f"eps must be > 0, got {eps}")

  diff = mu1 - mu2
  try:
    tr_covmean = _trace_sqrt_product(sigma1, sigma2)
  except np.linalg.LinAlgError:
    offset = eps * np.eye(d)
    tr_covmean = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
  distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
  return max(distance, 0.0)


def inception_score(probs, *, splits=10):
  """Inception Score exp(E_x KL(p(y|x) ‖ p(y))) of class probabilities (Salimans et al. 2016, §4).

  The N rows are cut into `splits` contiguous chunks, chunk i being rows [i·N//splits, (i+1)·N//splits)
  as in the reference implementation; within each chunk p(y) is the mean of its rows, and the score is
  exp of the chunk's mean KL divergence. Terms with p(y|x) = 0 contribute 0 (the limit of p log p).

  Args:
    probs: [N, K] rows of class probabilities (non-negative, each summing to 1 within 1e-3).
    splits: number of chunks, 1 ≤ splits ≤ N.

  Returns:
    (mean, std) over the chunks' scores, as Python floats; each score lies in [1, K].
  """
  probs = _as_float64_array(probs, "probs", 2)
  n, k = probs.shape
  if n < 1 or k < 1:
    raise ValueError(f"probs must be a non-empty [N, K] array, got shape {probs.shape}")
  if probs.min() < 0:
    raise ValueError(f"probs must be non-negative, got a minimum of {probs.min()}")
  row_sums = probs.sum(axis=1)
  worst = int(np.argmax(np.abs(row_sums - 1.0)))
  if abs(row_sums[worst] - 1.0) > 1e-3:
    raise ValueError(f"each row of probs must sum to 1; row {worst} sums to {row_sums[worst]}")
  if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or not 1 <= splits <= n:
    raise ValueError(f"splits must be an integer in [1, N={n}], got {splits!r}")

  scores = []
  for i in range(splits):
    chunk = probs[i * n // splits:(i + 1) * n // splits]
    marginal = chunk.mean(axis=0, keepdims=True)
    # p log(p / p̄) with 0 log 0 = 0; where p > 0 the marginal is > 0 too, so the ratio is finite.
    positive = chunk > 0
    ratio = np.where(positive, chunk, 1.0) / np.where(positive, marginal, 1.0)
    kl = np.sum(np.where(positive, chunk * np.log(ratio), 0.0), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
