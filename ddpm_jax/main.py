r"""ddpm-jax command line: train, sample or evaluate one experiment config in one workdir.

  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu            # train (default)
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode sample
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode eval
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode bpd
  python -m ddpm_jax.main --config configs/mnist_mu.py --workdir runs/mnist_mu --mode sweep --fast
  python -m ddpm_jax.main --config configs/cifar10_mu_vlb_fixed.py:runlocal --workdir /tmp/x  # laptop check
  ddpm-jax --config mnist_mu:runlocal --workdir /tmp/x   # a shipped config by name, from any folder

Any config field can be overridden: --config.train.num_steps=2000 --config.sample.steps=100.
Installed as the `ddpm-jax` command too.

Errors: a bad config, flag, workdir, dataset or weights file, a corrupt checkpoint or a failed checkpoint
write print one line, `ddpm-jax: error: ...`, and exit with status 2 (bad input) or 1 (failure while
running); `--verbose` or DDPM_JAX_VERBOSE=1 adds the traceback (`ddpm_jax.errors`). Anything unexpected
keeps its traceback.
"""

import json
import os
import re
import sys
import traceback

if __name__ == "__main__":  # `python -m ddpm_jax.main`: re-execute onto huge pages before the imports (run())
  from ddpm_jax import hugepages  # pylint: disable=g-import-not-at-top
  hugepages.reexec_with_huge_pages()

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from ddpm_jax import configs
from ddpm_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config: a file (configs/mnist_mu.py) or a shipped "
                                "config's bare name (mnist_mu), then an optional :variant (:runlocal).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and summaries.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "bpd", "sweep"],
                  "train: train (resuming if possible), then sample and evaluate; sample: "
                  "config.sample.num_samples samples (.npz + PNG) and the x̂_0 strip; eval: bits/dim and "
                  "sample metrics (MNIST-FD or FID/IS); bpd: the full bound, term by term, with rate/"
                  "distortion (JSON + PNG); sweep: eval over a range of checkpoints (--steps, --fast).")
flags.DEFINE_integer("step", None, "Checkpoint step: for --mode sample/eval/bpd the one to read (default: the "
                     "latest); for --mode train the one to resume from (default: the latest that verifies); "
                     "later checkpoints then need --discard_later.")
flags.DEFINE_bool("discard_later", False, "--mode train --step N: move the checkpoints after step N out of the "
                  "way (to <workdir>/checkpoints_set_aside/, nothing is deleted) and train on from N.")
flags.DEFINE_bool("allow_config_change", False, "--mode train: resume a workdir whose checkpoints were written "
                  "with other model / diffusion / data-shape fields (fine-tuning); without it such a run is "
                  "refused with the list of differing fields.")
flags.DEFINE_string("params", None, "--mode sample/eval/bpd: a parameter directory (e.g. a converted TF "
                    "checkpoint, `python -m ddpm_jax.models.convert`) instead of the workdir's checkpoints; "
                    "outputs still go to --workdir.")
flags.DEFINE_string("steps", "all", "--mode sweep: 'all', 'A:B' (kept steps in [A, B]) or 'A,B,C'.")
flags.DEFINE_bool("fast", False, "--mode sweep: eval.fast_num_samples samples and eval.fast_num_examples "
                  "test images per checkpoint.")
