"""The defaults every experiment starts from: the original DDPM CIFAR-10 recipe, μ-parameterized.

The fields and their meaning live in `ddpm_jax/config_lib.py` (`default_config`). Running this file trains
the μ-model on CIFAR-10 with the original recipe, like `configs/cifar10_mu_vlb_fixed.py`.
"""

from ddpm_jax import config_lib


def get_config(arg=None):
  return config_lib.apply_variants(config_lib.default_config(), arg)
