"""grain input pipelines: an infinite, shuffled, checkpointable training stream and a finite eval pass.

Both are built with grain's `MapDataset` API on a `tfds.data_source`, so every element has a fixed position
and the returned iterator is a `grain.DatasetIterator`: `get_state()` is a small JSON-able dict,
`set_state(state)` resumes the stream exactly, and `grain.checkpoint.CheckpointSave/CheckpointRestore`
(the `grain.checkpoint.CheckpointHandler` args registered with Orbax) store it next to the model.

Multi-process layout. The global stream is one sequence of examples: the split shuffled with the seed
(a fresh permutation each epoch), repeated forever, cut into local batches of b = batch_size //
process_count. Global batch i is local batches i * P, ..., i * P + P - 1 (P = process_count), and process
p reads local batch i * P + p only. So the processes see disjoint examples, together they see exactly
the global batch, and the global stream does not depend on P: one process with batch_size B yields the
concatenation of what P processes yield. Random flips are drawn per stream position from the same seed,
so they too are independent of P and of the number of grain workers.

Checkpoints. The iterator state is a few integers (the next batch position; with worker processes, one
per worker), so it restores in O(1). A state is tied to the pipeline that wrote it: restore it into an
iterator made with the same data config (notably `num_workers`), batch size, seed and process layout.
"""

import math
import numbers
import os

from absl import flags
from absl import logging
import grain
import ml_collections
import numpy as np
import tqdm

from ddpm_jax import errors
from ddpm_jax.data import mnist5k
from ddpm_jax.data import sources
from ddpm_jax.data import transforms

_READ_THREADS = 4
_PREFETCH_BATCHES = 8
_CONFIG_FIELDS = ("name", "data_dir", "random_flip", "image_size", "num_workers", "train_split",
                  "eval_split")


def get_default_data_config():
  """Returns the data ConfigDict with its defaults (the bundled digits, in-process loading)."""
  return ml_collections.ConfigDict({
      "name": mnist5k.NAME,  # 'mnist5k' or any tfds name prepared as ArrayRecord, e.g. 'cifar10'
      # Typed references, so that `--config.data.data_dir=...` / `--config.data.image_size=...` can set them.
      "data_dir": ml_collections.FieldReference(None, field_type=str),  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      "random_flip": False,  # the original flipped CIFAR-10/CelebA-HQ/LSUN; never flip digits
      "image_size": ml_collections.FieldReference(None, field_type=int),  # None: stored size; int: crop+resize
      "num_workers": 0,  # grain worker processes; 0 reads in this process (the CPU default)
      "train_split": "train",
      "eval_split": "test",
  })


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_data_config(data_config):
  """Raises a ValueError naming the field, its value and what is accepted if `data_config` is invalid."""
  if not isinstance(data_config, (ml_collections.ConfigDict, dict)):
    raise TypeError(f"data_config must be an ml_collections.ConfigDict; got {type(data_config).__name__}")
  missing = [field for field in _CONFIG_FIELDS if field not in data_config]
  if missing:
    raise ValueError(f"data_config is missing field(s) {missing}; expected all of {list(_CONFIG_FIELDS)} "
                     "(see ddpm_jax.data.get_default_data_config())")
  name = data_config["name"]
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"data_config.name must be {mnist5k.NAME!r} or a tfds dataset name such as "
                     f"'cifar10', 'celeb_a_hq/256' or 'lsun/church_outdoor'; got {name!r}")
  data_dir = data_config["data_dir"]
  if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
    raise ValueError(f"data_config.data_dir must be None or a path; got {data_dir!r}")
  if not isinstance(data_config["random_flip"], bool):
    raise ValueError(f"data_config.random_flip must be True or False; got {data_config['random_flip']!r}")
  if name == mnist5k.NAME and data_config["random_flip"]:
    logging.warning("data_config.random_flip=True with name=%r: mirrored digits are not digits; the "
                    "MNIST configs should keep random_flip=False", name)
  image_size = data_config["image_size"]
  if image_size is not None and (not _is_int(image_size) or image_size <= 0):
    raise ValueError(f"data_config.image_size must be None or a positive int; got {image_size!r}")
  num_workers = data_config["num_workers"]
  if not _is_int(num_workers) or num_workers < 0:
    raise ValueError(f"data_config.num_workers must be an int >= 0 (0 = read in this process); got "
                     f"{num_workers!r}")
  for field in ("train_split", "eval_split"):
    split = data_config[field]
    if not isinstance(split, str) or not split:
      raise ValueError(f"data_config.{field} must be a tfds split string such as 'train', 'test' or "
                       f"'train[:1000]'; got {split!r}")


