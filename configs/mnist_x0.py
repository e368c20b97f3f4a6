"""x₀-prediction trained on the true bound (`kl`), fixed Σ, on the bundled digits, same budget as mnist_mu.py.

  python -m ddpm_jax.main --config configs/mnist_x0.py --workdir runs/mnist_x0
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return mnist_common.mnist_config("xstart", "fixedlarge", "kl", arg)
