"""The experiment configuration: defaults (the original DDPM recipe), the laptop shrink, and validation.

Experiment files in `configs/` start from `default_config()` and override what differs; `main.py` loads one
with ml_collections' `config_flags`, so any field can be overridden on the command line
(`--config.train.num_steps=1000`). A config-file argument after a colon selects variants, e.g.
`--config configs/cifar10_mu_vlb_fixed.py:runlocal` shrinks the run for a laptop.
"""

from __future__ import annotations

import difflib
import numbers
import os

import ml_collections
import numpy as np

from ddpm_jax import diffusion as diffusion_lib
from ddpm_jax import errors
from ddpm_jax import resample
from ddpm_jax.data import pipeline as data_pipeline
from ddpm_jax.data import sources as data_sources
from ddpm_jax.models import unet as unet_lib


# optim.lr_schedule: the original's warm-up then constant, or warm-up then cosine decay to 0
# (ddpm_jax.experiment.learning_rate_schedule).
LR_SCHEDULES = ("constant", "cosine")


def default_config() -> ml_collections.ConfigDict:
  """The original DDPM CIFAR-10 recipe (Ho et al. 2020, App. B), μ-parameterized and trained on the bound."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: a tfds name. 'mnist5k' is bundled and prepared on first use; others need a one-time
  # `tfds build NAME --file_format=array_record` (README, "Datasets").
  config.data = data_pipeline.get_default_data_config()
  config.data.name = "cifar10"
  config.data.random_flip = True

  # The network (ddpm_jax.models.unet.UNet). out_ch=None means C, or 2C for a learned variance.
  config.model = ml_collections.ConfigDict(dict(
      name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
      resamp_with_conv=True, out_ch=ml_collections.FieldReference(None, field_type=int), num_classes=None,
      num_heads=1, num_head_channels=ml_collections.FieldReference(None, field_type=int),
      use_scale_shift_norm=False, dtype="float32", remat=False,
      output_scale=1.0,          # constant on the last conv's output (UNet.output_scale; 1: the original)
      output_residual="none",    # 'identity' / 'learned': a path from x_t to the output (UNet)
      label_dropout=0.0,         # class-conditional: P(label → null class) in training; > 0 adds the null row
      resblock_updown=False))    # Improved DDPM: res blocks do the down/upsampling (UNet.resblock_updown)

  # The diffusion (ddpm_jax.diffusion): T = 1000, linear β 1e-4 → 0.02, μ (xprev) + the true bound.
  config.diffusion = ml_collections.ConfigDict(dict(
      beta_schedule="linear", num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
      mean_type="xprev", var_type="fixedlarge", loss_type="kl", timestep_sampler="uniform",
      mse_weight="none",         # xprev + mse: λ_t of λ_t‖μ̃_t − μ_θ‖² (diffusion.MSE_WEIGHTS)
      min_snr_gamma=5.0))        # γ of mse_weight='min_snr'

  # Adam 2e-4 (eps 1e-8), linear warm-up over 5000 steps, global-norm clip 1.0, EMA 0.9999.
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=2e-4, beta1=0.9, beta2=0.999, eps=1e-8, warmup_steps=5000, grad_clip=1.0,
      ema_decay=0.9999,
      lr_schedule="constant"))   # or "cosine": after the warm-up, anneal to 0 at train.num_steps

  config.train = ml_collections.ConfigDict(dict(
      batch_size=128,          # global batch, split over every device of every host
      num_steps=800_000,
      steps_per_call=1,        # k train steps per compiled call (lax.scan) to amortise dispatch
      log_every=100,
      checkpoint_every=5000,
      keep_checkpoints=3,      # the last K checkpoints ...
      archive_every=100_000,   # ... plus every multiple of M, kept forever (0: none)
      sample_every=20_000,     # an EMA sample grid PNG in the workdir (0: only at the end)
      num_grid_samples=64,
      eval_every=0,            # a test bits/dim estimate while training (0: only at the end)
  ))

  # Sampling: the grids written while training and --mode sample.
  config.sample = ml_collections.ConfigDict(dict(
      sampler="ancestral",     # 'ancestral' or 'ddim'
      steps=0,                 # 0: all T steps; N < T: a respaced chain of N steps
      eta=0.0,                 # DDIM only
      skip_type="even",        # where the N steps go: even (Improved DDPM), uniform or quadratic (DDIM paper)
      progressive_rows=8,      # --mode sample: rows of the x̂_0-over-time strip (0: none)
      clip_denoised=True, use_ema=True, num_samples=64, batch_size=64,
      # Class-conditional models: the labels cycled over the samples (empty: every class in turn) and the
      # classifier-free guidance scale w (0: the null-class model, 1: plain conditional, > 1: guided).
      labels=ml_collections.FieldReference((), field_type=tuple),
      guidance_scale=1.0))

  # Evaluation: bits/dim on the eval split (--mode eval, and the end of training).
  config.eval = ml_collections.ConfigDict(dict(
      use_ema=True, batch_size=128,
      num_examples=0,          # 0: the whole split
      full_bound=True,         # all T terms (calc_bpd_loop); False: unbiased estimate from sampled t
      timesteps_per_example=8,  # with full_bound=False
      clip_denoised=True,      # clip x̂_0 to [-1, 1] inside p_θ, the original's evaluation default
      # Sample quality in --mode eval/sweep: MNIST-FD/IS on mnist5k; FID/IS once inception_weights is set.
      num_samples=10_000,      # FID@N / MNIST-FD@N: compare only values with the same N
      fast_num_samples=1_000, fast_num_examples=1_000,  # --mode sweep --fast
      inception_weights="",    # pt_inception-2015-12-05-6726825d.pth or its .npz (README, "Metrics")
      inception_reference_cache="",  # .npz of the reference statistics; default: next to the weights
      fid_reference_split="train",   # DDPM's FID reference: the training set (50k for CIFAR-10)
      fid_reference_num_examples=0,  # 0: the whole split
      # Class-conditional models: --mode eval also samples at each of these guidance scales and reports
      # the bundled classifier's agreement with the requested labels (mnist5k) beside MNIST-FD.
      guidance_scales=ml_collections.FieldReference((0.0, 1.0, 2.0, 4.0), field_type=tuple),
  ))
  return config


def config_256(dataset: str, *, random_flip: bool, num_steps: int) -> ml_collections.ConfigDict:
  """The original recipe for 256² images (CelebA-HQ, LSUN): ε-prediction + L_simple, 113.7M-param U-Net.

  U-Net ch 128, mult (1,1,2,2,4,4), 2 res blocks, attention at 16², no dropout; Adam 2e-5, batch 64
  (Ho et al. 2020, App. B).
  """
  config = default_config()
  config.data.name = dataset
  config.data.image_size = 256
  config.data.random_flip = random_flip
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.dropout = 0.0
  config.diffusion.mean_type = "eps"
  config.diffusion.loss_type = "mse"
  config.optim.learning_rate = 2e-5
  config.train.batch_size = 64
  config.train.num_steps = num_steps
  config.sample.batch_size = 16
  config.eval.batch_size = 16
  return config


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants given after the config file's colon (only `runlocal` now)."""
  for variant in filter(None, (arg or "").split(",")):
    if variant == "runlocal":
      apply_runlocal(config)
    else:
      raise errors.ConfigError(f"config variant {variant!r} is not known; accepted: runlocal.")
  return config


