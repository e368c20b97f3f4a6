"""CIFAR-10, DDPM Table 2 row: ε prediction, the true bound L, fixed isotropic Σ. Paper FID: 13.51.

The original recipe (Ho et al. 2020, App. B): 35.7M-parameter U-Net (ch 128, mult (1,2,2,2), 2 res blocks,
attention at 16², dropout 0.1), T = 1000 linear β 1e-4 → 0.02, Adam 2e-4, warm-up 5000, clip 1.0, batch 128,
EMA 0.9999, random flips, 800k steps (the original: ~10.6 h at 21 steps/s on a TPU v3-8).

Run (after `tfds build cifar10 --file_format=array_record` once, see the README):
  python -m ddpm_jax.main --config configs/cifar10_eps_vlb_fixed.py --workdir runs/cifar10_eps_vlb_fixed
Laptop check of the same code path (about a minute on a CPU):
  python -m ddpm_jax.main --config configs/cifar10_eps_vlb_fixed.py:runlocal --workdir /tmp/cifar10_eps_vlb_fixed
"""

from ddpm_jax import config_lib


def get_config(arg=None):
  config = config_lib.default_config()
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixedlarge"
  config.diffusion.loss_type = "kl"
  return config_lib.apply_variants(config, arg)
