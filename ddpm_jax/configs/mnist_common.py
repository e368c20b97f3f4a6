"""Shared settings of the bundled-digit configs (mnist_mu.py, mnist_eps.py, mnist_x0.py, mnist_mu_bound.py),
sized for a 2-core CPU and a 15-minute budget.

A 1.1M-parameter U-Net (ch 32, mult (1,2,2): 28² → 14² → 7², one res block per level, attention at 7²) on
the 4,500 bundled training digits; batch 32, 1,200 steps, Adam 1e-3 with a 100-step warm-up and a cosine
decay to 0 (a small net on small data tolerates a larger rate; a short run should end annealed), EMA 0.995
(a short run needs a short EMA), no flips (digits are not mirror-symmetric). 1,200 steps is what fits in 15
minutes on the slower days of the shared 2-core machines (≈ 50 training images/s).

The chain (`chain`):
  * "t1000" (the default): the paper's T = 1000, linear β 1e-4 → 0.02; samples on a 100-step respaced chain
    with Σ = β̃_t (`fixedsmall`), 10× cheaper than the full chain.
  * "t25": T = 25, the linear schedule stretched by Improved DDPM's rule (β × 1000/T: 4e-3 → 0.8), Σ = β_t,
    the full 25-step chain, importance-sampled timesteps for the bound. The earlier main job used it:
    with the true bound and a plain U-Net, a μ-network learns a digit's shape faster on a short chain.
The end-of-run bits/dim is the unbiased estimate over 8 timesteps per test digit; the full bound is
`--mode bpd` or `--mode eval --config.eval.full_bound=True`.
"""

from ddpm_jax import config_lib

CHAINS = ("t1000", "t25")


def mnist_config(mean_type, var_type, loss_type, arg=None, *, chain="t1000"):
  """The bundled-digit config for one parameterization; `arg` takes the config-file variants (runlocal)."""
  if chain not in CHAINS:
    raise ValueError(f"chain={chain!r} is not known; accepted: {', '.join(CHAINS)}.")
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
  if chain == "t25":
    config.diffusion.num_timesteps = 25
    config.diffusion.beta_start = 4e-3
    config.diffusion.beta_end = 0.8
    config.sample.steps = 0
  else:
    config.diffusion.num_timesteps = 1000
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02
    config.sample.steps = 100
  config.diffusion.timestep_sampler = "loss-second-moment" if loss_type.endswith("kl") else "uniform"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.lr_schedule = "cosine"
  config.optim.ema_decay = 0.995
  config.train.batch_size = 32
  config.train.num_steps = 1200
  config.train.log_every = 50
  config.train.checkpoint_every = 300
  config.train.keep_checkpoints = 2    # for resuming ...
  config.train.archive_every = 300     # ... and every 300 steps kept, so `--mode sweep` finds 4 checkpoints
  config.train.sample_every = 0
  config.train.num_grid_samples = 64
  config.sample.batch_size = 64
  config.eval.batch_size = 100
  config.eval.full_bound = False
  config.eval.timesteps_per_example = 8
  config.eval.num_samples = 500        # MNIST-FD@500 against the 500 held-out test digits
  config.eval.fast_num_samples = 200
  config.eval.fast_num_examples = 200
  return config_lib.apply_variants(config, arg)
