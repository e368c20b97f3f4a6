"""Random-access data sources: tfds ArrayRecord datasets read with `tfds.data_source`, no TensorFlow.

`mnist5k` (the digits bundled with the package) is prepared into the data dir on first use. Every other
name (cifar10, celeb_a_hq/256, lsun/church_outdoor, ...) must already be prepared there in the ArrayRecord
format: preparing them runs the tfds download/encode code, which needs TensorFlow, so it is a one-time step
on a machine that has it (`PREPARE_COMMAND`).
"""

import os

import tensorflow_datasets as tfds

from ddpm_jax import errors
from ddpm_jax.data import mnist5k

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")

# The one-time preparation of a tfds dataset for this pipeline; `{name}` and `{data_dir}` are filled in.
# It needs TensorFlow (`pip install tensorflow tensorflow-datasets`) and, for CelebA-HQ and LSUN, the manual
# downloads described in the tfds catalog; copy the resulting `{data_dir}/<name>/<version>/` folder to the
# training machines.
PREPARE_COMMAND = "tfds build {name} --file_format=array_record --data_dir={data_dir}"

# Stored image shapes (H, W, C) of the datasets the shipped configs name, so that building a model for
# sampling or evaluation does not need the dataset prepared (None: the size varies; LSUN needs image_size).
# Checked against the prepared dataset whenever training reads it.
KNOWN_IMAGE_SHAPES = {
    mnist5k.NAME: (28, 28, 1),
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "celeb_a_hq/256": (256, 256, 3),
    "lsun/bedroom": (None, None, 3),
    "lsun/church_outdoor": (None, None, 3),
}


class DatasetNotPreparedError(errors.BadInputError, FileNotFoundError):
  """A dataset is unknown to tfds or not prepared as ArrayRecord in the data dir."""


def resolve_data_dir(data_dir=None):
  """Returns the absolute data dir (or gs:// URL): `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir is None or data_dir == "":
    data_dir = os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  if not isinstance(data_dir, (str, os.PathLike)):
    raise TypeError(f"data_dir must be a path (str or os.PathLike) or None; got {data_dir!r}")
  if "://" in os.fspath(data_dir):  # gs://bucket/tensorflow_datasets: tfds reads it through etils.epath
    return os.fspath(data_dir).rstrip("/")
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def _not_prepared(name, data_dir, reason):
  command = PREPARE_COMMAND.format(name=name, data_dir=data_dir)
  return DatasetNotPreparedError(
      f"Dataset {name!r} {reason} in data dir {data_dir!r}. This pipeline reads ArrayRecord files with "
      f"tfds.data_source and never runs TensorFlow. Prepare the dataset once, on a machine with "
      f"TensorFlow and tensorflow-datasets installed:\n  {command}\n"
      f"then make that data dir visible here (pass data_dir=... or config.data.data_dir, or set "
      f"$TFDS_DATA_DIR).")


def get_builder(name, *, data_dir=None):
  """Returns the prepared tfds builder of `name` in the data dir, preparing `mnist5k` if needed.

  Raises:
    DatasetNotPreparedError: `name` is neither a registered tfds dataset nor found in the data dir, is
      not prepared there, or is prepared in a format other than ArrayRecord. The message names the
      dataset, the data dir and `PREPARE_COMMAND`.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty dataset name such as {mnist5k.NAME!r} or 'cifar10'; "
                     f"got {name!r}")
  data_dir = resolve_data_dir(data_dir)
  if name == mnist5k.NAME:
    builder = mnist5k.Mnist5k(data_dir=data_dir)
    if not builder.is_prepared():
      try:
        builder.download_and_prepare()  # local asset only: no network, no TensorFlow
      except FileExistsError:
        # Several processes sharing a data dir (a multi-process run on one host, or a shared filesystem)
        # race to prepare it; tfds renames a finished folder into place atomically, so an existing
        # destination means another process has prepared it.
        builder = mnist5k.Mnist5k(data_dir=data_dir)
        if not builder.is_prepared():
          raise
    return builder
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _not_prepared(name, data_dir, "is not a registered tfds dataset and was not found") from None
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, f"(version {builder.version}) is not prepared")
  file_format = builder.info.file_format
  if file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise _not_prepared(name, data_dir,
                        f"is prepared as {getattr(file_format, 'value', file_format)}, not array_record,")
  return builder


def _split_base(split):
  """The split name without tfds slicing syntax: 'train[:90%]' -> 'train'."""
  return split.split("[", 1)[0]


def get_data_source(name, *, split, data_dir=None):
  """Returns `tfds.data_source(name, split=split)`: a random-access sequence of dicts of NumPy values.

  `split` accepts the tfds split syntax ('train', 'test', 'train[:1000]').
  """
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty tfds split string such as 'train'; got {split!r}")
  builder = get_builder(name, data_dir=data_dir)
  available = sorted(builder.info.splits.keys())
  if _split_base(split) not in available:
    raise errors.DataError(f"split {split!r} does not exist in dataset {name!r}; available splits: "
                     f"{available}")
  return tfds.data_source(name, split=split, data_dir=builder.data_dir_root, download=False)


def get_dataset_info(name, *, data_dir=None):
  """Returns (num_examples per split, image shape (H, W, C), num_classes) of a prepared dataset.

  The image shape is the stored one; a `None` entry means the size varies between images (LSUN), in which
  case the pipeline needs `image_size`. `num_classes` is None for unlabelled datasets.
  """
  builder = get_builder(name, data_dir=data_dir)
  features = builder.info.features
  if "image" not in features:
    raise errors.DataError(f"dataset {name!r} has no 'image' feature; features: {list(features.keys())}")
  num_examples = {split: int(info.num_examples) for split, info in builder.info.splits.items()}
  shape = tuple(features["image"].shape)
  num_classes = int(features["label"].num_classes) if "label" in features else None
  return num_examples, shape, num_classes
