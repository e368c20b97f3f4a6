r"""CIFAR-10, class-conditional μ-simple with classifier-free guidance: configs/cifar10_mu_simple.py's recipe
(the network predicts μ_θ(x_t, t, y); L_simple in μ-space; the x_t path with the 0.01 output scale) with the
10 CIFAR-10 classes as labels, label dropout 0.1 to the null class (label 10), and guided sampling.

Not trained here (needs an accelerator, like cifar10_mu_simple); `:runlocal` checks the code path on a CPU.
FID/IS need `--config.eval.inception_weights` (README, "Metrics"); the classifier-agreement column of the
guidance table exists only for the bundled digits.

  python -m ddpm_jax.main --config configs/cifar10_mu_cond.py --workdir runs/cifar10_mu_cond
  python -m ddpm_jax.main --config configs/cifar10_mu_cond.py --workdir runs/cifar10_mu_cond --mode sample \
      --config.sample.labels='(3, 5)' --config.sample.guidance_scale=3   # cats and dogs
"""

from ddpm_jax.configs import cifar10_mu_simple


def get_config(arg=None):
  config = cifar10_mu_simple.get_config(arg)
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.sample.guidance_scale = 3.0
  if "runlocal" not in (arg or ""):  # ten of each class: one row per class
    config.sample.num_samples = 100
    config.sample.batch_size = 100
    config.train.num_grid_samples = 100
  config.eval.guidance_scales = (0.0, 1.0, 3.0, 5.0)
  return config
