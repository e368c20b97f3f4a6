r"""The main job's μ-model conditional on the digit class, with classifier-free guidance (Ho & Salimans 2022).

  python -m ddpm_jax.main --config configs/mnist_mu_cond.py --workdir runs/mnist_mu_cond
  python -m ddpm_jax.main --config configs/mnist_mu_cond.py --workdir runs/mnist_mu_cond --mode sample \
      --config.sample.labels='(3,)' --config.sample.guidance_scale=2      # 64 threes, guided
  python -m ddpm_jax.main --config configs/mnist_mu_cond.py --workdir runs/mnist_mu_cond --mode eval
      # MNIST-FD, and the classifier's agreement with the requested digit at guidance w = 0, 1, 2, 3

Everything is configs/mnist_mu.py's recipe (the network predicts μ_θ(x_t, t, y); L_simple in μ-space;
the x_t path with the 0.01 output scale; 1,200 steps of 32), plus:
  * model.num_classes = 10: a learned label embedding added to the timestep embedding (rows start
    N(0, 1), as Improved DDPM's, so the label is as strong as the timestep from the first step);
  * model.label_dropout = 0.1: in training each label becomes the null class (label 10) with probability
    0.1, so the same network is also the unconditional model;
  * sampling: every digit in turn (sample.labels empty; the grid has one row per digit), guidance w = 2:
    μ_w = μ_∅ + w·(μ_y − μ_∅), one batched network call per step (`diffusion.classifier_free_guidance`,
    equal to ε-space guidance since μ is affine in ε at fixed x_t, t).
The measured trade-off (time, accuracy and MNIST-FD per w) is in the README, "Class-conditional μ-models".
"""

from ddpm_jax.configs import mnist_mu


def get_config(arg=None):
  config = mnist_mu.get_config(arg)
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  config.sample.guidance_scale = 2.0
  if "runlocal" not in (arg or ""):
    config.train.num_grid_samples = 100  # ten of each digit: one row per class
  config.eval.guidance_scales = (0.0, 1.0, 2.0, 3.0)
  return config
