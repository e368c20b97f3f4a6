"""A parameter directory: network parameters outside a training workdir, with the config they belong to.

Written by the TF-checkpoint import (`python -m ddpm_jax.models.convert ... --out DIR`) and read by
`--mode sample | eval | bpd --params DIR`:

  DIR/params.npz   every parameter as a float32 array, keyed by its path in the tree ('down_0/block_0/conv1/kernel');
                   NumPy's format without pickles;
  DIR/params.json  what the arrays are: the full config they were converted with, the image shape, where they
                   came from (source file, its global step, EMA or raw), the parameter count, the version.

params.json is written last, after params.npz is complete, and a reader requires it: an interrupted write
never looks like a finished directory.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any, Mapping

from flax import traverse_util
import numpy as np

import ddpm_jax
from ddpm_jax import errors
from ddpm_jax import fileio

PARAMS_FILE = "params.npz"
INFO_FILE = "params.json"
FORMAT = 1

# The config fields a parameter set is tied to: the network itself, what its output means, and the chain it
# was trained on. `sample.*`, `eval.*` and the data location may differ freely.
COMPATIBILITY_FIELDS = ("data.name", "data.image_size", "diffusion.mean_type", "diffusion.var_type",
                        "diffusion.beta_schedule", "diffusion.num_timesteps", "diffusion.beta_start",
                        "diffusion.beta_end")


class ParamsDirError(errors.BadInputError, ValueError):
  """A parameter directory is missing, incomplete, corrupt, or belongs to another config."""


def write(directory: str, params: Mapping[str, Any], *, config, image_shape, source: str, ema: bool,
          step: int | None) -> str:
  """Writes `params` and their description into `directory` (created; an existing complete directory is
  an error, so nothing is overwritten by accident). Returns the directory."""
  directory = fileio.resolve(directory)
  if fileio.exists(fileio.join(directory, INFO_FILE)):
    raise ParamsDirError(f"{directory} already holds converted parameters ({INFO_FILE}); choose a new --out "
                         "or delete it first.")
  fileio.makedirs(directory)
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  fileio.write_bytes(fileio.join(directory, PARAMS_FILE), buffer.getvalue())
  info = {
      "format": FORMAT,
      "config": json.loads(config.to_json_best_effort()),
      "image_shape": [int(s) for s in image_shape],
      "source": source,
      "params": "ema" if ema else "raw",
      "step": None if step is None else int(step),
      "num_params": int(sum(a.size for a in flat.values())),
      "num_arrays": len(flat),
      "ddpm_jax_version": ddpm_jax.__version__,
      "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  fileio.write_text(fileio.join(directory, INFO_FILE), json.dumps(info, indent=2) + "\n")
  return directory


def read_info(directory: str) -> dict:
  """The directory's params.json; a one-line error when the directory is not a complete parameter set."""
  directory = fileio.resolve(directory)
  info_path = fileio.join(directory, INFO_FILE)
  if not fileio.exists(info_path):
    what = ("has no " + INFO_FILE + " (an interrupted conversion, or not a parameter directory)"
            if fileio.exists(directory) else "does not exist")
    raise ParamsDirError(f"--params {directory} {what}: expected a directory written by `python -m "
                         f"ddpm_jax.models.convert ... --out DIR` ({PARAMS_FILE} + {INFO_FILE}).")
  try:
    info = json.loads(fileio.read_text(info_path))
  except ValueError as e:
    raise ParamsDirError(f"{info_path} is not valid JSON ({e}); re-run the conversion.") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT or "config" not in info:
    raise ParamsDirError(f"{info_path} is not a format-{FORMAT} parameter description; re-run the conversion.")
  return info


def check_compatible(info: dict, config, *, directory: str) -> None:
  """Raises ParamsDirError naming the first field where the recorded config and `config` disagree."""
  recorded = info["config"]
  fields = list(COMPATIBILITY_FIELDS) + [f"model.{k}" for k in sorted(recorded.get("model", {}))
                                         if k not in ("dropout", "remat", "dtype", "name")]
  for field in fields:
    section, name = field.split(".")
    if name not in recorded.get(section, {}) or name not in config[section]:
      continue
    want, got = recorded[section][name], config[section][name]
    if isinstance(want, list):
      want = tuple(want)
    if isinstance(got, (list, tuple)):
      got = tuple(got)
    if want != got:
      raise ParamsDirError(f"--params {directory} holds parameters converted with config.{field}={want!r}, "
                           f"but this command's config has config.{field}={got!r}; use the config they were "
                           f"converted with (recorded in {INFO_FILE}) or override the field.")


def read_params(directory: str, *, expected: Mapping[str, Any]) -> dict:
  """The parameter tree, checked leaf by leaf against `expected` (a tree of objects with .shape)."""
  directory = fileio.resolve(directory)
  path = fileio.join(directory, PARAMS_FILE)
  try:
    with np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError) as e:
    raise ParamsDirError(f"{path} cannot be read ({type(e).__name__}: {e}); re-run the conversion.") from None
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want))
  wrong = [f"{k}: file {flat[k].shape}, model {want[k]}" for k in sorted(set(want) & set(flat))
           if tuple(flat[k].shape) != want[k]]
  if missing or extra or wrong:
    parts = [f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}" if missing else "",
             f"unexpected {extra[:5]}{' …' if len(extra) > 5 else ''}" if extra else "",
             f"wrong shape {wrong[:3]}{' …' if len(wrong) > 3 else ''}" if wrong else ""]
    raise ParamsDirError(f"{path} does not fit the model of this config: "
                         + "; ".join(p for p in parts if p) + ".")
  return traverse_util.unflatten_dict(flat, sep="/")
