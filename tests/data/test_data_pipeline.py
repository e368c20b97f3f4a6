"""grain pipelines on the bundled digits: scaling, shuffling, sharding over processes, checkpointing, eval."""

import json

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ddpm_jax import data
from ddpm_jax.data import mnist5k


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds"))
  mnist5k.Mnist5k(data_dir=root).download_and_prepare()
  return root


@pytest.fixture(scope="module")
def asset():
  return mnist5k.load_bundled_mnist()


def _config(**overrides):
  config = data.get_default_data_config()
  config.update(overrides)
  return config


def _train(data_dir, *, batch_size=16, seed=0, process_index=0, process_count=1, **overrides):
  return data.create_train_iterator(_config(**overrides), batch_size=batch_size, seed=seed,
                                    process_index=process_index, process_count=process_count,
                                    data_dir=data_dir)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _rows_of(images, asset, rows):
  """Row numbers of the asset whose pixels, scaled as x / 127.5 - 1, are `images` (uint8 round trip)."""
  lookup = {asset["images"][r].tobytes(): int(r) for r in rows}
  pixels = np.rint((images.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
  return [lookup.get(p.tobytes()) for p in pixels]


def test_train_batches_are_scaled_training_digits(data_dir, asset):
  batch = next(_train(data_dir))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, 28, 28, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
  rows = _rows_of(batch["image"], asset, asset["train_indices"])
  assert None not in rows  # unflipped digits of the train split only
  expected = asset["images"][rows].astype(np.float64) / 127.5 - 1.0
  np.testing.assert_allclose(batch["image"], expected, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], asset["labels"][rows])
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_one_epoch_is_a_permutation_and_epochs_differ(data_dir, asset):
  batches = _take(_train(data_dir, batch_size=500), 18)  # 4,500 train digits: 9 batches per epoch
  epochs = [np.concatenate([np.array(_rows_of(b["image"], asset, asset["train_indices"]))
                            for b in batches[e * 9:(e + 1) * 9]]) for e in range(2)]
  for rows in epochs:
    np.testing.assert_array_equal(np.sort(rows), asset["train_indices"])
  assert not np.array_equal(epochs[0], epochs[1])


def test_flip_only_when_enabled(data_dir, asset):
  images = asset["images"][asset["train_indices"]]
  plain = {im.tobytes() for im in images}
  mirrored = {np.flip(im, axis=1).tobytes() for im in images}
  for random_flip in (False, True):
    batch = next(_train(data_dir, batch_size=64, random_flip=random_flip))
    pixels = np.rint((batch["image"].astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
    is_plain = np.array([p.tobytes() in plain for p in pixels])
    is_mirrored = np.array([p.tobytes() in mirrored for p in pixels])
    assert np.all(is_plain | is_mirrored)
    if random_flip:
      assert 0 < np.sum(is_mirrored & ~is_plain) < 64
    else:
      assert np.all(is_plain)


def test_deterministic_given_seed(data_dir):
  first = _take(_train(data_dir, seed=7, random_flip=True), 3)
  again = _take(_train(data_dir, seed=7, random_flip=True), 3)
  other = _take(_train(data_dir, seed=8, random_flip=True), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_two_processes_split_the_global_batch(data_dir):
  whole = _take(_train(data_dir, batch_size=16, random_flip=True), 3)
  parts = [_take(_train(data_dir, batch_size=16, process_index=p, process_count=2, random_flip=True), 3)
           for p in range(2)]
  for step in range(3):
    local = [parts[p][step] for p in range(2)]
    assert local[0]["image"].shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in local]), whole[step]["image"])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in local]), whole[step]["label"])
    # Disjoint halves that together hold 16 distinct (possibly mirrored) digits.
    pixels = [{im.tobytes() for im in b["image"]} for b in local]
    assert not pixels[0] & pixels[1] and len(pixels[0] | pixels[1]) == 16


