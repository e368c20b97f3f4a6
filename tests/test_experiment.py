"""The experiment layer: config validation (one entry), the learning-rate schedules, the named random
streams, the one model_fn, and restoring only the parameters for inference."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import config_lib
from ddpm_jax import configs
from ddpm_jax import experiment

from tiny import CONFIGS as _CONFIGS
from tiny import tiny_config as _tiny_config


def test_learning_rate_schedules_against_closed_forms():
  config = config_lib.default_config()
  config.optim.learning_rate, config.optim.warmup_steps, config.train.num_steps = 1e-3, 10, 110
  constant = experiment.learning_rate_schedule(config)
  config.optim.lr_schedule = "cosine"
  cosine = experiment.learning_rate_schedule(config)
  for step in (0, 5, 10, 35, 60, 85, 110, 200):
    ramp = min(step / 10, 1.0)
    frac = min(max((step - 10) / 100, 0.0), 1.0)
    assert float(constant(step)) == pytest.approx(1e-3 * ramp, rel=1e-6, abs=1e-12)
    assert float(cosine(step)) == pytest.approx(1e-3 * ramp * 0.5 * (1 + math.cos(math.pi * frac)),
                                                rel=1e-5, abs=1e-10)
  config.optim.lr_schedule = "step"
  with pytest.raises(ValueError, match=r"config.optim.lr_schedule='step'.*'cosine'"):
    config_lib.validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("diffusion.mean_type", "mean", r"config.diffusion.mean_type='mean'.*'xprev', 'mu'"),
    ("diffusion.loss_type", "l1", r"config.diffusion.loss_type='l1'.*'kl'"),
    ("train.batch_size", 0, r"config.train.batch_size=0.*integer >= 1"),
    ("optim.ema_decay", 1.5, r"config.optim.ema_decay=1.5.*\[0.0, 1.0\]"),
    ("sample.steps", 5000, r"config.sample.steps=5000.*at most diffusion.num_timesteps=1000"),
    ("diffusion.timestep_sampler", "importance", r"timestep_sampler=.importance.*loss-second-moment"),
    ("model.dtype", "int8", r"config.model.dtype='int8'.*'bfloat16'"),
    ("diffusion.mse_weight", "snr", r"config.diffusion.mse_weight='snr'.*'none', 'eps', 'x0', 'kl', 'min_snr'"),
    ("diffusion.mse_weight", "eps", r"config.diffusion.mse_weight='eps'.*loss_type='kl'.*weighs the 'mse'"),
    ("diffusion.min_snr_gamma", -1.0, r"config.diffusion.min_snr_gamma=-1.0.*\(0.0, inf\)"),
    ("model.output_residual", "skip", r"config.model.output_residual='skip'.*'none', 'identity', 'learned'"),
    ("model.output_scale", 0.0, r"config.model.output_scale=0.0.*\(0.0, inf\)"),
])
def test_config_validation_errors(field, value, message):
  config = config_lib.default_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_out_ch_must_match_the_variance_type(data_root):
  config = _tiny_config(data_root)
  config.model.out_ch = 1
  config.diffusion.var_type = "learned_range"
  with pytest.raises(ValueError, match=r"config.model.out_ch=1.*2 for 1-channel images"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match=r"config.model.out_ch=1.*2 for 1-channel images"):
    experiment.Experiment(config)


def test_every_shipped_config_is_valid():
  import importlib.util  # pylint: disable=g-import-not-at-top
  names = configs.names()
  assert len(names) >= 13 and "mnist_mu" in names and "mnist_common" not in names
  assert os.path.samefile(_CONFIGS, configs.DIRECTORY)  # the top-level configs/ is the package's folder
  for name in names:
    spec = importlib.util.spec_from_file_location(name, os.path.join(_CONFIGS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in (None, "runlocal"):
      config_lib.validate(module.get_config(arg))
  config = config_lib.default_config()
  config.diffusion.update(mean_type="eps", loss_type="mse", mse_weight="eps")
  with pytest.raises(ValueError, match=r"mse_weight='eps'.*'none' with diffusion.mean_type='eps'"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="variant 'fast' is not known"):
    config_lib.apply_variants(config_lib.default_config(), "fast")


def test_random_streams_are_named_distinct_and_keep_earlier_runs_keys():
  seed = 7
  keys = {name: experiment.stream_key(seed, name) for name in experiment.STREAMS}
  init_key, run_key = experiment.init_and_run_keys(seed)
  keys.update(init=init_key, run=run_key)
  for sub in experiment.SUBSTREAMS:
    keys[f"sample/{sub}"] = experiment.substream_key(keys["sample"], sub)
  for step in range(3):
    for field, key in experiment.step_keys(run_key, jnp.int32(step))._asdict().items():
      keys[f"step{step}/{field}"] = key
  data = {name: tuple(np.asarray(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key)
                                 else k).ravel().tolist()) for name, k in keys.items()}
  assert len(set(data.values())) == len(data), "two named streams share a key"
  # The keys runs before the stream table used: PRNGKey(seed + 1) for samples, + 2 bits/dim, + 3 metrics.
  for name, offset in (("sample", 1), ("eval", 2), ("metric_samples", 3)):
    np.testing.assert_array_equal(keys[name], jax.random.PRNGKey(seed + offset))
  with pytest.raises(ValueError, match=r"random stream 'noise' is not known; accepted: \['eval'"):
    experiment.stream_key(seed, "noise")
  with pytest.raises(ValueError, match=r"sub-stream 'x' is not known"):
    experiment.substream_key(keys["sample"], "x")


def test_model_fn_routes_labels_dropout_and_the_train_flag(data_root):
  config = _tiny_config(data_root)
  config.model.dropout = 0.5
  exp = experiment.Experiment(config)
  params = exp.init_params(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + exp.image_shape)
  t = jnp.asarray([3, 40])
  eval_out = exp.model_fn(params)(x, t)
  # An unconditional model ignores labels (they are not passed on, so no error).
  np.testing.assert_array_equal(exp.model_fn(params, labels=jnp.asarray([1, 2]))(x, t), eval_out)
  a = exp.model_fn(params, train=True, dropout_key=jax.random.PRNGKey(2))(x, t)
  b = exp.model_fn(params, train=True, dropout_key=jax.random.PRNGKey(2))(x, t)
  c = exp.model_fn(params, train=True, dropout_key=jax.random.PRNGKey(3))(x, t)
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0 and np.abs(np.asarray(a) - np.asarray(eval_out)).max() > 0
  with pytest.raises(ValueError, match="train=True.*dropout_key"):
    exp.model_fn(params, train=True)
  # abstract_params describes init_params exactly, without computing anything.
  shapes = jax.tree.map(lambda s: (s.shape, s.dtype), exp.abstract_params())
  assert shapes == jax.tree.map(lambda p: (p.shape, p.dtype), params)


def test_inference_builds_no_optimizer_no_timestep_sampler_and_reads_no_dataset(straight_run, monkeypatch):
  from ddpm_jax import checkpointing, run_modes, train  # pylint: disable=g-import-not-at-top
  from ddpm_jax.data import sources  # pylint: disable=g-import-not-at-top
  config, workdir, _ = straight_run

  def forbidden(*args, **kwargs):
    raise AssertionError("sampling must not build this")
  monkeypatch.setattr(experiment, "create_optimizer", forbidden)
  monkeypatch.setattr(experiment.resample, "create_named_schedule_sampler", forbidden)
  monkeypatch.setattr(sources, "get_builder", forbidden)  # every dataset read goes through it
  result = run_modes.sample(config, workdir)
  assert np.load(result["npz"])["images"].shape == (5, 28, 28, 1)
  # restore_params reads the same arrays a full restore would.
  exp = experiment.Experiment(config)
  step, ema = exp.restore_params(workdir)
  monkeypatch.undo()
  full = train.create_train_state(exp)
  with checkpointing.CheckpointManager(os.path.join(workdir, "checkpoints"), save_interval_steps=1,
                                       max_to_keep=10) as manager:
    full = manager.restore(full)
  assert step == int(full.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(ema), jax.device_get(full.ema_params))


def test_config_argument_accepts_paths_and_shipped_names(tmp_path):
  shipped = os.path.join(configs.DIRECTORY, "mnist_mu.py")
  assert configs.resolve("mnist_mu:runlocal") == shipped + ":runlocal"
  assert configs.resolve("mnist_mu.py") == shipped
  own = tmp_path / "mine.py"
  own.write_text("")
  assert configs.resolve(f"{own}:runlocal") == f"{own}:runlocal"  # an existing file wins over a name
  with pytest.raises(FileNotFoundError, match=r"--config='mnist_nu' is neither.*mnist_mu, mnist_mu_bound"):
    configs.resolve("mnist_nu")
  with pytest.raises(FileNotFoundError, match=r"--config='sub/mnist_mu.py' is neither"):
    configs.resolve("sub/mnist_mu.py")  # a missing path is not taken for a name
  argv = configs.resolve_argv(["prog", "--config", "mnist_eps", "--config=mnist_x0:runlocal", "--mode=eval"])
  assert argv == ["prog", "--config", os.path.join(configs.DIRECTORY, "mnist_eps.py"),
                  "--config=" + os.path.join(configs.DIRECTORY, "mnist_x0.py") + ":runlocal", "--mode=eval"]