def apply_runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config so that it runs in about a minute on a laptop CPU: same code paths, tiny shapes."""
  if config.data.image_size and config.data.image_size > 32:
    config.data.image_size = 32  # center-crop and resize 256² data to 32² for the check
  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.num_heads = 1
  config.model.num_head_channels = None
  config.train.batch_size = 8
  config.train.num_steps = 20
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.train.archive_every = 0
  config.train.sample_every = 0
  config.train.num_grid_samples = 16
  config.optim.warmup_steps = 5
  config.sample.steps = 10
  config.sample.num_samples = 16
  config.sample.batch_size = 16
  config.eval.num_examples = 16
  config.eval.num_samples = 16
  config.eval.fast_num_samples = 16
  config.eval.fast_num_examples = 16
  config.eval.batch_size = 16
  config.eval.full_bound = False
  return config


def _fail(field, value, accepted):
  raise errors.ConfigError(f"config.{field}={value!r} is invalid: expected {accepted}.")


# Schedules whose β rise from beta_start to beta_end; for the others the two are unused or only beta_end is.
_ORDERED_SCHEDULES = ("linear", "quad", "warmup10", "warmup50")


def did_you_mean(name: str, candidates, *, prefix: str = "") -> str:
  """'did you mean config.train.num_steps?' for the closest of `candidates` to `name`, else the list of
  candidates."""
  candidates = sorted(str(c) for c in candidates)
  close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
  if close:
    return f"did you mean {prefix}{close[0]}?"
  if not candidates:
    return "this section has no fields."
  return f"the fields of {prefix.rstrip('.') or 'config'} are: {', '.join(candidates)}."


def unknown_field_error(path: str, known) -> errors.ConfigError:
  """The error for `config.<path>` that names no field, with the closest field of its section."""
  parent, _, name = path.rpartition(".")
  prefix = f"config.{parent}." if parent else "config."
  return errors.ConfigError(f"config.{path} is not a field; {did_you_mean(name, known, prefix=prefix)}")


def _check_known_fields(config, reference, prefix="") -> None:
  """Every field of `config` must exist in `reference` (the defaults): a misspelt field in a config file
  (`config.train.num_step = 100`) would otherwise be ignored without a word."""
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in reference:
      raise unknown_field_error(path, reference.keys())
    value, ref = config[key], reference[key]
    if isinstance(ref, (ml_collections.ConfigDict, dict)) and isinstance(value, (ml_collections.ConfigDict,
                                                                                   dict)):
      _check_known_fields(value, ref, prefix=f"{path}.")


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_choice(config, field, choices):
  section, name = field.split(".")
  value = config[section][name]
  if value not in choices:
    _fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_int(config, field, minimum):
  section, name = field.split(".")
  value = config[section][name]
  if not _is_int(value) or value < minimum:
    _fail(field, value, f"an integer >= {minimum}")


def _check_float(config, field, low, high, *, low_open=False, high_open=False):
  section, name = field.split(".")
  value = config[section][name]
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
  if not ok:
    _fail(field, value, f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def _check_labels_and_guidance(config) -> None:
  """sample.labels / sample.guidance_scale / eval.guidance_scales against the model's classes."""
  num_classes = config.model.get("num_classes")
  null_class = (config.model.get("label_dropout") or 0) > 0
  labels = tuple(config.sample.get("labels", ()) or ())
  if labels:
    if num_classes is None:
      _fail("sample.labels", labels, "() for an unconditional model (set model.num_classes to condition)")
    bad = [y for y in labels if not _is_int(y) or not 0 <= y < num_classes]
    if bad:
      _fail("sample.labels", labels, f"integers in [0, {num_classes}) (model.num_classes={num_classes})")
  scales = [("sample.guidance_scale", config.sample.get("guidance_scale", 1.0))]
  scales += [(f"eval.guidance_scales[{i}]", w) for i, w in enumerate(config.eval.get("guidance_scales", ()))]
  for field, w in scales:
    if not isinstance(w, numbers.Real) or isinstance(w, bool) or not w >= 0 or w == float("inf"):
      _fail(field, w, "a finite guidance scale >= 0 (0: unconditional, 1: conditional, > 1: guided)")
  w = config.sample.get("guidance_scale", 1.0)
  if w != 1.0 and num_classes is None:
    _fail("sample.guidance_scale", w, "1.0 for an unconditional model (guidance needs model.num_classes)")
  if w != 1.0 and not null_class:
    _fail("sample.guidance_scale", w, "1.0 unless the model has a null class (train with "
          "model.label_dropout > 0 for classifier-free guidance)")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (a ValueError) naming the first invalid field, its value and what would be accepted.

  The one place a config is checked: every entry point (`Experiment(config)`, which the CLI modes and the
  benchmarks build first) calls it before anything is built or written, and the modules below assume a
  valid config. Sections with their own schema are checked by the module that defines it (data fields by
  `data.pipeline.validate_data_config`, network fields by building the `UNet`), called from here.
  """
  for section in ("data", "model", "diffusion", "optim", "train", "sample", "eval"):
    if section not in config:
      raise errors.ConfigError(f"config.{section} is missing; start from ddpm_jax.config_lib.default_config().")
  _check_known_fields(config, default_config())
  if not _is_int(config.seed):
    _fail("seed", config.seed, "an integer")
  try:
    data_pipeline.validate_data_config(config.data)
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(str(e).replace("data_config.", "config.data.")) from None
  data_dir = config.data.get("data_dir")
  if data_dir and "://" not in os.fspath(data_dir):
    local = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if os.path.exists(local) and not os.path.isdir(local):
      _fail("data.data_dir", data_dir, "a folder (or '' for $TFDS_DATA_DIR / ~/tensorflow_datasets); "
            "this path is a file")

  _check_choice(config, "diffusion.beta_schedule", diffusion_lib.BETA_SCHEDULES)
  _check_int(config, "diffusion.num_timesteps", 2)  # T = 1 has no reverse step to learn: its loss is NaN
  _check_float(config, "diffusion.beta_start", 0.0, 1.0, low_open=True)
  _check_float(config, "diffusion.beta_end", 0.0, 1.0, low_open=True)
  if (config.diffusion.beta_schedule in _ORDERED_SCHEDULES
      and config.diffusion.beta_start > config.diffusion.beta_end):
    _fail("diffusion.beta_start", config.diffusion.beta_start,
          f"at most diffusion.beta_end={config.diffusion.beta_end} (the {config.diffusion.beta_schedule!r} "
          "schedule rises from beta_start to beta_end)")
  betas = diffusion_lib.get_beta_schedule(config.diffusion.beta_schedule,
                                          num_timesteps=config.diffusion.num_timesteps,
                                          beta_start=config.diffusion.beta_start,
                                          beta_end=config.diffusion.beta_end)
  if not (np.all(np.isfinite(betas)) and np.all(betas > 0) and np.all(betas <= 1)):
    _fail("diffusion.beta_schedule", config.diffusion.beta_schedule,
          "a schedule whose β_t all lie in (0, 1] with these beta_start / beta_end / num_timesteps")
  _check_choice(config, "diffusion.mean_type", tuple(diffusion_lib.MEAN_TYPES))
  _check_choice(config, "diffusion.var_type", diffusion_lib.VAR_TYPES)
  _check_choice(config, "diffusion.loss_type", diffusion_lib.LOSS_TYPES)
  _check_choice(config, "diffusion.timestep_sampler", resample.SAMPLERS)
  _check_choice(config, "diffusion.mse_weight", diffusion_lib.MSE_WEIGHTS)
  _check_float(config, "diffusion.min_snr_gamma", 0.0, float("inf"), low_open=True, high_open=True)
  if config.diffusion.mse_weight != "none":
    if diffusion_lib.MEAN_TYPES.get(config.diffusion.mean_type) != "xprev":
      _fail("diffusion.mse_weight", config.diffusion.mse_weight,
            f"'none' with diffusion.mean_type={config.diffusion.mean_type!r} (a μ-space weight needs 'xprev')")
    if config.diffusion.loss_type not in ("mse", "rescaled_mse"):
      _fail("diffusion.mse_weight", config.diffusion.mse_weight,
            f"'none' with diffusion.loss_type={config.diffusion.loss_type!r} (it weighs the 'mse' loss)")
    if config.diffusion.mse_weight == "kl" and config.diffusion.var_type not in ("fixedlarge", "fixedsmall"):
      _fail("diffusion.mse_weight", "kl", f"a fixed diffusion.var_type (got {config.diffusion.var_type!r}) "
            "or another weight")

  _check_float(config, "optim.learning_rate", 0.0, 1.0, low_open=True)
  _check_float(config, "optim.beta1", 0.0, 1.0, high_open=True)
  _check_float(config, "optim.beta2", 0.0, 1.0, high_open=True)
  _check_float(config, "optim.eps", 0.0, 1.0, low_open=True)
  _check_int(config, "optim.warmup_steps", 0)
  _check_choice(config, "optim.lr_schedule", LR_SCHEDULES)
  _check_float(config, "optim.grad_clip", 0.0, float("inf"), high_open=True)
  _check_float(config, "optim.ema_decay", 0.0, 1.0)

  for field, minimum in (("batch_size", 1), ("num_steps", 0), ("steps_per_call", 1), ("log_every", 1),
                         ("checkpoint_every", 1), ("keep_checkpoints", 1), ("archive_every", 0),
                         ("sample_every", 0), ("num_grid_samples", 1), ("eval_every", 0)):
    _check_int(config, f"train.{field}", minimum)
  if config.train.num_steps % config.train.steps_per_call:
    _fail("train.num_steps", config.train.num_steps,
          f"a multiple of train.steps_per_call={config.train.steps_per_call}")
  for field in ("log_every", "checkpoint_every", "sample_every", "eval_every"):
    every = config.train[field]
    if every and every % config.train.steps_per_call:
      _fail(f"train.{field}", every, f"a multiple of train.steps_per_call={config.train.steps_per_call}")

  _check_choice(config, "sample.sampler", ("ancestral", "ddim"))
  _check_int(config, "sample.steps", 0)
  if config.sample.steps > config.diffusion.num_timesteps:
    _fail("sample.steps", config.sample.steps,
          f"0 (all steps) or at most diffusion.num_timesteps={config.diffusion.num_timesteps}")
  _check_float(config, "sample.eta", 0.0, float("inf"), high_open=True)
  _check_choice(config, "sample.skip_type", diffusion_lib.SKIP_TYPES)
  _check_int(config, "sample.progressive_rows", 0)
  _check_int(config, "sample.num_samples", 1)
  _check_labels_and_guidance(config)
  _check_int(config, "sample.batch_size", 1)
  _check_int(config, "eval.batch_size", 1)
  _check_int(config, "eval.num_examples", 0)
  _check_int(config, "eval.timesteps_per_example", 1)
  for field in ("num_samples", "fast_num_samples", "fast_num_examples"):
    _check_int(config, f"eval.{field}", 0)
  for field in ("num_samples", "fast_num_samples"):
    if 0 < config.eval[field] < 2:
      _fail(f"eval.{field}", config.eval[field], "0 (no sample metrics) or at least 2 samples")
  _check_int(config, "eval.fid_reference_num_examples", 0)
  if not isinstance(config.eval.fid_reference_split, str) or not config.eval.fid_reference_split:
    _fail("eval.fid_reference_split", config.eval.fid_reference_split, "a split name such as 'train'")
  weights = config.eval.inception_weights
  if not isinstance(weights, str):
    _fail("eval.inception_weights", weights, "a path string ('' for none)")
  if weights and not os.path.isfile(weights):
    _fail("eval.inception_weights", weights, "an existing file (pt_inception-2015-12-05-6726825d.pth or "
          "its converted .npz; README, 'Metrics'), or '' to skip FID/IS")

  # The network: unet_from_config checks its own fields; out_ch must agree with the variance type.
  out_ch = config.model.get("out_ch")
  if out_ch is not None and not _is_int(out_ch):
    _fail("model.out_ch", out_ch, "None (derived from the data) or an integer")
  _check_choice(config, "model.dtype", ("float32", "bfloat16", "float16"))
  _check_float(config, "model.output_scale", 0.0, float("inf"), low_open=True, high_open=True)
  _check_choice(config, "model.output_residual", ("none", "identity", "learned"))
  num_classes = config.model.get("num_classes")
  if num_classes is not None and config.data.name == "mnist5k" and num_classes != 10:
    _fail("model.num_classes", num_classes, "None or 10 for mnist5k")
  known = data_sources.KNOWN_IMAGE_SHAPES.get(config.data.name)
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  # The channel count of a dataset not in the table is only known once it is prepared; the network's other
  # fields are checked with a stand-in, and Experiment checks out_ch against the real count.
  model_config.out_ch = model_out_channels(config, known[-1]) if known else (out_ch or 1)
  try:
    unet_lib.unet_from_config(model_config)
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(str(e).replace("UNet.", "config.model.")) from None


def model_out_channels(config: ml_collections.ConfigDict, image_channels: int) -> int:
  """C for fixed variances, 2C ([mean | variance]) for learned ones; checks an explicit model.out_ch."""
  learned = config.diffusion.var_type in ("learned", "learned_range")
  expected = image_channels * (2 if learned else 1)
  if config.model.out_ch is not None and config.model.out_ch != expected:
    _fail("model.out_ch", config.model.out_ch,
          f"{expected} for {image_channels}-channel images with diffusion.var_type="
          f"{config.diffusion.var_type!r} (or None to derive it)")
  return expected
