"""PyTorch state-dict files written by hand, for the tests of the FID Inception weights reader.

No real weights exist on the test machine (and there is no network, nor PyTorch), so the tests write files in
the documented PyTorch layouts themselves: pickles assembled opcode by opcode (protocol 2), in the zip
container (PyTorch ≥ 1.6) or the legacy stream, and a full-size random FID-Inception state dict.
"""

import pickle
import struct
import zipfile

import numpy as np

from ddpm_jax.evaluation import inception_weights


class PickleAssembler:
  """Emits pickle protocol 2 opcodes (see Lib/pickletools.py) for the few values a state dict needs."""

  def __init__(self):
    self.out = bytearray(b"\x80\x02")              # PROTO 2

  def global_(self, module, name):
    self.out += b"c" + f"{module}\n{name}\n".encode()   # GLOBAL

  def value(self, v):
    if v is None:
      self.out += b"N"                               # NONE
    elif v is True or v is False:
      self.out += b"\x88" if v else b"\x89"          # NEWTRUE / NEWFALSE
    elif isinstance(v, int):
      self.out += b"J" + struct.pack("<i", v)        # BININT
    elif isinstance(v, str):
      raw = v.encode()
      self.out += b"X" + struct.pack("<I", len(raw)) + raw   # BINUNICODE
    elif isinstance(v, tuple):
      self.out += b"("                               # MARK
      for item in v:
        self.value(item)
      self.out += b"t"                               # TUPLE
    else:
      raise TypeError(v)

  def ordered_dict(self):
    self.global_("collections", "OrderedDict")
    self.out += b")R"                                # EMPTY_TUPLE, REDUCE

  def tensor(self, key, storage_type, numel, offset, size, stride, *, legacy):
    self.global_("torch._utils", "_rebuild_tensor_v2")
    self.out += b"("                                 # MARK: args of _rebuild_tensor_v2
    self.out += b"("                                 # MARK: the persistent id tuple
    self.value("storage")
    self.global_("torch", storage_type)
    for item in (key, "cpu", numel) + ((None,) if legacy else ()):
      self.value(item)
    self.out += b"tQ"                                # TUPLE, BINPERSID
    self.value(offset)
    self.value(tuple(size))
    self.value(tuple(stride))
    self.value(False)                                # requires_grad
    self.ordered_dict()                              # backward_hooks
    self.out += b"tR"                                # TUPLE, REDUCE

  def stop(self):
    self.out += b"."
    return bytes(self.out)


STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
          np.dtype(np.int64): "LongStorage", np.dtype(np.float16): "HalfStorage"}


def state_dict_pickle(entries, *, legacy):
  """entries: [(name, storage key, storage array, offset, size, stride)]."""
  asm = PickleAssembler()
  asm.ordered_dict()
  asm.out += b"("                                    # MARK for SETITEMS
  for name, key, storage, offset, size, stride in entries:
    asm.value(name)
    asm.tensor(key, STORAGE_TYPES[storage.dtype], storage.size, offset, size, stride, legacy=legacy)
  asm.out += b"u"                                    # SETITEMS
  return asm.stop()


def contiguous_entries(state_dict):
  """One storage per tensor, row-major strides (in elements) as PyTorch writes contiguous tensors."""
  entries = []
  for i, (name, v) in enumerate(state_dict.items()):
    strides = tuple(int(np.prod(v.shape[d + 1:])) for d in range(v.ndim))
    entries.append((name, str(i), np.asarray(v).reshape(-1), 0, v.shape, strides))
  return entries


def write_torch_zip(path, entries, *, prefix="archive", payload=None):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{prefix}/data.pkl", payload or state_dict_pickle(entries, legacy=False))
    zf.writestr(f"{prefix}/byteorder", "little")
    storages = {key: storage for _, key, storage, *_ in entries}
    for key, storage in storages.items():
      zf.writestr(f"{prefix}/data/{key}", storage.astype(storage.dtype.newbyteorder("<")).tobytes())
    zf.writestr(f"{prefix}/version", "3\n")


def write_torch_legacy(path, entries):
  storages = {key: storage for _, key, storage, *_ in entries}
  with open(path, "wb") as f:
    f.write(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2))
    f.write(pickle.dumps(1001, protocol=2))
    f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    f.write(state_dict_pickle(entries, legacy=True))
    keys = sorted(storages)
    f.write(pickle.dumps(keys, protocol=2))
    for key in keys:
      f.write(struct.pack("<q", storages[key].size))
      f.write(storages[key].astype("<" + storages[key].dtype.str[1:]).tobytes())


def random_state_dict(seed=0):
  """Random float32 values of the FID-Inception state-dict shapes (He-scaled convs, positive variances)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in inception_weights.state_dict_shapes().items():
    if key.endswith("conv.weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      sd[key] = (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    elif key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    elif key.endswith("bn.weight"):
      sd[key] = rng.uniform(0.8, 1.2, size=shape).astype(np.float32)
    elif key.startswith("fc."):
      sd[key] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    else:
      sd[key] = (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(np.float32)
  return sd


def write_random_weights(directory):
  """A random full-size state dict saved as `.pth` (zip) and converted to `.npz` by the command line.

  Returns:
    (state dict, .pth path, .npz path, params loaded from the .npz).
  """
  state_dict = random_state_dict()
  state_dict["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)
  pth = directory / "random_inception.pth"
  write_torch_zip(pth, contiguous_entries(state_dict))
  npz = directory / "random_inception.npz"
  assert inception_weights.main(["convert", str(pth), str(npz)]) == 0
  return state_dict, pth, npz, inception_weights.load_inception_params(npz)
