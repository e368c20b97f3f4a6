"""PyTorch weight files read without PyTorch and without running any code from them.

Three layouts, all around a pickle whose tensors are rebuilt by
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])`
and whose storages are persistent ids ('storage', torch.<T>Storage, key, location, numel[, view]):

- `torch.save` zip (torch ≥ 1.6): `<prefix>/data.pkl` + raw little-endian storages `<prefix>/data/<key>`
  (+ `<prefix>/byteorder`, "little"/"big", in newer versions);
- `torch.save` legacy (earlier; older released weights such as torchvision's 2017-2019 files): a stream of
  pickles — magic number, protocol version 1001, sys_info, the object, the sorted list of storage keys —
  followed by each storage as int64 numel + raw bytes;
- TorchScript (`torch.jit.save`): the zip layout plus `<prefix>/code/` (the modules' TorchScript source)
  and `<prefix>/constants.pkl`; `data.pkl` pickles the module tree as objects of `__torch__.*` classes
  (NEWOBJ + BUILD with a dict of attributes: submodules, tensors, ints, int lists from
  `torch.jit._pickle.build_intlist`).

The unpickler resolves only the globals these need and refuses everything else, so a hostile file cannot
run code: `__torch__.*` classes (TorchScript archives only) become inert `ScriptObject`s holding their
attribute dict, and no TorchScript code is read or executed. `read_state_dict` returns {name: NumPy array};
`read_torchscript` flattens a module tree into (tensors, attributes, types) keyed by dotted attribute paths.
Errors are `TorchFileError`s naming the file.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
    "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "b1",
}
_ZIP_MAGIC = b"PK\x03\x04"


class TorchFileError(RuntimeError):
  """The file is missing, truncated, not in a PyTorch layout, or references a disallowed pickle global."""


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


class ScriptObject:
  """An object of a TorchScript class (`__torch__.<module>.<Class>`): its qualified name and attributes.

  Created by the unpickler's NEWOBJ (no arguments allowed) and filled by BUILD with the pickled attribute
  dict; it has no behaviour, so nothing of the archive's code runs.
  """
  qualified_name = "__torch__"

  def __new__(cls, *args):
    if args:
      raise pickle.UnpicklingError(f"{cls.qualified_name} constructed with arguments {args!r}")
    obj = super().__new__(cls)
    obj.attributes = None
    return obj

  def __init__(self, *args, **kwargs):  # only reachable through REDUCE, which a TorchScript pickle never uses
    raise pickle.UnpicklingError(f"{self.qualified_name} may only be created by NEWOBJ")

  def __setstate__(self, state):
    if self.attributes is not None or not isinstance(state, dict) or not all(
        isinstance(k, str) for k in state):
      raise pickle.UnpicklingError(f"{self.qualified_name}: unexpected object state {type(state).__name__}")
    self.attributes = dict(state)


def _build_list(kind):
  def build(values):
    if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
      raise pickle.UnpicklingError(f"build list of {kind.__name__} from {values!r}")
    return list(values)
  return build


_JIT_LIST_BUILDERS = {"build_intlist": _build_list(int), "build_doublelist": _build_list(float),
                      "build_boollist": _build_list(bool)}


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """Replacement for torch._utils._rebuild_tensor(_v2): extra args (requires_grad, hooks) are ignored."""
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
  return _PendingTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                        tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only OrderedDict, the tensor-rebuild functions, Storage types and (TorchScript) `__torch__`
  classes and `torch.jit._pickle.build_*list`."""

  def __init__(self, file, *, source, storages=None, torchscript=False):
    super().__init__(file)
    self._source = source
    self._storages = storages
    self._torchscript = torchscript
    self._classes = {}

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if self._torchscript and module == "torch.jit._pickle" and name in _JIT_LIST_BUILDERS:
      return _JIT_LIST_BUILDERS[name]
    if (self._torchscript and (module == "__torch__" or module.startswith("__torch__.")) and
        all(part.isidentifier() for part in f"{module}.{name}".split("."))):
      qualified = f"{module}.{name}"
      if qualified not in self._classes:
        self._classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
      return self._classes[qualified]
    allowed = ("collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and torch.<T>Storage" +
               (", __torch__.* and torch.jit._pickle.build_*list" if self._torchscript else ""))
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name} from {self._source}: a weights file may only reference "
        f"{allowed}")

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


