"""Shared settings of the bundled-digit configs (mnist_mu.py, mnist_eps.py, mnist_x0.py), sized for a
2-core CPU and a 15-minute budget.

A 1.1M-parameter U-Net (ch 32, mult (1,2,2): 28² → 14² → 7², one res block per level, attention at 7²) on
the 4,500 bundled training digits; batch 32, 2,000 steps, Adam 1e-3 with a 100-step warm-up and a cosine
decay to 0 (a small net on small data tolerates a larger rate; a short run should end annealed), EMA 0.995
(a short run needs a short EMA), no flips (digits are not mirror-symmetric).

Departures from the CIFAR-10 recipe, and why:
  * T = 25 with the linear schedule stretched to keep its shape (β 4e-3 → 0.8, Improved DDPM's rule
    β × 1000/T). A μ-network must output μ̃ = coef1·x₀ + coef2·x_t, whose x₀ part (coef1) is tiny at large t
    when T is large, so the bound barely rewards getting a digit's shape right there. At 1,200 steps on a
    2-core CPU (MNIST-FD@256, lower is better; README, "The main job"): T = 1000 gave noise, T = 200 blobs,
    T = 100 strokes (281), T = 50 (209), T = 25 (151); a cosine β schedule at T = 100 was worse still.
  * Trained on the bound (`kl`), timesteps are importance-sampled (Improved DDPM §3.3, loss-second-moment):
    the per-step bound terms differ by orders of magnitude across t.
  * Samples come from the full chain (25 steps).
  * The end-of-run bits/dim is the unbiased estimate over 8 timesteps per test digit; the full bound is
    `--mode bpd` (term by term) or `--mode eval --config.eval.full_bound=True`.
"""

from ddpm_jax import config_lib


def mnist_config(mean_type, var_type, loss_type, arg=None):
  """The bundled-digit config for one parameterization; `arg` takes the config-file variants (runlocal)."""
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
  config.diffusion.num_timesteps = 25
  config.diffusion.beta_start = 4e-3
  config.diffusion.beta_end = 0.8
  config.diffusion.timestep_sampler = "loss-second-moment" if loss_type.endswith("kl") else "uniform"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.lr_schedule = "cosine"
  config.optim.ema_decay = 0.995
  config.train.batch_size = 32
  config.train.num_steps = 2000
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.archive_every = 0
  config.train.sample_every = 0
  config.train.num_grid_samples = 64
  config.sample.steps = 0
  config.sample.batch_size = 64
  config.eval.batch_size = 100
  config.eval.full_bound = False
  config.eval.timesteps_per_example = 8
  config.eval.num_samples = 500        # MNIST-FD@500 against the 500 held-out test digits
  config.eval.fast_num_samples = 200
  config.eval.fast_num_examples = 200
  return config_lib.apply_variants(config, arg)
