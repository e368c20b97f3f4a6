"""sampling.py without a network: exact sample counts, batch keys that do not depend on how many samples
follow, the sampler tags used in file names, and the labels a class-conditional model is sampled with."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import config_lib
from ddpm_jax import sampling
from ddpm_jax import sharding


def _fake_sample_fn(params, key, batch):
  """Images whose every pixel is the batch key's first word, so each batch's key can be read back."""
  del params
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


def test_sampler_tags_and_class_labels():
  config = config_lib.default_config()
  config.diffusion.num_timesteps = 1000
  config.sample.update(sampler="ancestral", steps=0, skip_type="even")
  assert sampling.sampler_tag(config) == "ancestral1000"
  config.sample.update(steps=100, skip_type="quadratic")
  assert sampling.sampler_tag(config) == "ancestral100_quadratic"
  config.sample.update(sampler="ddim", steps=50, skip_type="even", eta=0.5)
  assert sampling.sampler_tag(config) == "ddim50_eta0.5"
  assert sampling.class_labels(types.SimpleNamespace(num_classes=None), 4) is None
  np.testing.assert_array_equal(sampling.class_labels(types.SimpleNamespace(num_classes=3), 7),
                                [0, 1, 2, 0, 1, 2, 0])
