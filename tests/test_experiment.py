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
from ddpm_jax import errors
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
    ("sample.labels", (3,), r"config.sample.labels=\(3,\) is invalid: expected \(\) for an unconditional model"),
    ("sample.guidance_scale", 2.0, r"config.sample.guidance_scale=2.0 is invalid: expected 1.0 for an unconditional"),
    ("sample.guidance_scale", -1.0, r"config.sample.guidance_scale=-1.0 is invalid: expected a finite guidance scale >= 0"),
    ("eval.guidance_scales", (1.0, -2.0), r"config.eval.guidance_scales\[1\]=-2.0 is invalid"),
    ("model.label_dropout", 0.2, r"config.model.label_dropout=0.2 is invalid: expected 0 for an unconditional"),
    ("diffusion.num_timesteps", 1, r"config.diffusion.num_timesteps=1 is invalid: expected an integer >= 2"),
    ("diffusion.beta_start", 0.05, r"config.diffusion.beta_start=0.05 is invalid: expected at most "
     r"diffusion.beta_end=0.02 \(the 'linear' schedule rises"),
    ("data.data_dir", __file__, r"config.data.data_dir=.* is invalid: expected a folder"),
])
def test_config_validation_errors(field, value, message):
  config = config_lib.default_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(errors.ConfigError, match=message):  # a ValueError too
    config_lib.validate(config)


def test_unknown_config_fields_are_named_with_the_closest_field():
  config = config_lib.default_config()
  with config.unlocked():
    config.train.num_step = 100  # a misspelt field in a config file would otherwise be ignored
  with pytest.raises(ValueError, match=r"config.train.num_step is not a field; did you mean "
                                       r"config.train.num_steps\?"):
    config_lib.validate(config)
  config = config_lib.default_config()
  with config.unlocked():
    config.trainer = {"steps": 1}
  with pytest.raises(errors.ConfigError, match=r"config.trainer is not a field; did you mean config.train\?"):
    config_lib.validate(config)
  config = config_lib.default_config()
  config.diffusion.beta_schedule = "cosine"  # beta_start / beta_end unused: their order does not matter
  config.diffusion.beta_start = 0.5
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


def test_label_embedding_starts_unit_normal_like_improved_ddpm(data_root):
  """Improved DDPM's label table is torch's nn.Embedding, N(0, 1) per entry; flax's default would be
  N(0, 1/(4·ch)), rows of norm ≈ 1 against a timestep embedding several times larger."""
  config = _tiny_config(data_root)
  config.model.num_classes = 10
  config.model.label_dropout = 0.1
  exp = experiment.Experiment(config)
  table = np.asarray(exp.init_params(jax.random.PRNGKey(0))["label_emb"]["embedding"], np.float64)
  assert table.shape == (11, 4 * config.model.ch)  # ten digits and the null class
  assert abs(table.mean()) < 0.1 and 0.9 < table.std() < 1.1


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


@pytest.mark.parametrize("field, value, message", [
    ("sample.labels", (3, 10), r"config.sample.labels=\(3, 10\) is invalid: expected integers in \[0, 10\)"),
    ("model.label_dropout", 1.0, r"config.model.label_dropout=1.0 is invalid: expected a probability in \[0, 1\)"),
])
def test_conditional_config_errors(field, value, message):
  from ddpm_jax.configs import mnist_mu_cond  # pylint: disable=g-import-not-at-top
  config = mnist_mu_cond.get_config()
  config_lib.validate(config)
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)
  config = mnist_mu_cond.get_config()
  config.model.label_dropout = 0.0  # no null class: nothing to guide towards
  with pytest.raises(ValueError, match=r"guidance_scale=2.0 is invalid: expected 1.0 unless the model has a null"):
    config_lib.validate(config)


def test_guided_model_fn_is_one_batched_call_combining_conditional_and_null_outputs(data_root):
  from ddpm_jax.configs import mnist_mu_cond  # pylint: disable=g-import-not-at-top
  config = mnist_mu_cond.get_config("runlocal")
  config.data.data_dir = str(data_root / "tfds")
  exp = experiment.Experiment(config)
  params = exp.init_params(jax.random.PRNGKey(0))
  # Every leaf perturbed: at init the zero-initialised last convs would hide the labels' effect.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  params = jax.tree.unflatten(treedef, [a + 0.2 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])
  x = jax.random.normal(jax.random.PRNGKey(1), (3,) + exp.image_shape)
  t = jnp.asarray([5, 500, 900])
  y = jnp.asarray([3, 3, 7])
  cond = np.asarray(exp.model_fn(params, labels=y)(x, t), np.float64)
  null = np.asarray(exp.model_fn(params, labels=jnp.full((3,), 10))(x, t), np.float64)
  assert np.abs(cond - null).max() > 1e-3
  for w in (0.0, 2.0, 4.0):
    got = np.asarray(exp.model_fn(params, labels=y, guidance_scale=w)(x, t), np.float64)
    np.testing.assert_allclose(got, null + w * (cond - null), rtol=1e-4, atol=1e-5)
  # One network evaluation on a batch of 2B, not two: as many convolutions as the plain call.
  def convs(w):
    jaxpr = str(jax.make_jaxpr(lambda p: exp.model_fn(p, labels=y, guidance_scale=w)(x, t))(params))
    return jaxpr.count("conv_general_dilated")
  assert convs(2.0) == convs(1.0) > 0
  no_null = config.copy_and_resolve_references()
  no_null.model.label_dropout = 0.0
  with pytest.raises(ValueError, match="needs a model with a null class"):
    experiment.model_fn(experiment.create_model(no_null, exp.image_shape), params, labels=y, guidance_scale=2.0)


def test_label_dropout_rate_and_null_label():
  labels = jnp.arange(20000) % 10
  dropped = np.asarray(experiment.drop_labels(jax.random.PRNGKey(0), labels, 0.1, 10))
  is_null = dropped == 10
  # Binomial(20000, 0.1): mean 2000, sd 42.
  assert abs(is_null.sum() - 2000) < 5 * 42
  np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
  assert not np.asarray(experiment.drop_labels(jax.random.PRNGKey(0), labels, 0.0, 10) == 10).any()