def _process_layout(batch_size, process_index, process_count, *, what):
  """Validates the batch/process arguments and returns (local_batch_size, process_index, process_count)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only the defaults need JAX)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not _is_int(process_count) or process_count < 1:
    raise ValueError(f"process_count must be a positive int; got {process_count!r}")
  if not _is_int(process_index) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be an int in [0, {process_count}); got {process_index!r}")
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(f"{what} batch_size must be a positive int; got {batch_size!r}")
  if batch_size % process_count:
    raise ValueError(f"{what} batch_size={batch_size} is not divisible by process_count={process_count}; "
                     f"accepted: a multiple of {process_count}")
  return batch_size // process_count, int(process_index), int(process_count)


def _data_dir(data_config, data_dir):
  """The explicit argument wins over the config field; None falls back to $TFDS_DATA_DIR, then ~."""
  return sources.resolve_data_dir(data_dir if data_dir is not None else data_config["data_dir"])


def get_image_shape(data_config, *, data_dir=None):
  """Returns the (H, W, C) of the images the pipelines yield for `data_config`."""
  validate_data_config(data_config)
  _, shape, _ = sources.get_dataset_info(data_config["name"], data_dir=_data_dir(data_config, data_dir))
  return _output_shape(data_config, shape)


def model_image_shape(data_config, *, data_dir=None):
  """(H, W, C) of the images the model sees, without the dataset on disk when its name is known.

  For the datasets the configs name (`sources.KNOWN_IMAGE_SHAPES`) the shape follows from the name and
  `image_size`, so sampling and bits/dim set-up never need a prepared dataset; any other name is looked up
  in its prepared tfds metadata (as `get_image_shape`).
  """
  validate_data_config(data_config)
  name = data_config["name"]
  if name in sources.KNOWN_IMAGE_SHAPES:
    return _output_shape(data_config, sources.KNOWN_IMAGE_SHAPES[name])
  return get_image_shape(data_config, data_dir=data_dir)


def _output_shape(data_config, stored_shape):
  height, width, channels = stored_shape
  size = data_config["image_size"]
  if size is not None:
    return (size, size, channels)
  if height is None or width is None:
    raise errors.DataError(f"dataset {data_config['name']!r} stores images of varying size {stored_shape}; "
                     "set data_config.image_size (e.g. 256) to center-crop and resize them")
  return (height, width, channels)


def _element_transforms(data_config, stored_shape):
  """The per-example transforms shared by training and evaluation (before flips and batching)."""
  ops = [transforms.SelectImageAndLabel()]
  out_shape = _output_shape(data_config, stored_shape)
  if tuple(stored_shape) != out_shape:
    ops.append(transforms.CenterCropResize(data_config["image_size"]))
  return ops


def _to_iterator(dataset, num_workers):
  """Turns a MapDataset into a checkpointable DatasetIterator, optionally fed by worker processes."""
  # Elements here are whole batches: grain's default read-ahead (500 elements on 16 threads) would hold
  # gigabytes of 256x256 batches, so keep a few batches in flight instead.
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES))
  if num_workers > 0:
    # Worker processes import absl-using modules that read flags; outside `app.run` they must be marked
    # parsed or the first flag access in a worker raises UnparsedFlagAccessError.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(iter_dataset)


def create_train_iterator(data_config, *, batch_size, seed, process_index=None, process_count=None,
                          data_dir=None):
  """Returns this process's infinite training stream as a checkpointable `grain.DatasetIterator`.

  Each element is {'image': float32 [b, H, W, C] in [-1, 1] (x / 127.5 - 1), 'label': int32 [b]} with
  b = batch_size // process_count. The split `data_config.train_split` is shuffled with `seed` (a new
  permutation each epoch), repeated forever, optionally flipped left-right and cut into full batches
  (a batch may span an epoch boundary, so no example is dropped). See the module docstring for how the
  global batch is laid out over processes.

  Args:
    data_config: the `config.data` ConfigDict (see `get_default_data_config`).
    batch_size: the global batch size over all processes.
    seed: int seed of the shuffle and the flips.
    process_index: this process's index; defaults to `jax.process_index()`.
    process_count: the number of processes; defaults to `jax.process_count()`.
    data_dir: overrides `data_config.data_dir`.
  """
  validate_data_config(data_config)
  if not _is_int(seed) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32); got {seed!r}")
  local_batch, process_index, process_count = _process_layout(batch_size, process_index, process_count,
                                                              what="train")
  data_dir = _data_dir(data_config, data_dir)
  name = data_config["name"]
  source = sources.get_data_source(name, split=data_config["train_split"], data_dir=data_dir)
  if len(source) < batch_size:
    raise errors.DataError(f"train batch_size={batch_size} exceeds the {len(source)} examples of "
                     f"{name!r} split {data_config['train_split']!r}")
  _, stored_shape, _ = sources.get_dataset_info(name, data_dir=data_dir)

  dataset = grain.MapDataset.source(source).seed(int(seed))
  dataset = dataset.shuffle().repeat(None)  # shuffle first: each epoch gets its own permutation
  for op in _element_transforms(data_config, stored_shape):
    dataset = dataset.map(op)
  if data_config["random_flip"]:
    dataset = dataset.random_map(transforms.RandomHorizontalFlip())
  dataset = dataset.batch(local_batch, drop_remainder=True).map(transforms.ScaleBatch())
  dataset = dataset[process_index::process_count]
  return _to_iterator(dataset, data_config["num_workers"])


class _MaskedPaddedSource(grain.sources.RandomAccessDataSource):
  """`source` followed by padding up to `length`; every record gains `mask` (True for real examples).

  Padding records have an all-zero image of the shape of record 0 and label 0; the crop/resize that
  follows brings them to the output shape like any other record.
  """

  def __init__(self, source, length):
    self._source = source
    self._num_real = len(source)
    self._length = length

  def __len__(self):
    return self._length

  def __getitem__(self, index):
    if not 0 <= index < self._length:
      raise IndexError(f"index {index} out of range [0, {self._length})")
    if index < self._num_real:
      return {**self._source[index], "mask": True}
    first = self._source[0]
    return {"image": np.zeros_like(np.asarray(first["image"])), "label": 0, "mask": False}


class _KeepMask(grain.transforms.Map):
  """Runs a per-example transform on an element and carries its `mask` through."""

  def __init__(self, op):
    self.op = op

  def map(self, element):
    return {**self.op.map(element), "mask": bool(element["mask"])}


def create_eval_iterator(data_config, *, split, batch_size, process_index=None, process_count=None,
                         data_dir=None):
  """Returns this process's part of one ordered pass over `split` as a finite `grain.DatasetIterator`.

  Each element is {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b], 'mask': bool [b]} with
  b = batch_size // process_count. The split is read in its stored order, never flipped, and padded at
  the end to a whole number of global batches; padded rows have mask False, so the masks of all
  processes together sum to exactly len(split) and each example appears once with mask True.

  Args:
    data_config: the `config.data` ConfigDict (`num_workers`, `image_size`, `name`, `data_dir` are used).
    split: a tfds split string, usually `data_config.eval_split`.
    batch_size: the global batch size over all processes.
    process_index: this process's index; defaults to `jax.process_index()`.
    process_count: the number of processes; defaults to `jax.process_count()`.
    data_dir: overrides `data_config.data_dir`.
  """
  validate_data_config(data_config)
  local_batch, process_index, process_count = _process_layout(batch_size, process_index, process_count,
                                                              what="eval")
  data_dir = _data_dir(data_config, data_dir)
  name = data_config["name"]
  source = sources.get_data_source(name, split=split, data_dir=data_dir)
  if len(source) == 0:
    raise errors.DataError(f"split {split!r} of dataset {name!r} is empty")
  _, stored_shape, _ = sources.get_dataset_info(name, data_dir=data_dir)

  padded = math.ceil(len(source) / batch_size) * batch_size
  dataset = grain.MapDataset.source(_MaskedPaddedSource(source, padded))
  for op in _element_transforms(data_config, stored_shape):
    dataset = dataset.map(_KeepMask(op))
  dataset = dataset.batch(local_batch, drop_remainder=True).map(transforms.ScaleBatch())
  dataset = dataset[process_index::process_count]
  return _to_iterator(dataset, data_config["num_workers"])


def load_split_images(data_config, *, split, max_examples=0, data_dir=None):
  """The uint8 images [N, H, W, C] of a split as the pipelines see them (cropped/resized, not scaled or
  flipped): the reference set for FID statistics. `max_examples` > 0 keeps the first that many."""
  validate_data_config(data_config)
  data_dir = _data_dir(data_config, data_dir)
  source = sources.get_data_source(data_config["name"], split=split, data_dir=data_dir)
  _, stored_shape, _ = sources.get_dataset_info(data_config["name"], data_dir=data_dir)
  ops = _element_transforms(data_config, stored_shape)
  n = len(source) if not max_examples else min(max_examples, len(source))
  out = np.empty((n,) + _output_shape(data_config, stored_shape), np.uint8)
  for i in tqdm.trange(n, desc=f"{data_config['name']}/{split} images", leave=False, disable=n < 5000):
    element = source[i]
    for op in ops:
      element = op.map(element)
    out[i] = element["image"]
  return out
