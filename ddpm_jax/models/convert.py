"""Import of the released DDPM TensorFlow checkpoints into `UNet` parameters.

The original stores every network variable under the 'model' scope with TF1 names
(`model/down_0/block_0/conv1/W`), plus, for each, an exponential-moving-average shadow
(`<name>/ExponentialMovingAverage`, from tf.train.ExponentialMovingAverage) and Adam slots. The Flax
tree mirrors the names one-to-one; only leaf names differ:

  W → kernel, b → bias (conv, dense, NIN layers);  gamma → scale, beta → bias (group norms).

Kernel layouts agree ([kh, kw, in, out] for convs, [in, out] for dense/NIN), so no transposition is
needed. `params_from_named_arrays` does the mapping and validation from a plain dict and needs no
TensorFlow; `params_from_tf_checkpoint` reads the TF files with TensorFlow, an optional extra
(`pip install 'ddpm-jax[convert]'`) imported only inside `read_tf_checkpoint`.

Command line: any experiment config (a file or a shipped name, with `--config.*` overrides) decides the
network, its output channels (from diffusion.mean_type / var_type) and the image shape (from config.data);
the checkpoint is validated against that network, naming every variable that disagrees, and written as a
parameter directory (`ddpm_jax.params_dir`: params.npz + params.json recording the config, the source and
its global step) that `--mode sample | eval | bpd --params DIR` reads:
  python -m ddpm_jax.models.convert --tf_checkpoint PATH --config configs/cifar10_eps_simple.py --out DIR [--raw]
PATH is a TF checkpoint prefix or directory (needs TensorFlow, the `[convert]` extra), or an `.npz` of the
checkpoint's variables keyed by their original names (dumped once on a machine with TensorFlow).
"""

import os
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models.unet import UNet

SCOPE = 'model'
EMA_SUFFIX = 'ExponentialMovingAverage'
# Optimizer slot variables (tf.train.AdamOptimizer, RMSProp, Momentum) saved next to each variable.
_SLOT_SUFFIXES = frozenset({'Adam', 'Adam_1', 'RMSProp', 'RMSProp_1', 'Momentum'})
# Leaf renames Flax → TF; a group norm's 'bias' is 'beta', every other 'bias' is 'b'.
_LEAF_TO_TF = {'kernel': 'W', 'scale': 'gamma', 'embedding': 'embedding'}
_LEAF_FROM_TF = {'W': 'kernel', 'b': 'bias', 'gamma': 'scale', 'beta': 'bias',
                 'embedding': 'embedding'}


class CheckpointMismatchError(ValueError):
  """The checkpoint's variables do not match the UNet: lists every missing/unexpected/mis-shaped name."""


def tf_names(params: Mapping[str, Any], *, scope: str = SCOPE) -> dict[str, tuple[str, ...]]:
  """Maps each original TF variable name to the path of the matching leaf in a UNet param tree."""
  out = {}

  def visit(node, path):
    is_norm = set(node) == {'scale', 'bias'}
    for key, value in node.items():
      if isinstance(value, Mapping):
        visit(value, path + (key,))
        continue
      if key == 'bias':
        leaf = 'beta' if is_norm else 'b'
      elif key in _LEAF_TO_TF:
        leaf = _LEAF_TO_TF[key]
      else:
        raise ValueError(f'No TF name for parameter {"/".join(path + (key,))}.')
      out['/'.join((scope,) + path + (leaf,))] = path + (key,)

  visit(params, ())
  return out


def _base_name(name: str) -> tuple[str, str]:
  """Splits a checkpoint key into (variable name, kind) with kind in {'raw', 'ema', 'slot'}."""
  head, _, last = name.rpartition('/')
  if last == EMA_SUFFIX:
    return head, 'ema'
  if last in _SLOT_SUFFIXES:
    return head, 'slot'
  return name, 'raw'


def _attention_levels(names: Iterable[str], *, scope: str) -> frozenset[int]:
  prefix = f'{scope}/down_'
  levels = set()
  for name in names:
    if name.startswith(prefix) and '/attn_' in name:
      levels.add(int(name[len(prefix):].split('/', 1)[0]))
  return frozenset(levels)


