"""Tests of ddpm_jax.evaluation.inception_weights: the torch-free `.pth` reader, `.npz` conversion, errors
and BatchNorm folding.

The `.pth` files are written by the tests (tests/torch_files.py: pickles assembled opcode by opcode in the
zip and legacy layouts); the folding is checked against conv-then-inference-BN in float64 NumPy.
"""

import jax
import numpy as np
import pytest

import torch_files
from ddpm_jax.evaluation import inception_net
from ddpm_jax.evaluation import inception_weights as wts

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