def test_batch_size_must_divide_over_processes(data_dir):
  with pytest.raises(ValueError, match=r"batch_size=10 is not divisible by process_count=3"):
    _train(data_dir, batch_size=10, process_index=0, process_count=3)
  with pytest.raises(ValueError, match=r"process_index must be an int in \[0, 2\); got 2"):
    _train(data_dir, batch_size=10, process_index=2, process_count=2)


def test_state_restore_continues_the_stream(data_dir):
  uninterrupted = _train(data_dir, random_flip=True)
  _take(uninterrupted, 3)
  state = json.loads(json.dumps(uninterrupted.get_state()))  # what a JSON checkpoint stores
  expected = _take(uninterrupted, 3)
  resumed = _train(data_dir, random_flip=True)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 3)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_orbax_checkpoint_of_iterator(data_dir, tmp_path):
  iterator = _train(data_dir)
  _take(iterator, 2)
  manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",))
  manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = _take(iterator, 2)
  fresh = _train(data_dir)
  restored = manager.restore(2, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(fresh))).data
  manager.close()
  for a, b in zip(expected, _take(restored, 2)):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_worker_processes_give_the_same_stream(data_dir):
  expected = _take(_train(data_dir), 2)
  iterator = _train(data_dir, num_workers=1)
  try:
    for a, b in zip(expected, _take(iterator, 2)):
      np.testing.assert_array_equal(a["image"], b["image"])
  finally:
    iterator.close()


def test_eval_covers_each_test_example_once(data_dir, asset):
  seen_rows, mask_total = [], 0
  for p in range(2):
    iterator = data.create_eval_iterator(_config(), split="test", batch_size=96, process_index=p,
                                         process_count=2, data_dir=data_dir)
    batches = list(iterator)
    assert len(batches) == 6  # ceil(500 / 96) global batches
    for batch in batches:
      assert batch["image"].shape == (48, 28, 28, 1) and batch["mask"].dtype == np.bool_
      mask_total += int(batch["mask"].sum())
      real = batch["image"][batch["mask"]]
      rows = _rows_of(real, asset, asset["test_indices"])
      np.testing.assert_array_equal(batch["label"][batch["mask"]], asset["labels"][rows])
      seen_rows.extend(rows)
      np.testing.assert_array_equal(batch["image"][~batch["mask"]], -1.0)  # zero padding
  assert mask_total == 500
  np.testing.assert_array_equal(np.sort(seen_rows), asset["test_indices"])


def test_eval_single_process_is_in_stored_order(data_dir, asset):
  batches = list(data.create_eval_iterator(_config(), split="test", batch_size=128, process_index=0,
                                           process_count=1, data_dir=data_dir))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  expected = asset["images"][asset["test_indices"]].astype(np.float64) / 127.5 - 1.0
  np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("field, value, pattern", [
    ("name", "", r"data_config.name .* got ''"),
    ("random_flip", "yes", r"data_config.random_flip must be True or False; got 'yes'"),
    ("image_size", 0, r"data_config.image_size must be None or a positive int; got 0"),
    ("num_workers", -1, r"data_config.num_workers must be an int >= 0 .* got -1"),
    ("train_split", 3, r"data_config.train_split must be a tfds split string .* got 3"),
    ("data_dir", 5, r"data_config.data_dir must be None or a path; got 5"),
])
def test_config_validation(field, value, pattern):
  # Built from a dict: a ConfigDict's own type checks would refuse some of these values on assignment,
  # but configs loaded from other sources (or with type_safe=False) can still carry them.
  config = ml_collections.ConfigDict({**data.get_default_data_config().to_dict(), field: value})
  with pytest.raises(ValueError, match=pattern):
    data.validate_data_config(config)


def test_config_missing_field_and_bad_seed(data_dir):
  config = data.get_default_data_config()
  del config["eval_split"]
  with pytest.raises(ValueError, match=r"missing field\(s\) \['eval_split'\]"):
    data.validate_data_config(config)
  with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\); got -1"):
    _train(data_dir, seed=-1)