def _infer_image_size(model: UNet, names: Iterable[str], *, scope: str) -> int:
  """An input size for which `model` puts attention at the levels the checkpoint has it.

  Parameter shapes depend on the input size only through which levels get attention (the original
  decides by the current feature-map height), so any size giving the same levels builds the same tree.
  """
  num_levels = len(model.ch_mult)
  want = _attention_levels(names, scope=scope)
  attn = tuple(model.attn_resolutions)
  candidates = sorted({r * 2 ** i for r in attn for i in range(num_levels)}
                      | {2 ** (num_levels - 1) * (max(attn, default=1) + 1)})
  for size in candidates:
    if size % 2 ** (num_levels - 1):
      continue
    got = frozenset(i for i in range(num_levels) if size // 2 ** i in attn)
    if got == want:
      return size
  raise CheckpointMismatchError(
      f'The checkpoint has attention at down levels {sorted(want)}, which no input size gives with '
      f'attn_resolutions={attn} and ch_mult={tuple(model.ch_mult)}; check the model config or pass '
      'image_size explicitly.')


def param_shapes(model: UNet, *, image_size: int, in_ch: int = 3) -> dict[str, Any]:
  """The UNet's parameter tree as ShapeDtypeStructs for image_size² inputs (no real init)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, in_ch), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = None if model.num_classes is None else jax.ShapeDtypeStruct((1,), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, y)['params']


def params_from_named_arrays(named: Mapping[str, np.ndarray], *, model: UNet, ema: bool,
                             image_size: Optional[int] = None, scope: str = SCOPE) -> dict:
  """Builds `model`'s params from {original TF variable name: array}.

  Args:
    named: every variable of a checkpoint; names outside `scope` (global_step, beta1_power, ...) and
      optimizer slots are ignored.
    model: the UNet the parameters are for.
    ema: read the EMA shadows (`<name>/ExponentialMovingAverage`) instead of the raw variables.
    image_size: the training resolution; decides which levels carry attention. Inferred from the
      checkpoint's attention blocks when None.
    scope: the variable scope the original network was built in ('model').

  Returns:
    A nested dict of float32 NumPy arrays, usable as `model.apply({'params': params}, ...)`.

  Raises:
    CheckpointMismatchError: listing, by name, every expected variable that is missing, every variable
      under `scope` the model does not have, and every shape that differs.
  """
  if image_size is None:
    image_size = _infer_image_size(model, named, scope=scope)
  shapes = param_shapes(model, image_size=image_size, in_ch=_in_channels(named, scope=scope))
  expected = tf_names(shapes, scope=scope)
  leaf_shapes = {name: tuple(_get(shapes, path).shape) for name, path in expected.items()}

  missing, wrong_shape = [], []
  unexpected = sorted({key for key in named if key.startswith(scope + '/')
                       and _base_name(key)[1] != 'slot' and _base_name(key)[0] not in expected})
  params: dict = {}
  for name, path in sorted(expected.items()):
    key = f'{name}/{EMA_SUFFIX}' if ema else name
    if key not in named:
      missing.append(key)
      continue
    value = np.asarray(named[key])
    if value.shape != leaf_shapes[name]:
      wrong_shape.append(f'{key}: checkpoint {value.shape}, model {leaf_shapes[name]}')
      continue
    _set(params, path, value.astype(np.float32))

  if missing or unexpected or wrong_shape:
    lines = [f'Checkpoint does not match the UNet ({"EMA" if ema else "raw"} variables, '
             f'{len(expected)} expected):']
    if missing:
      lines.append(f'  missing ({len(missing)}): ' + ', '.join(missing))
      if ema and all(name in named for name in (m[:-len(EMA_SUFFIX) - 1] for m in missing)):
        lines.append('  (the raw variables are present: was this checkpoint saved without EMA? '
                     'use ema=False / --raw)')
    if unexpected:
      lines.append(f'  unexpected ({len(unexpected)}): ' + ', '.join(unexpected))
    if wrong_shape:
      lines.append(f'  wrong shape ({len(wrong_shape)}): ' + '; '.join(wrong_shape))
    raise CheckpointMismatchError('\n'.join(lines))
  return params


def read_tf_checkpoint(path: str, *, scope: str = SCOPE) -> dict[str, np.ndarray]:
  """Reads the variables under `scope` (optimizer slots skipped) of a TF checkpoint into NumPy.

  Args:
    path: a checkpoint prefix (`.../model.ckpt-790000`) or a directory (its latest checkpoint).
    scope: the variable scope to read.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'Reading TensorFlow checkpoints needs TensorFlow: pip install \'ddpm-jax[convert]\' '
        '(or pip install tensorflow-cpu).') from e
  try:
    reader = tf.train.load_checkpoint(path)
  except (ValueError, tf.errors.OpError) as e:
    raise FileNotFoundError(f'Could not open a TF checkpoint at {path!r}: {e}') from e
  out = {}
  for name in reader.get_variable_to_shape_map():
    if (name.startswith(scope + '/') and _base_name(name)[1] != 'slot') or name == 'global_step':
      out[name] = np.asarray(reader.get_tensor(name))
  if not out:
    raise ValueError(f'The TF checkpoint at {path!r} has no variables under the scope {scope!r}.')
  return out


def params_from_tf_checkpoint(path: str, *, ema: bool = True, model: Optional[UNet] = None,
                              image_size: Optional[int] = None, scope: str = SCOPE) -> dict:
  """UNet params from an original DDPM TF checkpoint (EMA shadows by default).

  With `model`, the variables are validated against it (`params_from_named_arrays`). Without, every
  variable under `scope` is renamed into a Flax tree as found, with no structural check.
  """
  named = read_tf_checkpoint(path, scope=scope)
  if model is not None:
    return params_from_named_arrays(named, model=model, ema=ema, image_size=image_size, scope=scope)
  want = 'ema' if ema else 'raw'
  params: dict = {}
  for key, value in named.items():
    base, kind = _base_name(key)
    if kind != want:
      continue
    parts = base.split('/')[1:]
    if parts[-1] not in _LEAF_FROM_TF:
      raise ValueError(f'Unrecognised variable name {base!r} (last component not one of '
                       f'{sorted(_LEAF_FROM_TF)}).')
    _set(params, tuple(parts[:-1]) + (_LEAF_FROM_TF[parts[-1]],), value.astype(np.float32))
  if not params:
    raise CheckpointMismatchError(f'The TF checkpoint at {path!r} has no {want} variables under '
                                  f'{scope!r}.')
  return params


