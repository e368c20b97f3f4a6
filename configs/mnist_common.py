"""Shared settings of the bundled-digit configs (mnist_mu.py, mnist_eps.py, mnist_x0.py).

A 1.1M-parameter U-Net (ch 32, mult (1,2,2): 28² → 14² → 7², one res block per level, attention at 7²) on
the 4,500 bundled training digits, T = 1000 linear β as the original; Adam 1e-3 with a 100-step warm-up
(a small net on small data tolerates a larger rate), batch 32, EMA 0.995 (short runs need a short EMA),
no flips (digits are not mirror-symmetric). Samples come from a respaced 100-step chain so that a CPU
draws a grid in seconds; the end-of-run bits/dim is the unbiased estimate over 8 timesteps per test digit
(the full 1000-term bound: --mode eval --config.eval.full_bound=True).
"""

from ddpm_jax import config_lib


def mnist_config(mean_type, var_type, loss_type, arg=None):
  config = config_lib.default_config()
  config.data.name = "mnist5k"
  config.data.random_flip = False
  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (7,)
  config.model.dropout = 0.0
  config.diffusion.mean_type = mean_type
  config.diffusion.var_type = var_type
  config.diffusion.loss_type = loss_type
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.ema_decay = 0.995
  config.train.batch_size = 32
  config.train.num_steps = 1200
  config.train.log_every = 50
  config.train.checkpoint_every = 400
  config.train.keep_checkpoints = 2
  config.train.archive_every = 0
  config.train.sample_every = 0
  config.train.num_grid_samples = 64
  config.sample.steps = 100
  config.sample.batch_size = 64
  config.eval.batch_size = 100
  config.eval.full_bound = False
  config.eval.timesteps_per_example = 8
  return config_lib.apply_variants(config, arg)
