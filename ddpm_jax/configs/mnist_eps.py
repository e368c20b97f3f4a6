"""ε-prediction with L_simple (DDPM's best CIFAR-10 row) on the bundled digits, same budget and chain as
mnist_mu.py (T = 1000, 100-step respaced sampling with Σ = β̃_t): the reference row of the μ study.

  python -m ddpm_jax.main --config configs/mnist_eps.py --workdir runs/mnist_eps
"""

from ddpm_jax.configs import mnist_common


def get_config(arg=None):
  return mnist_common.mnist_config("eps", "fixedsmall", "mse", arg)
