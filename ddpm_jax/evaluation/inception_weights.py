"""FID Inception weights: local files → `inception_net.FIDInceptionV3` params, read without PyTorch.

Weights come only from a local file (nothing is downloaded): pytorch-fid's port of the TF graph
2015-12-05, `pt_inception-2015-12-05-6726825d.pth` (see `FID_WEIGHTS_URL`) — read without PyTorch by a
restricted unpickler that knows only the handful of globals a state dict needs — or a `.npz` with the same
state-dict keys, which

    python -m ddpm_jax.evaluation.inception_weights convert in.pth out.npz

writes. `params_from_state_dict` checks keys and shapes against the network and folds its BatchNorm
(eps `inception_net.BN_EPS`) into the convolutions; `weights_provenance` names a file by its sha256 for the
statistics cache of `inception`.
"""

import argparse
import collections
import functools
import hashlib
import io
import os
import pickle
import struct
import sys
import zipfile

import chex
import numpy as np
from flax import traverse_util

from ddpm_jax.evaluation import inception_net

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   f"{FID_WEIGHTS_FILE}")
# First hex digits of the sha256 of FID_WEIGHTS_FILE (the suffix in its name, as torch.hub names files);
# `convert` notes a mismatch but does not refuse the file (keys and shapes are what is checked).
FID_WEIGHTS_SHA256_PREFIX = "6726825d"


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
  bias = β − μ · s (computed in float64, stored float32). fc: kernel = weightᵀ, bias = bias.

  Raises:
    InceptionWeightsError: naming `source`, if keys are missing or unexpected, or a shape is wrong, or a
      value is not finite.
  """
  expected = state_dict_shapes()
  keys = {k for k in state_dict if not k.endswith(".bn.num_batches_tracked")}
  missing = sorted(set(expected) - keys)
  unexpected = sorted(keys - set(expected))
  if missing or unexpected:
    hint = (" (AuxLogits.* keys: these look like torchvision's Inception weights, which are not the FID "
            "weights)" if any(k.startswith("AuxLogits.") for k in unexpected) else "")
    raise InceptionWeightsError(
        f"{source} does not match the FID Inception-v3 state dict: {len(missing)} missing keys "
        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
        f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}{hint}; expected pytorch-fid's "
        f"{FID_WEIGHTS_FILE} ({FID_WEIGHTS_URL})")
  arrays = {}
  for key, shape in expected.items():
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
  flat["fc/kernel"] = arrays["fc.weight"].T.astype(np.float32)
  flat["fc/bias"] = arrays["fc.bias"].astype(np.float32)
  for name, shape in inception_net.param_shapes().items():
    chex.assert_shape(flat[name], shape)
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}


# ----------------------------------------------------------------------------------------------------------
# Reading PyTorch `.pth` files without PyTorch.
#
# torch.save writes one of two layouts, both around a pickle whose tensors are rebuilt by
# `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])`
# and whose storages are persistent ids ('storage', torch.<T>Storage, key, location, numel[, view]):
# - zip (torch ≥ 1.6): `<prefix>/data.pkl` + raw little-endian storages `<prefix>/data/<key>`
#   (+ `<prefix>/byteorder`, "little"/"big", in newer versions);
# - legacy (earlier; older released weights such as torchvision's 2017-2019 files): a stream of pickles —
#   magic number, protocol version 1001, sys_info, the object, the sorted list of storage keys — followed by
#   each storage as int64 numel + raw bytes.
# The unpickler below resolves only the globals a state dict needs and refuses everything else, so a
# hostile file cannot run code.

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
    "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "b1",
}


class _StorageType:
  """Stands in for a `torch.<T>Storage` class in a persistent id; not callable."""

  def __init__(self, name):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  """One storage of the file: dtype, element count, and (once read) its data as a 1-D array."""

  def __init__(self, key, dtype, numel):
    self.key, self.dtype, self.numel, self.data = key, dtype, numel, None


class _PendingTensor:
  """A tensor whose storage may not be read yet (legacy files store the data after the pickle)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """Replacement for torch._utils._rebuild_tensor(_v2): extra args (requires_grad, hooks) are ignored."""
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
  return _PendingTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                        tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for state dicts: resolves only OrderedDict, the tensor-rebuild functions and Storage types."""

  def __init__(self, file, *, source, storages=None):
    super().__init__(file)
    self._source = source
    self._storages = storages

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name} from {self._source}: a weights file may only reference "
        f"collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and torch.<T>Storage")

  def persistent_load(self, pid):
    if self._storages is None:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in {self._source}")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in {self._source}")
    _, storage_type, key, _, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"persistent id {pid!r} in {self._source} names no Storage type")
    if len(pid) == 6 and pid[5] is not None:
      raise pickle.UnpicklingError(f"storage views (view metadata {pid[5]!r}) in {self._source} are not "
                                   f"supported")
    key = str(key)
    ref = self._storages.get(key)
    if ref is None:
      ref = self._storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
    elif ref.dtype != storage_type.dtype:
      raise pickle.UnpicklingError(f"storage {key} of {self._source} is used with two dtypes")
    return ref


def _materialize(obj, source):
  """Replaces every _PendingTensor in nested dicts/lists/tuples by a NumPy array (a copy)."""
  if isinstance(obj, _PendingTensor):
    ref = obj.storage
    if ref.data is None:
      raise InceptionWeightsError(f"{source}: storage {ref.key} has no data")
    dtype = ref.data.dtype
    if any(n < 0 for n in obj.size) or any(s < 0 for s in obj.stride) or obj.offset < 0:
      raise InceptionWeightsError(f"{source}: invalid tensor layout size={obj.size} stride={obj.stride}")
    if len(obj.size) != len(obj.stride):
      raise InceptionWeightsError(f"{source}: size {obj.size} and stride {obj.stride} differ in rank")
    if 0 in obj.size:
      return np.zeros(obj.size, dtype.newbyteorder("="))
    last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
    if last >= ref.data.shape[0]:
      raise InceptionWeightsError(f"{source}: tensor (offset {obj.offset}, size {obj.size}, stride "
                                  f"{obj.stride}) overruns storage {ref.key} of {ref.data.shape[0]} "
                                  f"elements")
    view = np.lib.stride_tricks.as_strided(
        ref.data[obj.offset:], shape=obj.size, strides=[s * dtype.itemsize for s in obj.stride],
        writeable=False)
    return np.array(view, dtype=dtype.newbyteorder("="))
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, source)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, source) for v in obj)
  return obj


def _storage_array(ref, raw, byteorder, source):
  need = ref.numel * ref.dtype.itemsize
  if len(raw) < need:
    raise InceptionWeightsError(f"{source}: storage {ref.key} holds {len(raw)} bytes, expected {need}")
  return np.frombuffer(raw, dtype=ref.dtype.newbyteorder(byteorder), count=ref.numel)


def _read_torch_zip(path):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise InceptionWeightsError(f"{path}: a PyTorch zip checkpoint holds one <prefix>/data.pkl, found "
                                  f"{pickles or 'none'}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "<"
    if f"{prefix}byteorder" in names:
      order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise InceptionWeightsError(f"{path}: unknown byteorder record {order!r}")
      byteorder = "<" if order == "little" else ">"
    storages = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), source=path, storages=storages).load()
    for key, ref in storages.items():
      member = f"{prefix}data/{key}"
      if member not in names:
        raise InceptionWeightsError(f"{path}: storage record {member} is missing")
      ref.data = _storage_array(ref, zf.read(member), byteorder, path)
  return obj


def _read_torch_legacy(path):
  with open(path, "rb") as f:
    head = f.read(2)
    f.seek(0)
    if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
      raise InceptionWeightsError(f"{path} is neither a PyTorch checkpoint (zip or legacy) nor a .npz: it "
                                  f"starts with {head!r}, not a pickle protocol header")

    def plain():  # a pickle that may reference no globals and no storages
      return _RestrictedUnpickler(f, source=path).load()

    try:
      magic = plain()
    except Exception as e:  # not a pickle at all
      raise InceptionWeightsError(f"{path} is neither a PyTorch checkpoint (zip or legacy) nor a .npz: "
                                  f"{e!r}") from e
    if magic != _LEGACY_MAGIC:
      raise InceptionWeightsError(f"{path}: not a PyTorch legacy checkpoint (first pickle is {magic!r})")
    protocol = plain()
    if protocol != _LEGACY_PROTOCOL:
      raise InceptionWeightsError(f"{path}: unsupported legacy protocol version {protocol!r}")
    plain()  # sys_info: informative only, as PyTorch writes legacy sizes and data little-endian
    byteorder = "<"
    storages = {}
    obj = _RestrictedUnpickler(f, source=path, storages=storages).load()
    keys = plain()
    if not isinstance(keys, list):
      raise InceptionWeightsError(f"{path}: malformed storage key list {keys!r}")
    for key in keys:
      ref = storages.get(str(key))
      if ref is None:
        raise InceptionWeightsError(f"{path}: storage {key!r} is not referenced by the pickle")
      header = f.read(8)
      if len(header) != 8:
        raise InceptionWeightsError(f"{path}: truncated before storage {key!r}")
      (numel,) = struct.unpack(byteorder + "q", header)
      if numel != ref.numel:
        raise InceptionWeightsError(f"{path}: storage {key!r} has {numel} elements, the pickle says "
                                    f"{ref.numel}")
      ref.data = _storage_array(ref, f.read(numel * ref.dtype.itemsize), byteorder, path)
  return obj


def read_torch_state_dict(path):
  """{key: NumPy array} of a PyTorch state dict saved by `torch.save`, read without PyTorch.

  Handles both the zip layout (PyTorch ≥ 1.6) and the older legacy stream layout. The pickle may
  reference only collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and the torch.<T>Storage
  types (float16/32/64, int8/16/32/64, uint8, bool); any other global is refused with an
  `InceptionWeightsError`, so loading an untrusted file cannot execute code.
  """
  try:
    obj = _read_torch_zip(path) if zipfile.is_zipfile(path) else _read_torch_legacy(path)
  except pickle.UnpicklingError as e:
    raise InceptionWeightsError(f"{path}: {e}") from e
  except InceptionWeightsError:
    raise
  except Exception as e:  # truncated or corrupt file: EOFError, struct.error, zipfile.BadZipFile, ...
    raise InceptionWeightsError(f"{path} is not a readable PyTorch checkpoint: {e!r}") from e
  obj = _materialize(obj, path)
  if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                          for k, v in obj.items()):
    raise InceptionWeightsError(f"{path} does not hold a flat state dict {{name: tensor}}")
  return dict(obj)


def _is_npz(path):
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
  return bool(names) and all(n.endswith(".npy") for n in names)


def read_state_dict(path):
  """{key: NumPy array} from a `.pth` (zip or legacy, see `read_torch_state_dict`) or a `.npz`.

  Raises:
    InceptionWeightsError: if the file is missing (the message says where to get it) or unreadable.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InceptionWeightsError(
        f"Inception weights not found at {path!r}. This project downloads nothing at run time: fetch "
        f"pytorch-fid's FID Inception weights {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL} and pass its path "
        f"(or a .npz made from it by `python -m ddpm_jax.evaluation.inception_weights convert "
        f"{FID_WEIGHTS_FILE} fid_inception.npz`)")
  if _is_npz(path):
    try:
      with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
    except Exception as e:  # corrupt member, object arrays, ...
      raise InceptionWeightsError(f"{path} is not a readable .npz of weights: {e!r}") from e
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
  """Loads FID Inception weights from a local `.pth` or `.npz` and folds them into `FIDInceptionV3` params.

  Args:
    path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (from `FID_WEIGHTS_URL`), or a `.npz` of the
      same state-dict keys (see `convert`). Nothing is downloaded.

  Returns:
    Variables {'params': ...} for `inception_net.FIDInceptionV3().apply`, float32 NumPy leaves.

  Raises:
    InceptionWeightsError: if the file is missing, unreadable, references disallowed pickle globals, or its
      keys/shapes do not match the FID Inception state dict.
  """
  return params_from_state_dict(read_state_dict(path), source=os.fspath(path))