def _tensor_array(obj, source):
  """A NumPy copy of a _PendingTensor whose storage has been read."""
  ref = obj.storage
  if ref.data is None:
    raise TorchFileError(f"{source}: storage {ref.key} has no data")
  dtype = ref.data.dtype
  if any(n < 0 for n in obj.size) or any(s < 0 for s in obj.stride) or obj.offset < 0:
    raise TorchFileError(f"{source}: invalid tensor layout size={obj.size} stride={obj.stride}")
  if len(obj.size) != len(obj.stride):
    raise TorchFileError(f"{source}: size {obj.size} and stride {obj.stride} differ in rank")
  if 0 in obj.size:
    return np.zeros(obj.size, dtype.newbyteorder("="))
  last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
  if last >= ref.data.shape[0]:
    raise TorchFileError(f"{source}: tensor (offset {obj.offset}, size {obj.size}, stride {obj.stride}) "
                         f"overruns storage {ref.key} of {ref.data.shape[0]} elements")
  view = np.lib.stride_tricks.as_strided(
      ref.data[obj.offset:], shape=obj.size, strides=[s * dtype.itemsize for s in obj.stride],
      writeable=False)
  return np.array(view, dtype=dtype.newbyteorder("="))


def _materialize(obj, source):
  """Replaces every _PendingTensor in nested dicts/lists/tuples/ScriptObjects by a NumPy array."""
  if isinstance(obj, _PendingTensor):
    return _tensor_array(obj, source)
  if isinstance(obj, ScriptObject):
    obj.attributes = _materialize(obj.attributes or {}, source)
    return obj
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, source)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, source) for v in obj)
  return obj


def _storage_array(ref, raw, byteorder, source):
  need = ref.numel * ref.dtype.itemsize
  if len(raw) < need:
    raise TorchFileError(f"{source}: storage {ref.key} holds {len(raw)} bytes, expected {need}")
  return np.frombuffer(raw, dtype=ref.dtype.newbyteorder(byteorder), count=ref.numel)


def _zip_prefix(names, source):
  pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    raise TorchFileError(f"{source}: a PyTorch zip archive holds one <prefix>/data.pkl, found "
                         f"{pickles or 'none'}")
  return pickles[0][:-len("data.pkl")]


def is_torchscript(zf):
  """Whether an open zip is a TorchScript archive (`<prefix>/constants.pkl` or `<prefix>/code/` beside
  `<prefix>/data.pkl`)."""
  names = zf.namelist()
  try:
    prefix = _zip_prefix(names, "zip")
  except TorchFileError:
    return False
  return f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names)


def _read_zip(file, source, *, torchscript):
  with zipfile.ZipFile(file) as zf:
    names = zf.namelist()
    prefix = _zip_prefix(names, source)
    byteorder = "<"
    if f"{prefix}byteorder" in names:
      order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
      if order not in ("little", "big"):
        raise TorchFileError(f"{source}: unknown byteorder record {order!r}")
      byteorder = "<" if order == "little" else ">"
    storages = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(f"{prefix}data.pkl")), source=source, storages=storages,
                               torchscript=torchscript).load()
    for key, ref in storages.items():
      member = f"{prefix}data/{key}"
      if member not in names:
        raise TorchFileError(f"{source}: storage record {member} is missing")
      ref.data = _storage_array(ref, zf.read(member), byteorder, source)
  return obj


