"""The shipped experiment configs, inside the package so that `pip install ddpm-jax` can run them.

Each module has `get_config(arg=None)` (ml_collections' convention; `arg` is the text after the colon, e.g.
`runlocal`). In a source checkout, `configs/` at the top level is a link to this folder, so
`--config configs/mnist_mu.py` and the bare name `--config mnist_mu` load the same file.
"""

import os

from ddpm_jax import errors

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
_HELPERS = ("__init__", "mnist_common")  # modules here that are not experiment configs


def names() -> list[str]:
  """The experiment configs shipped with the package: ['celebahq256', ..., 'mnist_mu', ...]."""
  return sorted(f[:-3] for f in os.listdir(DIRECTORY) if f.endswith(".py") and f[:-3] not in _HELPERS)


def resolve(spec: str) -> str:
  """`--config` text → a config file path (with its ':variant' suffix kept).

  A path to an existing file is returned unchanged; a bare name ('mnist_mu', 'mnist_mu.py', with or without
  ':runlocal') is a shipped config. Anything else is an error naming the shipped configs.
  """
  if not spec or not spec.strip():
    raise errors.ConfigFileError(f"--config={spec!r} is empty: give a config file (configs/mnist_mu.py) or a "
                                 f"shipped config's name ({', '.join(names())}).")
  path, colon, arg = spec.partition(":")
  if os.path.isfile(path):
    return spec
  name = path[:-3] if path.endswith(".py") else path
  if os.sep not in path and "/" not in path and name in names():
    return os.path.join(DIRECTORY, name + ".py") + colon + arg
  raise errors.ConfigFileError(f"--config={spec!r} is neither a config file nor a shipped config name; "
                               f"shipped: {', '.join(names())} (e.g. --config mnist_mu:runlocal).")


def resolve_argv(argv: list[str]) -> list[str]:
  """A command line with its `--config` value (`--config X` or `--config=X`) passed through `resolve`, so a
  bare name (`--config mnist_mu:runlocal`) works from any folder after `pip install`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out