def convert(in_path, out_path):
  """Re-saves a weights file (`.pth` or `.npz`) as a `.npz` of the same state-dict keys, after checking it.

  Keys and layout are kept as in PyTorch (OIHW, BatchNorm unfolded), so the `.npz` is a lossless,
  pickle-free copy that `load_inception_params` reads. Returns the sha256 of the input file.
  """
  state_dict = read_state_dict(in_path)
  params_from_state_dict(state_dict, source=os.fspath(in_path))  # validates keys and shapes
  tmp = f"{out_path}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **state_dict)
  os.replace(tmp, out_path)
  return file_sha256(in_path)


# ----------------------------------------------------------------------------------------------------------
# Command line.


def main(argv=None):
  """`python -m ddpm_jax.evaluation.inception_weights convert <in.pth> <out.npz>`."""
  parser = argparse.ArgumentParser(prog="python -m ddpm_jax.evaluation.inception_weights",
                                   description="FID Inception weights tools (no PyTorch needed).")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="check a .pth (or .npz) and re-save it as a pickle-free .npz")
  conv.add_argument("input", help=f"e.g. {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
  conv.add_argument("output", help="the .npz to write")
  args = parser.parse_args(argv)
  try:
    digest = convert(args.input, args.output)
  except InceptionWeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  note = ("" if digest.startswith(FID_WEIGHTS_SHA256_PREFIX) else
          f" (note: pytorch-fid's file has a sha256 starting {FID_WEIGHTS_SHA256_PREFIX})")
  print(f"wrote {args.output} from {args.input} (sha256 {digest}){note}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
