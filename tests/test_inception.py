"""Tests of ddpm_jax.evaluation.inception: the FID Inception network, its preprocessing and weight loading.

No real weights exist on the test machine (and there is no network), so the network runs on random
weights written by the test itself in the documented PyTorch layouts. The references are independent of
the code under test: a layer table transcribed from the published architecture (checked against
torchvision's documented parameter count), a float64 interpolation-matrix form of the bilinear resizes,
NumPy pooling by explicit windows, and pickles assembled opcode by opcode.
"""

import io
import os
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.evaluation import frechet
from ddpm_jax.evaluation import inception as inc

# ---------------------------------------------------------------------------------------------------------
# Architecture and parameter count.

# (in, out, kh, kw) of every conv layer of the FID Inception-v3, transcribed from the published layer list
# (Szegedy et al. 2016, Table 1 / figs. 5-7, as laid out in torchvision's and pytorch-fid's Inception3).


def _mixed_a(cin, pool):
  return [(cin, 64, 1, 1), (cin, 48, 1, 1), (48, 64, 5, 5), (cin, 64, 1, 1), (64, 96, 3, 3),
          (96, 96, 3, 3), (cin, pool, 1, 1)]


def _mixed_c(cin, c7):
  return [(cin, 192, 1, 1), (cin, c7, 1, 1), (c7, c7, 1, 7), (c7, 192, 7, 1), (cin, c7, 1, 1),
          (c7, c7, 7, 1), (c7, c7, 1, 7), (c7, c7, 7, 1), (c7, 192, 1, 7), (cin, 192, 1, 1)]


def _mixed_e(cin):
  return [(cin, 320, 1, 1), (cin, 384, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1), (cin, 448, 1, 1),
          (448, 384, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1), (cin, 192, 1, 1)]


_CONVS = ([(3, 32, 3, 3), (32, 32, 3, 3), (32, 64, 3, 3), (64, 80, 1, 1), (80, 192, 3, 3)]
          + _mixed_a(192, 32) + _mixed_a(256, 64) + _mixed_a(288, 64)
          + [(288, 384, 3, 3), (288, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3)]          # Mixed_6a
          + _mixed_c(768, 128) + _mixed_c(768, 160) + _mixed_c(768, 160) + _mixed_c(768, 192)
          + [(768, 192, 1, 1), (192, 320, 3, 3), (768, 192, 1, 1), (192, 192, 1, 7),      # Mixed_7a
             (192, 192, 7, 1), (192, 192, 3, 3)]
          + _mixed_e(1280) + _mixed_e(2048))


