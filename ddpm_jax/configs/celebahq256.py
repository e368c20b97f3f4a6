"""CelebA-HQ 256², the original DDPM recipe for 256² images (Ho et al. 2020, App. B), ε-prediction + L_simple.

U-Net ch 128, mult (1,1,2,2,4,4), 2 res blocks, attention at 16² (113,673,219 parameters), dropout 0,
T = 1000 linear β, Adam 2e-5, batch 64, EMA 0.9999, random flips on, 0.5M steps
(the original trained these on TPU v3 pods; expect days on one accelerator). The model is big: use bf16
compute (--config.model.dtype=bfloat16) and remat on memory-limited devices.

Run (after `tfds build celeb_a_hq/256 --file_format=array_record` once, see the README):
  python -m ddpm_jax.main --config configs/celebahq256.py --workdir runs/celebahq256
Laptop check:
  python -m ddpm_jax.main --config configs/celebahq256.py:runlocal --workdir /tmp/celebahq256
"""

from ddpm_jax import config_lib


def get_config(arg=None):
  config = config_lib.config_256("celeb_a_hq/256", random_flip=True, num_steps=500_000)
  return config_lib.apply_variants(config, arg)
