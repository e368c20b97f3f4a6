"""Datasets as tfds ArrayRecord sources, batched by grain; no TensorFlow at run time.

- `mnist5k`: 5,000 real MNIST digits bundled with the package (prepared into the data dir on first use).
- any other tfds name (cifar10, celeb_a_hq/256, lsun/church_outdoor, ...): read from ArrayRecord files
  prepared once with `PREPARE_COMMAND` on a machine with TensorFlow.

The training code calls `create_train_iterator` / `create_eval_iterator`; the iterators are
`grain.DatasetIterator`s whose state Orbax stores with `grain.checkpoint.CheckpointSave` /
`grain.checkpoint.CheckpointRestore` (handler `grain.checkpoint.CheckpointHandler`).
"""

from ddpm_jax.data.mnist5k import load_bundled_mnist
from ddpm_jax.data.mnist5k import Mnist5k
from ddpm_jax.data.pipeline import create_eval_iterator
from ddpm_jax.data.pipeline import create_train_iterator
from ddpm_jax.data.pipeline import get_default_data_config
from ddpm_jax.data.pipeline import get_image_shape
from ddpm_jax.data.pipeline import load_split_images
from ddpm_jax.data.pipeline import validate_data_config
from ddpm_jax.data.sources import DatasetNotPreparedError
from ddpm_jax.data.sources import get_data_source
from ddpm_jax.data.sources import get_dataset_info
from ddpm_jax.data.sources import PREPARE_COMMAND
from ddpm_jax.data.sources import resolve_data_dir
from ddpm_jax.data.transforms import center_crop_and_resize
from ddpm_jax.data.transforms import CenterCropResize
from ddpm_jax.data.transforms import RandomHorizontalFlip

__all__ = [
    "CenterCropResize",
    "DatasetNotPreparedError",
    "Mnist5k",
    "PREPARE_COMMAND",
    "RandomHorizontalFlip",
    "center_crop_and_resize",
    "create_eval_iterator",
    "create_train_iterator",
    "get_data_source",
    "get_dataset_info",
    "get_default_data_config",
    "get_image_shape",
    "load_bundled_mnist",
    "load_split_images",
    "resolve_data_dir",
    "validate_data_config",
]