def test_param_count_matches_the_published_architecture():
  conv_weights = sum(i * o * kh * kw for i, o, kh, kw in _CONVS)
  bn_channels = sum(o for _, o, _, _ in _CONVS)
  # Cross-check of the table: torchvision's inception_v3 (1000 classes, with the auxiliary classifier:
  # 1×1 768→128, 5×5 128→768, each with BN, and a 768→1000 linear layer) documents 27,161,264 parameters
  # (pytorch.org/vision, Inception_V3_Weights.IMAGENET1K_V1, num_params).
  aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
  assert conv_weights + 2 * bn_channels + (2048 * 1000 + 1000) + aux == 27_161_264
  # FID Inception: no aux classifier, a 2048→1008 linear layer; 23,850,960 trainable PyTorch parameters.
  torch_trainable = conv_weights + 2 * bn_channels + 2048 * 1008 + 1008
  assert torch_trainable == 23_850_960
  # Folding BN leaves one bias per channel in place of (γ, β): 23,833,744 parameters in 94 conv + 1 fc.
  shapes = inc.param_shapes()
  assert len(_CONVS) == 94 and len(shapes) == 2 * 94 + 2
  assert sum(int(np.prod(s)) for s in shapes.values()) == torch_trainable - bn_channels == 23_833_744
  assert sorted(s for s in shapes.values() if len(s) == 4) == sorted(
      (kh, kw, i, o) for i, o, kh, kw in _CONVS)
  assert shapes["fc/kernel"] == (2048, 1008) and shapes["fc/bias"] == (1008,)
  sd = inc.state_dict_shapes()
  assert len(sd) == 94 * 5 + 2
  assert sd["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
  assert sd["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert sd["fc.weight"] == (1008, 2048)


def test_pools_count_only_in_image_inputs():
  x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
  avg = np.zeros_like(x)
  mx = np.zeros_like(x)
  for i in range(5):
    for j in range(4):
      window = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :]
      avg[:, i, j] = window.mean(axis=(1, 2))     # divides by the in-image count (4 at corners, 6, 9)
      mx[:, i, j] = window.max(axis=(1, 2))
  np.testing.assert_allclose(np.asarray(inc.avg_pool_3x3_same(jnp.asarray(x))), avg, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(inc.max_pool_3x3_same(jnp.asarray(x))), mx)


def _np_conv_relu(x, kernel, bias):
  """float64 NHWC conv, stride 1, symmetric 'same' padding (kh//2, kw//2), + bias, then ReLU."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = x.shape[1:3]
  y = sum(np.einsum("nhwi,io->nhwo", xp[:, a:a + h, b:b + w], kernel[a, b])
          for a in range(kh) for b in range(kw))
  return np.maximum(y + bias, 0.0)


def _np_pool(x, reduce):
  out = np.zeros_like(x)
  for i in range(x.shape[1]):
    for j in range(x.shape[2]):
      out[:, i, j] = reduce(x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2], axis=(1, 2))
  return out


@pytest.mark.parametrize("block", ["A", "E_max"])
def test_blocks_match_numpy_wiring(block):
  """Branch order, kernel shapes, paddings and pool type of a 35×35 (A) and the last 8×8 (E) block,
  against a NumPy transcription of pytorch-fid's FIDInceptionA / FIDInceptionE_2 forward passes."""
  module = inc.InceptionA(pool_features=32) if block == "A" else inc.InceptionE(pool="max")
  x = np.random.default_rng(8).normal(size=(1, 5, 4, 8))
  shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, jnp.float32))
  rng = np.random.default_rng(9)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3, shapes)
  got = np.asarray(jax.jit(module.apply)(params, x.astype(np.float32)), np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
  c = lambda h, name: _np_conv_relu(h, p[name]["kernel"], p[name]["bias"])  # noqa: E731
  if block == "A":
    want = np.concatenate([
        c(x, "branch1x1"),
        c(c(x, "branch5x5_1"), "branch5x5_2"),
        c(c(c(x, "branch3x3dbl_1"), "branch3x3dbl_2"), "branch3x3dbl_3"),
        c(_np_pool(x, np.mean), "branch_pool")], axis=-1)
  else:
    b3 = c(x, "branch3x3_1")
    bd = c(c(x, "branch3x3dbl_1"), "branch3x3dbl_2")
    want = np.concatenate([
        c(x, "branch1x1"),
        c(b3, "branch3x3_2a"), c(b3, "branch3x3_2b"),
        c(bd, "branch3x3dbl_3a"), c(bd, "branch3x3dbl_3b"),
        c(_np_pool(x, np.max), "branch_pool")], axis=-1)
  assert got.shape == want.shape == ((1, 5, 4, 256) if block == "A" else (1, 5, 4, 2048))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------------------------------------------------
# Preprocessing against a float64 interpolation-matrix reference.


def _interp_matrix(n_in, n_out, half_pixel):
  """[n_out, n_in] float64 bilinear weights: row i puts (1-w, w) on inputs floor(c), min(floor(c)+1, n-1)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    c = (i + 0.5) * n_in / n_out - 0.5 if half_pixel else i * n_in / n_out
    c = max(c, 0.0)
    lo = min(int(np.floor(c)), n_in - 1)
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1.0 - (c - lo)
    m[i, hi] += c - lo
  return m


def _reference_preprocess(images, preprocessing):
  x = images.astype(np.float64)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  mh = _interp_matrix(x.shape[1], 299, preprocessing == "pytorch_fid")
  mw = _interp_matrix(x.shape[2], 299, preprocessing == "pytorch_fid")
  y = np.einsum("ph,nhwc->npwc", mh, x, optimize=True)
  y = np.einsum("npwc,qw->npqc", y, mw, optimize=True)
  return (y - 128.0) / 128.0 if preprocessing == "tf1" else 2.0 * (y / 255.0) - 1.0


@pytest.mark.parametrize("preprocessing", ["tf1", "pytorch_fid"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 7, 5, 1), (1, 400, 301, 3)])
def test_preprocessing_matches_float64_reference(preprocessing, shape):
  images = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
  got = np.asarray(inc.preprocess_images(images, preprocessing=preprocessing))
  assert got.dtype == np.float32 and got.shape == (shape[0], 299, 299, 3)
  # Both reference kernels (and this code) compute the scale in/out and the coordinates c in float32, so c
  # is off the float64 value by up to ~2.5·c·eps32; the pixel slope in output units is at most 2 (255/128
  # or 2·255/255), so values may differ by ~5·c·eps32, plus float32 rounding of the values themselves.
  atol = 5 * max(shape[1:3]) * np.finfo(np.float32).eps + 2e-6
  np.testing.assert_allclose(got, _reference_preprocess(images, preprocessing), rtol=0, atol=atol)


def test_preprocessing_edge_facts():
  images = np.random.default_rng(3).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
  tf1 = np.asarray(inc.preprocess_images(images, preprocessing="tf1"))
  pt = np.asarray(inc.preprocess_images(images, preprocessing="pytorch_fid"))
  x = images.astype(np.float64)
  # TF 1.x legacy map: output 0 samples input 0 exactly; the last output row (c = 298·32/299 ≈ 31.9)
  # replicates the last input row. Its range is [−1, 127/128].
  np.testing.assert_allclose(tf1[0, 0, 0], (x[0, 0, 0] - 128) / 128, atol=1e-6)
  np.testing.assert_allclose(tf1[0, -1, 0], (x[0, -1, 0] - 128) / 128, atol=1e-6)
  # Half-pixel map: output 0 has c = 0.5·32/299 − 0.5 < 0, clamped to input 0.
  np.testing.assert_allclose(pt[0, 0, 0], x[0, 0, 0] / 127.5 - 1, atol=1e-6)
  assert not np.allclose(tf1, pt, atol=1e-2)  # the two standards really differ
  # 299×299 input: both resizes are the identity.
  big = np.random.default_rng(4).integers(0, 256, size=(1, 299, 299, 3), dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(inc.preprocess_images(big)),
                                ((big.astype(np.float32) - 128) / 128))
  np.testing.assert_allclose(np.asarray(inc.preprocess_images(big, preprocessing="pytorch_fid")),
                             big / 127.5 - 1, atol=1e-6)
  # Grey images are repeated to three channels.
  grey = np.asarray(inc.preprocess_images(images[..., :1]))
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  with pytest.raises(ValueError, match="uint8"):
    inc.preprocess_images(images.astype(np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    inc.preprocess_images(images[..., :2])
  with pytest.raises(ValueError, match="preprocessing must be one of"):
    inc.preprocess_images(images, preprocessing="bicubic")


# ---------------------------------------------------------------------------------------------------------
# PyTorch files written by hand: protocol-2 pickle opcodes, then the zip or legacy container.


class _PickleAssembler:
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


_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
          np.dtype(np.int64): "LongStorage", np.dtype(np.float16): "HalfStorage"}


def _state_dict_pickle(entries, *, legacy):
  """entries: [(name, storage key, storage array, offset, size, stride)]."""
  asm = _PickleAssembler()
  asm.ordered_dict()
  asm.out += b"("                                    # MARK for SETITEMS
  for name, key, storage, offset, size, stride in entries:
    asm.value(name)
    asm.tensor(key, _TYPES[storage.dtype], storage.size, offset, size, stride, legacy=legacy)
  asm.out += b"u"                                    # SETITEMS
  return asm.stop()


def _contiguous_entries(state_dict):
  """One storage per tensor, row-major strides (in elements) as PyTorch writes contiguous tensors."""
  entries = []
  for i, (name, v) in enumerate(state_dict.items()):
    strides = tuple(int(np.prod(v.shape[d + 1:])) for d in range(v.ndim))
    entries.append((name, str(i), np.asarray(v).reshape(-1), 0, v.shape, strides))
  return entries


def _write_torch_zip(path, entries, *, prefix="archive", payload=None):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{prefix}/data.pkl", payload or _state_dict_pickle(entries, legacy=False))
    zf.writestr(f"{prefix}/byteorder", "little")
    storages = {key: storage for _, key, storage, *_ in entries}
    for key, storage in storages.items():
      zf.writestr(f"{prefix}/data/{key}", storage.astype(storage.dtype.newbyteorder("<")).tobytes())
    zf.writestr(f"{prefix}/version", "3\n")


def _write_torch_legacy(path, entries):
  storages = {key: storage for _, key, storage, *_ in entries}
  with open(path, "wb") as f:
    f.write(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2))
    f.write(pickle.dumps(1001, protocol=2))
    f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    f.write(_state_dict_pickle(entries, legacy=True))
    keys = sorted(storages)
    f.write(pickle.dumps(keys, protocol=2))
    for key in keys:
      f.write(struct.pack("<q", storages[key].size))
      f.write(storages[key].astype("<" + storages[key].dtype.str[1:]).tobytes())


def _small_entries():
  shared = np.arange(12, dtype=np.float32) * 0.5
  return [
      ("a.weight", "0", shared, 0, (3, 4), (4, 1)),
      ("a.view", "0", shared, 1, (2, 2), (1, 4)),     # a strided view sharing storage 0
      ("b.bias", "1", np.array([1.5, -2.0], np.float64), 0, (2,), (1,)),
      ("bn.num_batches_tracked", "2", np.array([7], np.int64), 0, (), ()),
      ("h", "3", np.array([0.25, 3.0, -1.0], np.float16), 1, (2,), (1,)),
  ]


_SMALL_EXPECTED = {
    "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5,
    "a.view": np.array([[0.5, 2.5], [1.0, 3.0]], np.float32),
    "b.bias": np.array([1.5, -2.0]),
    "bn.num_batches_tracked": np.array(7, np.int64),
    "h": np.array([3.0, -1.0], np.float16),
}


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reads_handwritten_torch_files(tmp_path, layout):
  path = tmp_path / f"small_{layout}.pth"
  if layout == "zip":
    _write_torch_zip(path, _small_entries(), prefix="some_model")
  else:
    _write_torch_legacy(path, _small_entries())
  got = inc.read_torch_state_dict(path)
  assert list(got) == list(_SMALL_EXPECTED)
  for name, want in _SMALL_EXPECTED.items():
    assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
    np.testing.assert_array_equal(got[name], want)


def test_refuses_pickles_with_other_globals(tmp_path):
  asm = _PickleAssembler()
  asm.global_("os", "system")
  asm.value(("echo unsafe",))
  asm.out += b"R"
  path = tmp_path / "evil.pth"
  _write_torch_zip(path, [], payload=asm.stop())
  with pytest.raises(inc.InceptionWeightsError, match=r"refusing to load global os\.system"):
    inc.read_torch_state_dict(path)
  with pytest.raises(inc.InceptionWeightsError, match=r"refusing to load global os\.system"):
    inc.load_inception_params(path)


def test_missing_and_mismatched_weights_errors(tmp_path, capsys):
  missing = tmp_path / "nowhere" / inc.FID_WEIGHTS_FILE
  with pytest.raises(inc.InceptionWeightsError) as err:
    inc.load_inception_params(missing)
  message = str(err.value)
  assert str(missing) in message and inc.FID_WEIGHTS_URL in message and "convert" in message
  small = tmp_path / "small.pth"
  _write_torch_zip(small, _small_entries())
  with pytest.raises(inc.InceptionWeightsError, match="472 missing keys"):
    inc.load_inception_params(small)
  assert inc.main(["convert", str(small), str(tmp_path / "out.npz")]) == 1
  assert "missing keys" in capsys.readouterr().err
  assert not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------------------------------------------------
# A full-size random state dict: conversion, BN folding, and the network on it.


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in inc.state_dict_shapes().items():
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


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
  directory = tmp_path_factory.mktemp("weights")
  state_dict = _random_state_dict()
  state_dict["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)
  pth = directory / "random_inception.pth"
  _write_torch_zip(pth, _contiguous_entries(state_dict))
  npz = directory / "random_inception.npz"
  assert inc.main(["convert", str(pth), str(npz)]) == 0
  return state_dict, pth, npz, inc.load_inception_params(npz)


def test_conversion_and_batchnorm_folding(random_weights):
  state_dict, pth, npz, params = random_weights
  with np.load(npz) as f:
    assert set(f.files) == set(state_dict)
    np.testing.assert_array_equal(f["Mixed_6e.branch7x7dbl_3.conv.weight"],
                                  state_dict["Mixed_6e.branch7x7dbl_3.conv.weight"])
  from_pth = inc.load_inception_params(pth)
  jax.tree.map(np.testing.assert_array_equal, from_pth, params)
  assert inc.count_params(params) == 23_833_744
  # Folding: conv then inference BN (eps 1e-3) equals the folded conv, on a 1×1 layer and a 1×7 layer.
  rng = np.random.default_rng(1)
  for torch_name, flax_path in (("Conv2d_3b_1x1", ("Conv2d_3b_1x1",)),
                                ("Mixed_6b.branch7x7_2", ("Mixed_6b", "branch7x7_2"))):
    w = state_dict[f"{torch_name}.conv.weight"].astype(np.float64)          # OIHW
    gamma, beta, mean, var = (state_dict[f"{torch_name}.bn.{k}"].astype(np.float64)
                              for k in ("weight", "bias", "running_mean", "running_var"))
    patch = rng.normal(size=(4, w.shape[1], w.shape[2], w.shape[3]))        # [N, I, kh, kw]
    y = np.einsum("nihw,oihw->no", patch, w)
    want = (y - mean) / np.sqrt(var + 1e-3) * gamma + beta
    leaf = params["params"]
    for part in flax_path:
      leaf = leaf[part]
    got = np.einsum("nihw,hwio->no", patch, leaf["kernel"].astype(np.float64)) + leaf["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(params["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(params["params"]["fc"]["bias"], state_dict["fc.bias"])
  bad = dict(state_dict)
  bad["fc.weight"] = bad["fc.weight"][:1000]
  with pytest.raises(inc.InceptionWeightsError, match=r"'fc\.weight' has shape \(1000, 2048\)"):
    inc.params_from_state_dict(bad)


def test_network_outputs_with_exact_n(random_weights):
  *_, params = random_weights
  images = np.random.default_rng(5).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  features, logits = inc.inception_features_and_logits(params, images, batch_size=2)
  assert features.shape == (3, 2048) and features.dtype == np.float32
  assert logits.shape == (3, 1008) and logits.dtype == np.float32
  assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits)) and features.min() >= 0
  # Default logits are pool3 · W without the bias, as the reference Inception Score code.
  kernel = np.asarray(params["params"]["fc"]["kernel"], np.float64)
  np.testing.assert_allclose(logits, features.astype(np.float64) @ kernel, rtol=1e-4, atol=1e-4)
  # Reversed order, same compiled batch shape: batches (2, 1) and (0, pad). Each image's result does not
  # depend on its batch mates or on the padding, and none is dropped or duplicated.
  rev_features, rev_logits = inc.inception_features_and_logits(params, images[::-1], batch_size=2)
  np.testing.assert_allclose(rev_features[::-1], features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rev_logits[::-1], logits, rtol=1e-5, atol=1e-4)
  assert np.abs(features[0] - features[1]).max() > 1e-4


@pytest.mark.parametrize("n", [1, 4, 5, 11])
def test_batched_apply_keeps_exactly_n_in_order(n):
  calls = []

  def fn(batch):
    calls.append(batch.shape[0])
    return (batch[:, 0, 0, 0].astype(np.int32), batch.reshape(batch.shape[0], -1).sum(1))

  images = np.zeros((n, 2, 2, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(1, n + 1)
  first, total = inc.batched_apply(fn, images, batch_size=4)
  np.testing.assert_array_equal(first, np.arange(1, n + 1))
  np.testing.assert_array_equal(total, np.arange(1, n + 1))
  assert calls == [4] * (-(-n // 4))


# ---------------------------------------------------------------------------------------------------------
# Reference statistics cache and the metric wrappers (the network replaced by a cheap stand-in).


def _fake_network(monkeypatch):
  """Replaces the network by a fixed random map with 16 features (2048-d matrix square roots cost about a
  minute each on a busy 2-core machine; the statistics code does not depend on the dimension)."""
  calls = []
  monkeypatch.setattr(inc, "FEATURE_DIM", 16)

  def fake(params, images, **kwargs):
    del params, kwargs
    calls.append(images.shape[0])
    x = images.reshape(images.shape[0], -1).astype(np.float64)
    rng = np.random.default_rng(0)
    features = np.tanh(x @ rng.normal(size=(x.shape[1], 16)) / 100.0) + 1.0
    logits = x @ rng.normal(size=(x.shape[1], 1008)) / 500.0
    return features.astype(np.float32), logits.astype(np.float32)

  monkeypatch.setattr(inc, "inception_features_and_logits", fake)
  return calls, fake


def test_reference_statistics_cache_follows_provenance(tmp_path, monkeypatch):
  calls, fake = _fake_network(monkeypatch)
  images = np.random.default_rng(6).integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
  cache = tmp_path / "stats" / "cifar_train.npz"
  provenance = {"dataset": "toy", "split": "train", "n": 20, "weights_sha256": "6726825d"}
  want_mu, want_sigma = frechet.activation_statistics(fake(None, images)[0])
  calls.clear()
  mu, sigma, stored = inc.reference_statistics(images, params=None, cache_path=cache, provenance=provenance)
  assert calls == [20] and cache.exists()
  np.testing.assert_allclose(mu, want_mu)
  np.testing.assert_allclose(sigma, want_sigma)
  assert stored["preprocessing"] == "tf1" and stored["dataset"] == "toy" and stored["n"] == 20

  def must_not_load():
    raise AssertionError("a cache hit must not load the images")

  mu2, sigma2, _ = inc.reference_statistics(must_not_load, params=None, cache_path=cache,
                                            provenance=dict(provenance))
  assert calls == [20]
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  # Any change of provenance (split, weights, preprocessing) recomputes and rewrites.
  inc.reference_statistics(lambda: images, params=None, cache_path=cache,
                           provenance={**provenance, "split": "test"})
  assert calls == [20, 20]
  inc.reference_statistics(images, params=None, cache_path=cache, provenance={**provenance, "split": "test"},
                           preprocessing="pytorch_fid")
  assert calls == [20, 20, 20]
  with pytest.raises(ValueError, match="missing \\['weights_sha256'\\]"):
    inc.reference_statistics(images, params=None, cache_path=cache,
                             provenance={"dataset": "toy", "split": "train", "n": 20})
  with pytest.raises(ValueError, match=r"provenance\['n'\] = 21 but 20 images"):
    inc.reference_statistics(images, params=None, cache_path=tmp_path / "other.npz",
                             provenance={**provenance, "n": 21})


def test_metrics_are_labelled_with_n(tmp_path, monkeypatch):
  _, fake = _fake_network(monkeypatch)
  rng = np.random.default_rng(7)
  reference_images = rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)
  images = rng.integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
  reference = inc.reference_statistics(
      reference_images, params=None, cache_path=tmp_path / "ref.npz",
      provenance={"dataset": "toy", "split": "train", "n": 30, "weights_sha256": "0"})
  result = inc.inception_metrics(None, images, reference=reference, splits=2)
  assert result["fid_label"] == "FID@20" and result["is_label"] == "IS@20" and result["n"] == 20
  features, logits = fake(None, images)
  mu, sigma = frechet.activation_statistics(features)
  assert result["fid"] == pytest.approx(frechet.frechet_distance(mu, sigma, reference[0], reference[1]))
  z = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
  assert result["inception_score"] == pytest.approx(frechet.inception_score(z / z.sum(1, keepdims=True),
                                                                            splits=2)[0])
  assert set(inc.fid_from_images(None, images, reference=reference)) >= {"fid", "fid_label"}
  assert "fid" not in inc.inception_score_from_images(None, images, splits=2)
  with pytest.raises(ValueError, match="preprocessing='tf1'"):
    inc.inception_metrics(None, images, reference=reference, preprocessing="pytorch_fid")
