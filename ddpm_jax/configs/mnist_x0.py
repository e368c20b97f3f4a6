"""x₀-prediction with ‖x₀ − x̂₀‖² on the bundled digits, same budget and chain as mnist_mu.py (T = 1000,
100-step respaced sampling with Σ = β̃_t): a comparison row of the μ study.

  python -m ddpm_jax.main --config configs/mnist_x0.py --workdir runs/mnist_x0
"""

from ddpm_jax.configs import mnist_common


def get_config(arg=None):
  return mnist_common.mnist_config("xstart", "fixedsmall", "mse", arg)