def _in_channels(named: Mapping[str, Any], *, scope: str) -> int:
  for key in (f'{scope}/conv_in/W', f'{scope}/conv_in/W/{EMA_SUFFIX}'):
    if key in named and np.ndim(named[key]) == 4:
      return int(np.shape(named[key])[2])
  return 3


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def read_named_arrays(path: str, *, scope: str = SCOPE) -> dict[str, np.ndarray]:
  """{original variable name: array} from a TF checkpoint (prefix or directory; needs TensorFlow) or from an
  `.npz` holding the same names (no TensorFlow). Optimizer slots are dropped; 'global_step' is kept."""
  if str(path).endswith('.npz'):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'--tf_checkpoint {path}: no such file.')
    try:
      with np.load(path, allow_pickle=False) as data:
        named = {k: np.asarray(data[k]) for k in data.files
                 if (k.startswith(scope + '/') and _base_name(k)[1] != 'slot') or k == 'global_step'}
    except (OSError, ValueError, EOFError) as e:
      raise ValueError(f'--tf_checkpoint {path} is not a readable .npz ({type(e).__name__}: {e}).') from None
    if not any(k.startswith(scope + '/') for k in named):
      raise CheckpointMismatchError(f'--tf_checkpoint {path} has no variables under the scope {scope!r}; '
                                    "expected the original names, e.g. 'model/conv_in/W'.")
    return named
  return read_tf_checkpoint(path, scope=scope)


def convert_to_params_dir(config, tf_checkpoint: str, out_dir: str, *, ema: bool = True) -> dict:
  """The CLI's work: validate `config`, build its UNet, read and check the checkpoint, write `out_dir`.

  Returns params.json's content. Raises CheckpointMismatchError naming every variable that disagrees with
  the config's network (including the input channels the data implies).
  """
  # The layers above the network: imported here so that the library part needs only the UNet.
  from ddpm_jax import experiment  # pylint: disable=g-import-not-at-top
  from ddpm_jax import params_dir  # pylint: disable=g-import-not-at-top
  from ddpm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  experiment.config_lib.validate(config)
  image_shape = pipeline.model_image_shape(config.data)
  model = experiment.create_model(config, image_shape)
  named = read_named_arrays(tf_checkpoint)
  in_ch = _in_channels(named, scope=SCOPE)
  if in_ch != image_shape[-1]:
    raise CheckpointMismatchError(
        f'{tf_checkpoint}: model/conv_in/W takes {in_ch}-channel images, but config.data.name='
        f'{config.data.name!r} gives {image_shape[-1]} channels; use the config of the checkpoint\'s dataset.')
  params = params_from_named_arrays(named, model=model, ema=ema, image_size=image_shape[0])
  step = int(named['global_step']) if 'global_step' in named else None
  directory = params_dir.write(out_dir, params, config=config, image_shape=image_shape,
                               source=os.path.abspath(tf_checkpoint), ema=ema, step=step)
  return params_dir.read_info(directory)


def main(argv):
  """The CLI: convert --tf_checkpoint with the network of --config into the parameter directory --out."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    info = convert_to_params_dir(f.config, f.tf_checkpoint, f.out, ema=not f.raw)
  except (ValueError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f'convert: error: {e}') from None
  print(f'Wrote {info["params"]} parameters ({info["num_params"]:,} in {info["num_arrays"]} arrays'
        f'{", global step " + str(info["step"]) if info["step"] is not None else ""}) for '
        f'{tuple(info["image_shape"])} images to {os.path.abspath(f.out)}\n'
        f'Use them with: python -m ddpm_jax.main --config {f["config"].config_filename} --params '
        f'{os.path.abspath(f.out)} --workdir OUT --mode sample')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('tf_checkpoint', None, 'TF checkpoint prefix or directory, or an .npz of its '
                      'variables by original name.', required=True)
  config_flags.DEFINE_config_file('config', None, 'Experiment config: a file or a shipped name '
                                  '(cifar10_eps_simple), with --config.* overrides.', lock_config=True)
  flags.mark_flags_as_required(['config'])
  flags.DEFINE_string('out', None, 'The parameter directory to write (must not hold parameters yet).',
                      required=True)
  flags.DEFINE_bool('raw', False, 'Convert the raw variables instead of their EMA shadows.')


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from ddpm_jax import configs  # pylint: disable=g-import-not-at-top
  _define_flags()
  try:
    _argv = configs.resolve_argv(sys.argv)
  except FileNotFoundError as _e:
    raise SystemExit(f'convert: error: {_e}') from None
  app.run(main, argv=_argv)
