"""sampling.py without a network: exact sample counts, batch keys that do not depend on how many samples
follow, the sampler tags used in file names, and the labels a class-conditional model is sampled with."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import config_lib
from ddpm_jax import sampling
from ddpm_jax import sharding


def _fake_sample_fn(params, key, batch, labels=None):
  """Images whose every pixel is the batch key's first word, so each batch's key can be read back (or,
  given labels, the label of each image)."""
  del params
  if labels is not None:
    return jnp.broadcast_to(labels.astype(jnp.float32)[:, None, None, None], (batch, 2, 2, 1))
  word = jax.random.key_data(key)[0] if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key[0]
  return jnp.broadcast_to(word.astype(jnp.float32), (batch, 2, 2, 1))


def test_generate_samples_exact_count_and_prefix_stable_batches():
  mesh = sharding.create_mesh(jax.devices()[:1])
  key = jax.random.PRNGKey(3)
  ten = sampling.generate_samples(_fake_sample_fn, None, key=key, num_samples=10, batch_size=4, mesh=mesh)
  assert ten.shape == (10, 2, 2, 1)
  # Batch i is drawn with fold_in(key, i): 3 batches of 4, the last trimmed to 2.
  expected = [float(np.asarray(jax.random.fold_in(key, i))[0].astype(np.float32)) for i in range(3)]
  np.testing.assert_array_equal(ten[:, 0, 0, 0], np.repeat(expected, 4)[:10])
  # Drawing fewer samples gives a prefix of the same images.
  six = sampling.generate_samples(_fake_sample_fn, None, key=key, num_samples=6, batch_size=4, mesh=mesh)
  np.testing.assert_array_equal(six, ten[:6])


def test_sampler_tags_and_sample_labels():
  config = config_lib.default_config()
  config.diffusion.num_timesteps = 1000
  config.sample.update(sampler="ancestral", steps=0, skip_type="even")
  assert sampling.sampler_tag(config) == "ancestral1000"
  config.sample.update(steps=100, skip_type="quadratic")
  assert sampling.sampler_tag(config) == "ancestral100_quadratic"
  config.sample.update(sampler="ddim", steps=50, skip_type="even", eta=0.5)
  assert sampling.sampler_tag(config) == "ddim50_eta0.5"
  config.sample.update(guidance_scale=2.0, labels=(3,))
  assert sampling.sampler_tag(config) == "ddim50_eta0.5_w2_y3"
  assert sampling.sample_labels(config, types.SimpleNamespace(num_classes=None), 4) is None
  config.sample.labels = ()
  np.testing.assert_array_equal(sampling.sample_labels(config, types.SimpleNamespace(num_classes=3), 7),
                                [0, 1, 2, 0, 1, 2, 0])
  config.sample.labels = (4, 1)
  np.testing.assert_array_equal(sampling.sample_labels(config, types.SimpleNamespace(num_classes=5), 5),
                                [4, 1, 4, 1, 4])


def test_labels_reach_their_samples_across_batches_and_rows_per_class():
  mesh = sharding.create_mesh(jax.devices()[:1])
  labels = np.arange(10) % 3
  images = sampling.generate_samples(_fake_sample_fn, None, key=jax.random.PRNGKey(0), num_samples=10,
                                     batch_size=4, mesh=mesh, labels=labels)
  np.testing.assert_array_equal(images[:, 0, 0, 0], labels)  # the last batch padded, then trimmed
  rows, ncol = sampling.class_rows(images, labels, 3, per_class=2)
  assert ncol == 2
  np.testing.assert_array_equal(rows[:, 0, 0, 0], [0, 0, 1, 1, 2, 2])
  same, ncol = sampling.class_rows(images[:2], labels[:2], 3)  # class 2 missing: left as drawn
  assert ncol is None and same.shape[0] == 2