flags.DEFINE_bool("verbose", False, "Show the Python traceback of errors (also DDPM_JAX_VERBOSE=1), and "
                  "Orbax's own error logs.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs outside TPU VMs / SLURM: host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])

VERBOSE_ENV = "DDPM_JAX_VERBOSE"
_PROG = "ddpm-jax"
_FLAGS_HINT = "see `python -m ddpm_jax.main --helpshort` for the flags"
_CONFIG_MODULE = "config_config"  # the module name ml_collections loads --config's file under


def initialize_distributed():
  """Joins a multi-process JAX run when asked: $DDPM_JAX_DISTRIBUTED=1 (TPU pods and SLURM detect the rest
  themselves) or an explicit --coordinator_address/--num_processes/--process_id."""
  explicit = FLAGS.coordinator_address is not None
  if not explicit and os.environ.get("DDPM_JAX_DISTRIBUTED", "0") != "1":
    return
  import jax  # pylint: disable=g-import-not-at-top
  if explicit and (FLAGS.num_processes is None or FLAGS.process_id is None):
    raise errors.UsageError("--coordinator_address needs --num_processes and --process_id too.")
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


# ------------------------------------------------------------------------------------------------------------
# Turning what went wrong into one line.
# ------------------------------------------------------------------------------------------------------------


def _env_verbose() -> bool:
  return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _verbose_requested(argv) -> bool:
  """--verbose on the command line (read before the flags are parsed, for errors in parsing them) or
  $DDPM_JAX_VERBOSE."""
  if _env_verbose():
    return True
  for arg in argv[1:]:
    if arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1"):
      return True
  return False


def _last_line(text: str) -> str:
  """The exception line at the end of a formatted traceback ('ValueError: ...' without module paths)."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if not lines:
    return ""
  line = lines[-1]
  head, sep, rest = line.partition(": ")
  if sep and re.fullmatch(r"[\w.]+", head):
    name = head.rsplit(".", 1)[-1]
    # The project's own errors speak for themselves; a builtin one keeps its type ('NameError: ...').
    line = rest if isinstance(getattr(errors, name, None), type) else f"{name}: {rest}"
  return line


def _config_arg(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _override_error(argv):
  """The ConfigError for the first `--config.a.b=...` override that names no field, or None."""
  config = FLAGS["config"].value
  if not isinstance(config, ml_collections.ConfigDict) and _config_arg(argv):
    try:  # the failure happened while the --config flag was parsed: load the file again, alone
      sys.modules.pop(_CONFIG_MODULE, None)
      from ml_collections.config_flags import config_flags as config_flags_impl  # pylint: disable=g-import-not-at-top
      config = config_flags_impl.ConfigFileFlagParser("config").parse(_config_arg(argv))
    except Exception:  # pylint: disable=broad-except
      return None
  if not isinstance(config, ml_collections.ConfigDict):
    return None
  from ddpm_jax import config_lib  # pylint: disable=g-import-not-at-top
  for arg in argv[1:]:
    match = re.match(r"--config\.([\w.]+)", arg)
    if not match:
      continue
    node, parts = config, match.group(1).split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
        known = node.keys() if isinstance(node, (ml_collections.ConfigDict, dict)) else []
        return config_lib.unknown_field_error(".".join(parts[:i + 1]), known)
      node = node[part]
  return None


def _parse_flags(argv):
  """absl's flag parsing, with every failure turned into one line and exit status 2."""
  verbose = _verbose_requested(argv)
  # A second run in one process (the tests) starts from the defaults, not the last run's values, and
  # without the last run's `--config.a.b` override flags (ml_collections defines one per override).
  FLAGS.unparse_flags()
  for name in [n for n in FLAGS if n.startswith("config.")]:
    delattr(FLAGS, name)
  saved_argv, sys.argv = sys.argv, list(argv)  # ml_collections reads the overrides from sys.argv
  sys.modules.pop(_CONFIG_MODULE, None)  # else a second load in one process reuses the first file's module
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    config_arg = _config_arg(argv)
    if "Traceback (most recent call last)" in message:  # the config file raised while loading
      error = errors.ConfigError(f"--config={config_arg}: {_last_line(message)}")
    elif config_arg and "--config=None" in message:
      error = errors.ConfigError(f"--config={config_arg}: get_config() returned None (a missing `return "
                                 "config`?)")
    else:
      error = errors.UsageError(f"{message} ({_FLAGS_HINT})")
    _exit(error, verbose, traceback_text=traceback.format_exc())
  except SyntaxError as e:
    _exit(errors.ConfigError(f"--config: {e.filename} line {e.lineno} is not valid Python: {e.msg}"), verbose,
          traceback_text=traceback.format_exc())
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      _exit(errors.ConfigError(f"--config: the config file has no get_config() function ({_last_line(e)})"),
            verbose, traceback_text=traceback.format_exc())
    error = _override_error(argv)
    if error is None:
      raise
    _exit(error, verbose, traceback_text=traceback.format_exc())
  finally:
    sys.argv = saved_argv


def _exit(error: BaseException, verbose: bool, *, traceback_text: str | None = None):
  """Prints `error` as one line (after its traceback if `verbose`) and exits with its status."""
  if verbose:
    print(traceback_text or "".join(traceback.format_exception(error)), file=sys.stderr, end="")
  message = str(error).strip() or type(error).__name__
  print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(errors.exit_status(error) or errors.RUNTIME_FAILURE)


def _load_config():
  """FLAGS.config, or a ConfigError when the file could not be loaded (ml_collections defers that error)."""
  config = FLAGS.config
  if config is None:
    raise errors.ConfigError("--config: get_config() returned None (a missing `return config`?)")
  if not isinstance(config, ml_collections.ConfigDict):
    try:
      config.lock()  # a config that failed to load raises its error on any use
    except (IOError, OSError) as e:
      raise errors.ConfigError(f"--config: the config file cannot be loaded: {_last_line(e)}") from e
    except AttributeError:
      pass
    raise errors.ConfigError(f"--config: get_config() returned a {type(config).__name__}, expected an "
                             "ml_collections.ConfigDict")
  return config


def _check_flag_combinations():
  mode = FLAGS.mode
  if FLAGS.params and mode not in ("sample", "eval", "bpd"):
    raise errors.UsageError(f"--params applies to --mode sample, eval and bpd, not --mode {mode}.")
  if FLAGS.step is not None:
    if FLAGS.step < 0:
      raise errors.UsageError(f"--step={FLAGS.step} is invalid: expected a checkpoint step >= 0.")
    if mode == "sweep":
      raise errors.UsageError("--mode sweep takes --steps (all, A:B or A,B,C), not --step.")
  for name in ("discard_later", "allow_config_change"):
    if FLAGS[name].value and mode != "train":
      raise errors.UsageError(f"--{name} applies to --mode train, not --mode {mode}.")
  if FLAGS.discard_later and FLAGS.step is None:
    raise errors.UsageError("--discard_later needs --step N (the checkpoint to train on from).")
  for name in ("steps", "fast"):
    if FLAGS[name].present and mode != "sweep":
      raise errors.UsageError(f"--{name} applies to --mode sweep, not --mode {mode}.")


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]} (flags are written --name=value; "
                            f"{_FLAGS_HINT})")
  verbose = FLAGS.verbose or _env_verbose()
  # Orbax and grain log every save at INFO; people get one-line summaries and a progress bar instead
  # (--verbosity=0 brings the details back).
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  _check_flag_combinations()
  config = _load_config()
  from ddpm_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = workdir_lib.resolve(FLAGS.workdir)
  # Imported here so that --help and bad flags stay fast, and JAX starts after flags are parsed.
  from ddpm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from ddpm_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ddpm_jax import run_modes  # pylint: disable=g-import-not-at-top
  errors.show_orbax_error_logs(verbose)
  config_lib.validate(config)  # before JAX's distributed runtime, the dataset or the workdir is touched
  initialize_distributed()
  if FLAGS.mode == "train":
    from ddpm_jax import train  # pylint: disable=g-import-not-at-top
    result = train.train_and_evaluate(config, workdir, step=FLAGS.step, discard_later=FLAGS.discard_later,
                                      allow_config_change=FLAGS.allow_config_change)
  else:
    workdir_lib.check_usable(workdir, create=False)
    if FLAGS.mode == "sample":
      result = run_modes.sample(config, workdir, step=FLAGS.step, params_dir=FLAGS.params)
    elif FLAGS.mode == "bpd":
      result = run_modes.bpd(config, workdir, step=FLAGS.step, params_dir=FLAGS.params)
    elif FLAGS.mode == "sweep":
      result = run_modes.sweep(config, workdir, steps=FLAGS.steps, fast=FLAGS.fast)
    else:
      result = run_modes.evaluate(config, workdir, step=FLAGS.step, params_dir=FLAGS.params)
  print(json.dumps(result, indent=2, default=str))


def _main_reporting_errors(argv):
  """`main`, with the project's own errors printed as one line (exit status 2 or 1) instead of a traceback."""
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    if errors.exit_status(e) is None:
      raise  # unexpected: keep the traceback
    _exit(e, FLAGS.verbose or _env_verbose(), traceback_text=traceback.format_exc())


def run(argv=None):
  """Console-script and `python -m ddpm_jax.main` entry point (`ddpm-jax`).

  Called with no argv (a real process), it first re-executes the process once with the host heap on
  transparent huge pages where that helps (`ddpm_jax.hugepages`; DDPM_JAX_HUGE_PAGES=0 turns it off).
  """
  if argv is None:
    from ddpm_jax import hugepages  # pylint: disable=g-import-not-at-top
    hugepages.reexec_with_huge_pages()
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = configs.resolve_argv(argv)
  except errors.DdpmJaxError as e:
    _exit(e, _verbose_requested(argv))
  app.run(_main_reporting_errors, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
