"""The project's own error types, and what the command line does with each: one line, no traceback.

Every error this package raises on purpose is a `DdpmJaxError`, and says in its message what was wrong, the
value, and what would be accepted. The command line (`ddpm_jax.main`) prints such an error as one line
(`ddpm-jax: error: ...`) and exits with its `exit_status`:

  2  bad input: the config, a flag, the workdir, the dataset, a weights or parameter file; running the same
     command again gives the same error until the input is fixed;
  1  a failure while running: a corrupt checkpoint, a failed checkpoint write (disk full), divergence.

Anything else is a bug or an unforeseen condition and keeps its Python traceback. `--verbose` (or
DDPM_JAX_VERBOSE=1) shows the traceback of the project's errors too.

Each class below also derives from the builtin exception that callers caught before it existed (ValueError,
FileNotFoundError, RuntimeError), so `except ValueError` around a config check keeps working.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

BAD_INPUT = 2
RUNTIME_FAILURE = 1


class DdpmJaxError(Exception):
  """An error this package raises on purpose, with a message meant for people (exit status 1)."""
  exit_status = RUNTIME_FAILURE


class BadInputError(DdpmJaxError):
  """The command's input is wrong (exit status 2): the same command fails the same way until it is fixed."""
  exit_status = BAD_INPUT


class ConfigError(BadInputError, ValueError):
  """A config field (or a flag) is invalid: `config.<field>=<value> is invalid: expected ...`."""


class ConfigFileError(BadInputError, FileNotFoundError):
  """--config names neither a config file nor a shipped config."""


class UsageError(BadInputError, ValueError):
  """Flags that contradict each other or do not apply to the mode."""


class WorkdirError(BadInputError):
  """The workdir cannot be used for this command: not a folder, not writable, in use, another experiment's,
  or holding no checkpoint where one is needed."""


class WorkdirLockedError(WorkdirError):
  """Another process holds the workdir's lock."""


class ExperimentMismatchError(WorkdirError):
  """The workdir's checkpoints belong to an experiment with other model / diffusion / data-shape fields."""


class NoCheckpointError(WorkdirError, FileNotFoundError):
  """The workdir holds no checkpoint (or not the requested step) where one is needed."""


class DataError(BadInputError, ValueError):
  """The dataset cannot give what the config asks for (a split that does not exist, too few examples)."""


# Error types of modules this one must not import (heavy or optional), by qualified name → exit status.
_EXTERNAL = {
    "ddpm_jax.evaluation.inception_weights.InceptionWeightsError": BAD_INPUT,
    "ddpm_jax.evaluation.torch_reader.TorchFileError": BAD_INPUT,
    "ddpm_jax.evaluation.mnist_classifier.ClassifierAssetError": RUNTIME_FAILURE,
    "ddpm_jax.models.convert.CheckpointMismatchError": BAD_INPUT,
}


def exit_status(error: BaseException) -> int | None:
  """The exit status the command line gives `error`, or None for an unexpected error (shown with its
  traceback)."""
  if isinstance(error, DdpmJaxError):
    return error.exit_status
  for cls in type(error).__mro__:
    status = _EXTERNAL.get(f"{cls.__module__}.{cls.__qualname__}")
    if status is not None:
      return status
  return None


# ------------------------------------------------------------------------------------------------------------
# What reaches stderr when a checkpoint write fails (`checkpointing` raises it as one line anyway).
# ------------------------------------------------------------------------------------------------------------


class _HideOrbaxErrors(std_logging.Filter):
  """Drops Orbax's own error log records (each with a traceback) of failures that this module raises as
  one-line errors anyway."""

  def filter(self, record):
    return not (record.levelno >= std_logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


_ORBAX_ERROR_FILTER = _HideOrbaxErrors()
_previous_unraisablehook = None


def _unraisablehook(unraisable):
  """Drops the 'Event loop is closed' errors that TensorStore's pending write futures report (hundreds of
  tracebacks) when a failed save has shut down Orbax's event loop under them; passes on everything else."""
  if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
    return
  (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def show_orbax_error_logs(show: bool) -> None:
  """Whether Orbax's error logs (with tracebacks) and TensorStore's unraisable 'Event loop is closed'
  errors after a failed write reach stderr. The command line hides them unless --verbose: every failure
  they describe is raised here as a `CheckpointError` of one line."""
  global _previous_unraisablehook
  absl_logger = std_logging.getLogger("absl")
  if show:
    absl_logger.removeFilter(_ORBAX_ERROR_FILTER)
    if sys.unraisablehook is _unraisablehook:
      sys.unraisablehook = _previous_unraisablehook or sys.__unraisablehook__
  else:
    absl_logger.addFilter(_ORBAX_ERROR_FILTER)
    if sys.unraisablehook is not _unraisablehook:
      _previous_unraisablehook = sys.unraisablehook
      sys.unraisablehook = _unraisablehook
