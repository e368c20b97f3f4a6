"""The tiny training config shared by the tests that train (tests/test_train.py, tests/test_run_modes.py)."""

import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def tiny_config(tmp_path, **train_overrides):
  """configs/mnist_mu.py shrunk by its runlocal variant, with the data prepared under tmp_path."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("mnist_mu", os.path.join(CONFIGS, "mnist_mu.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.data.data_dir = str(tmp_path / "tfds")
  config.model.attn_resolutions = (14,)
  config.diffusion.num_timesteps = 50
  config.train.batch_size = 8
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.num_grid_samples = 4
  config.sample.steps = 5
  config.sample.num_samples = 5
  config.sample.batch_size = 8
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  config.eval.timesteps_per_example = 2
  for k, v in train_overrides.items():
    config.train[k] = v
  return config

