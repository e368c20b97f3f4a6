"""The main job: the μ-parameterized DDPM (`xprev` + the true bound `kl`, fixed Σ = β_t) on the bundled
MNIST digits, on a 2-core CPU in under 15 minutes, with a sample grid and test bits/dim at the end.

  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu

Writes runs/mnist_mu/samples.png (64 EMA samples, 100-step respaced chain), summary.json (test bits/dim),
metrics.jsonl, tensorboard/ and checkpoints/. Settings shared with mnist_eps.py / mnist_x0.py:
configs/mnist_common.py. DDPM Table 2: μ-prediction needs the true bound; see configs/README section in
the top-level README for what to expect.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return mnist_common.mnist_config("xprev", "fixedlarge", "kl", arg)