def _read_legacy(path):
  with open(path, "rb") as f:
    head = f.read(4)
    f.seek(0)
    if head == _ZIP_MAGIC:
      raise TorchFileError(f"{path} starts like a zip archive but its directory is unreadable (a truncated "
                           f"or corrupt download?); expected a complete PyTorch checkpoint")
    if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
      raise TorchFileError(f"{path} is neither a PyTorch checkpoint (zip or legacy) nor a .npz: it starts "
                           f"with {head[:2]!r}, not a pickle protocol header")

    def plain():  # a pickle that may reference no globals and no storages
      return _RestrictedUnpickler(f, source=path).load()

    try:
      magic = plain()
    except Exception as e:  # not a pickle at all
      raise TorchFileError(f"{path} is neither a PyTorch checkpoint (zip or legacy) nor a .npz: {e!r}") from e
    if magic != _LEGACY_MAGIC:
      raise TorchFileError(f"{path}: not a PyTorch legacy checkpoint (first pickle is {magic!r})")
    protocol = plain()
    if protocol != _LEGACY_PROTOCOL:
      raise TorchFileError(f"{path}: unsupported legacy protocol version {protocol!r}")
    plain()  # sys_info: informative only, as PyTorch writes legacy sizes and data little-endian
    byteorder = "<"
    storages = {}
    obj = _RestrictedUnpickler(f, source=path, storages=storages).load()
    keys = plain()
    if not isinstance(keys, list):
      raise TorchFileError(f"{path}: malformed storage key list {keys!r}")
    for key in keys:
      ref = storages.get(str(key))
      if ref is None:
        raise TorchFileError(f"{path}: storage {key!r} is not referenced by the pickle")
      header = f.read(8)
      if len(header) != 8:
        raise TorchFileError(f"{path}: truncated before storage {key!r}")
      (numel,) = struct.unpack(byteorder + "q", header)
      if numel != ref.numel:
        raise TorchFileError(f"{path}: storage {key!r} has {numel} elements, the pickle says {ref.numel}")
      ref.data = _storage_array(ref, f.read(numel * ref.dtype.itemsize), byteorder, path)
  return obj


def _guarded(read, source, what):
  """Runs `read()`, turning any failure into a TorchFileError naming `source`."""
  try:
    return _materialize(read(), source)
  except pickle.UnpicklingError as e:
    raise TorchFileError(f"{source}: {e}") from e
  except TorchFileError:
    raise
  except Exception as e:  # truncated or corrupt file: EOFError, struct.error, zipfile.BadZipFile, ...
    raise TorchFileError(f"{source} is not a readable {what}: {e!r}") from e


def read_state_dict(path):
  """{key: NumPy array} of a state dict saved by `torch.save` (zip or legacy layout), read without PyTorch.

  The pickle may reference only collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and the
  torch.<T>Storage types (float16/32/64, int8/16/32/64, uint8, bool); any other global is refused.
  """
  obj = _guarded(lambda: (_read_zip(path, path, torchscript=False) if zipfile.is_zipfile(path)
                          else _read_legacy(path)), path, "PyTorch checkpoint")
  if isinstance(obj, ScriptObject) or not isinstance(obj, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
    raise TorchFileError(f"{path} does not hold a flat state dict {{name: tensor}}")
  return dict(obj)


def read_torchscript(file, *, source):
  """(tensors, attributes, types) of a TorchScript archive (`torch.jit.save`), read without PyTorch.

  Args:
    file: a path or a binary file object of the zip archive.
    source: the name used in error messages.

  Returns:
    Three dicts keyed by dotted attribute paths from the root module (e.g. 'net.layers.conv.weight'):
    tensors {path: NumPy array}; attributes {path: the other plain values (bool, int, float, str, None,
    lists/tuples of them)}; types {module path ('' for the root): qualified class name, e.g.
    '__torch__.inceptionv3.Conv2dLayer'}.
  """
  root = _guarded(lambda: _read_zip(file, source, torchscript=True), source, "TorchScript archive")
  if not isinstance(root, ScriptObject):
    raise TorchFileError(f"{source}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
  tensors, attributes, types = {}, {}, {}

  def walk(obj, path, depth):
    if depth > 64:
      raise TorchFileError(f"{source}: module tree deeper than 64 at {path!r}")
    types[path] = obj.qualified_name
    for name, value in obj.attributes.items():
      key = f"{path}.{name}" if path else name
      if isinstance(value, ScriptObject):
        walk(value, key, depth + 1)
      elif isinstance(value, np.ndarray):
        tensors[key] = value
      elif value is None or isinstance(value, (bool, int, float, str, list, tuple)):
        attributes[key] = value
      else:
        raise TorchFileError(f"{source}: attribute {key!r} holds an unsupported {type(value).__name__}")

  walk(root, "", 0)
  return tensors, attributes, types
