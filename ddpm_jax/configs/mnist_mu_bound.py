"""The paper's μ row on the bundled digits: `xprev` + the true bound (`kl`), fixed Σ = β_t, T = 25 — the
earlier main job, kept as the DDPM Table 2 recipe ("μ̃, L, fixed isotropic Σ"; CIFAR-10 FID 13.22).

  python -m ddpm_jax.main --config configs/mnist_mu_bound.py --workdir runs/mnist_mu_bound

The plain U-Net (its output is μ_θ, no path from x_t), the bound with importance-sampled timesteps, and the
25-step chain of configs/mnist_common.py ("t25"), where the bound rewards a digit's shape most. Measured in
the μ study (docs/mu_study.md, same budget as the main job): far behind configs/mnist_mu.py — many samples
are broken strokes.
"""

from ddpm_jax.configs import mnist_common


def get_config(arg=None):
  return mnist_common.mnist_config("xprev", "fixedlarge", "kl", arg, chain="t25")
