"""tfds side: the mnist5k builder prepares offline and reads back the asset's pixels; generic tfds names
read prepared ArrayRecord data; missing datasets fail with the preparation command."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ddpm_jax import data
from ddpm_jax.data import mnist5k
from ddpm_jax.data import sources

_TINY_SHAPE = (10, 14, 3)
_TINY_COUNT = 12


def _tiny_images():
  return np.random.default_rng(123).integers(0, 256, (_TINY_COUNT,) + _TINY_SHAPE, dtype=np.uint8)


class DdpmJaxTinyUnlabelled(tfds.core.GeneratorBasedBuilder):
  """A non-square, unlabelled RGB dataset standing in for CelebA-HQ/LSUN (which cannot be built here)."""

  VERSION = tfds.core.Version("0.1.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(
            {"image": tfds.features.Tensor(shape=_TINY_SHAPE, dtype=np.uint8)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, image in enumerate(_tiny_images()):
      yield i, {"image": image}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds"))
  DdpmJaxTinyUnlabelled(data_dir=root, file_format="array_record").download_and_prepare()
  return root


def test_mnist5k_prepares_and_matches_npz(data_dir):
  asset = mnist5k.load_bundled_mnist()
  for split in ("train", "test"):
    source = data.get_data_source("mnist5k", split=split, data_dir=data_dir)
    rows = asset[f"{split}_indices"]
    assert len(source) == len(rows)
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([r["image"] for r in records])
    labels = np.array([r["label"] for r in records])
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, asset["images"][rows])
    np.testing.assert_array_equal(labels, asset["labels"][rows])
  assert os.path.isdir(os.path.join(data_dir, "mnist5k", "1.0.0"))


def test_dataset_info(data_dir):
  assert data.get_dataset_info("mnist5k", data_dir=data_dir) == (
      {"train": 4500, "test": 500}, (28, 28, 1), 10)
  assert data.get_dataset_info("ddpm_jax_tiny_unlabelled", data_dir=data_dir) == (
      {"train": _TINY_COUNT}, _TINY_SHAPE, None)


def test_no_tensorflow_needed(tmp_path):
  # A fresh interpreter prepares and reads mnist5k; TensorFlow must never be imported.
  code = ("import sys; from ddpm_jax import data; "
          f"s = data.get_data_source('mnist5k', split='test', data_dir={str(tmp_path)!r}); s[0]; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=120)


def test_generic_dataset_center_crop_and_flip(data_dir):
  # A 10x14 dataset at image_size 10 is the centred 10x10 slice, columns 2..11, with no resampling.
  config = data.get_default_data_config()
  config.update(name="ddpm_jax_tiny_unlabelled", image_size=10, random_flip=True)
  crops = _tiny_images()[:, :, 2:12]
  it = data.create_train_iterator(config, batch_size=4, seed=0, process_index=0, process_count=1,
                                  data_dir=data_dir)
  flips = 0
  for _ in range(6):  # two epochs
    batch = next(it)
    assert batch["image"].shape == (4, 10, 10, 3)
    np.testing.assert_array_equal(batch["label"], 0)  # unlabelled datasets get label 0
    for image in batch["image"]:
      plain = [np.allclose(image, c / 127.5 - 1, atol=1e-6) for c in crops]
      mirrored = [np.allclose(image, np.flip(c, axis=1) / 127.5 - 1, atol=1e-6) for c in crops]
      assert sum(plain) + sum(mirrored) == 1
      flips += sum(mirrored)
  assert 0 < flips < 24
  assert data.get_image_shape(config, data_dir=data_dir) == (10, 10, 3)


def test_missing_dataset_error_names_dataset_dir_and_command(tmp_path):
  empty = str(tmp_path / "empty")
  with pytest.raises(data.DatasetNotPreparedError) as info:
    data.get_dataset_info("cifar10", data_dir=empty)
  message = str(info.value)
  assert "'cifar10'" in message and empty in message
  assert "tfds build cifar10 --file_format=array_record --data_dir=" + empty in message
  assert sources.PREPARE_COMMAND.startswith("tfds build {name} --file_format=array_record")

  config = data.get_default_data_config()
  config.name = "celeb_a_hq/256"
  with pytest.raises(data.DatasetNotPreparedError, match="celeb_a_hq/256"):
    data.create_train_iterator(config, batch_size=2, seed=0, process_index=0, process_count=1,
                               data_dir=empty)
  with pytest.raises(data.DatasetNotPreparedError, match="not a registered tfds dataset"):
    data.get_dataset_info("no_such_dataset_ddpm", data_dir=empty)


def test_unknown_split_and_env_data_dir(data_dir, monkeypatch):
  with pytest.raises(ValueError, match=r"split 'validation'.*\['test', 'train'\]"):
    data.get_data_source("mnist5k", split="validation", data_dir=data_dir)
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  assert sources.resolve_data_dir(None) == os.path.abspath(data_dir)
  assert len(data.get_data_source("mnist5k", split="test[:10]")) == 10
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert sources.resolve_data_dir(None) == os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
