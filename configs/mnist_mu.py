"""The main job: the μ-parameterized DDPM (`xprev` + the true bound `kl`, fixed Σ = β_t) on the bundled
MNIST digits, on a 2-core CPU in about 11 minutes, with a sample grid and test bits/dim at the end.

  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu

Writes runs/mnist_mu/samples.png (64 EMA samples), summary.json (test bits/dim), metrics.jsonl,
tensorboard/ and checkpoints/. T = 25 and the other settings shared with mnist_eps.py / mnist_x0.py are in
configs/mnist_common.py, with why they depart from the CIFAR-10 recipe. Expect (2-core CPU, 2026-12-02):
10:52 wall clock, full-bound test bits/dim 2.74, MNIST-FD@500 ≈ 105; many samples are recognisable digits,
many still broken strokes (README, "The main job"). DDPM Table 2: μ-prediction needs the true bound.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return mnist_common.mnist_config("xprev", "fixedlarge", "kl", arg)
