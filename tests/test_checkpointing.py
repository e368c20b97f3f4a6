"""Orbax checkpoints: exact round trips, iterator resume, retention, sharding, errors and SIGTERM handling."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time

import flax
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ddpm_jax
from ddpm_jax import checkpoint_tree
from ddpm_jax import checkpointing
from ddpm_jax import data
from ddpm_jax.data import mnist5k

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@flax.struct.dataclass
class _TrainState:
  step: jax.Array
  params: dict
  opt_state: tuple
  rng: jax.Array


def _state(step=3, width=3):
  return _TrainState(
      step=jnp.asarray(step, jnp.int32),
      params={"dense": {"kernel": jnp.arange(2 * width, dtype=jnp.float32).reshape(2, width) / 7.0,
                        "bias": jnp.asarray([-1.5, 2.25], jnp.float32)}},
      opt_state=(jnp.asarray([1e-8, 3.0], jnp.float32), np.asarray([7, -9], np.int64)),
      rng=jax.random.split(jax.random.key(42), 2)[1],
  )


def _zeros_like(state):
  """A template with the same tree, shapes, dtypes and shardings, but other values (and another key)."""
  def zero(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.key(0)
    return np.zeros_like(leaf) if isinstance(leaf, np.ndarray) else jnp.zeros_like(leaf)
  return jax.tree.map(zero, state)


def _assert_states_equal(restored, expected):
  assert type(restored) is type(expected)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
  assert jax.random.key_impl(restored.rng) == jax.random.key_impl(expected.rng)
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(expected.rng))
  plain = lambda s: s.replace(rng=jax.random.key_data(s.rng))
  for got, want in zip(jax.tree.leaves(plain(restored)), jax.tree.leaves(plain(expected))):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _manager(directory, **overrides):
  kwargs = dict(save_interval_steps=1, max_to_keep=3, keep_every_n_steps=None, async_save=True)
  kwargs.update(overrides)
  return checkpointing.CheckpointManager(directory, **kwargs)


def _files_under(path):
  return sorted(os.path.relpath(os.path.join(root, f), path)
                for root, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds"))
  mnist5k.Mnist5k(data_dir=root).download_and_prepare()
  return root


def test_async_round_trip_is_exact_and_committed(tmp_path):
  state = _state()
  with _manager(tmp_path / "ckpt") as manager:
    assert not manager.has_checkpoint() and manager.latest_step() is None
    before = time.time()
    assert manager.save(3, state, metadata={"config": {"lr": 2e-4, "name": "mnist"}})
    manager.wait_until_finished()
    after = time.time()
    step_dir = os.path.join(str(manager.directory), "3")
    assert {"metadata", "state", "commit_success.txt"} <= set(os.listdir(step_dir))
    assert manager.all_steps() == [3] and manager.latest_step() == 3 and manager.has_checkpoint()
    restored = manager.restore(_zeros_like(state))
    _assert_states_equal(restored, state)
    meta = manager.metadata()
  assert meta["config"] == {"lr": 2e-4, "name": "mnist"}
  assert meta["step"] == 3 and meta["ddpm_jax_version"] == ddpm_jax.__version__
  assert before <= meta["wall_time"] <= after
  # A new manager on the same directory (a restarted job) sees the committed step.
  with _manager(tmp_path / "ckpt", async_save=False) as reopened:
    assert reopened.latest_step() == 3
    _assert_states_equal(reopened.restore(_zeros_like(state), step=3), state)


def test_optax_state_round_trip(tmp_path):
  """optax states are nested NamedTuples (and EmptyState nodes): their field names must match on restore."""
  params = {"Dense_0": {"kernel": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "bias": jnp.zeros(3)}}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  opt_state = tx.init(params)
  for _ in range(2):
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  state = {"params": params, "opt_state": opt_state}
  with _manager(tmp_path / "ckpt", async_save=False) as manager:
    manager.save(2, state)
    restored = manager.restore(jax.tree.map(jnp.zeros_like, state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert int(restored["opt_state"][1][0].count) == 2
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)


def test_restore_uses_the_template_shardings(tmp_path):
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  assert mesh.size == 8
  state = {"x": jnp.arange(32, dtype=jnp.float32).reshape(8, 4), "y": jnp.arange(3, dtype=jnp.int32)}
  with _manager(tmp_path / "ckpt", async_save=False) as manager:
    manager.save(1, state)
    row_sharded = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    template = {"x": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=row_sharded),
                "y": jax.device_put(jnp.zeros(3, jnp.int32), replicated)}  # a concrete array's sharding
    restored = manager.restore(template)
  assert restored["x"].sharding == row_sharded and restored["y"].sharding == replicated
  assert {s.data.shape for s in restored["x"].addressable_shards} == {(1, 4)}
  np.testing.assert_array_equal(restored["x"], state["x"])
  np.testing.assert_array_equal(restored["y"], state["y"])


def test_data_iterator_resumes_exactly(tmp_path, data_dir):
  config = data.get_default_data_config()

  def make_iterator():
    return data.create_train_iterator(config, batch_size=8, seed=3, process_index=0, process_count=1,
                                      data_dir=data_dir)

  iterator = make_iterator()
  for _ in range(2):
    next(iterator)
  with _manager(tmp_path / "ckpt") as manager:
    manager.save(2, _state(step=2), data_iterator=iterator)
    # Advance before the asynchronous save has finished: the saved position must be the one at save time.
    expected = [next(iterator) for _ in range(3)]
    manager.wait_until_finished()
    fresh = make_iterator()
    manager.restore(_zeros_like(_state()), data_iterator=fresh)
  for want, got in zip(expected, [next(fresh) for _ in range(3)]):
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # Batches 3..5 are not batch 1 again: the stream was really resumed, not restarted.
  assert not np.array_equal(expected[0]["image"], next(make_iterator())["image"])


def test_retention_keeps_last_k_and_every_m(tmp_path):
  # Kept = the last 2 saved steps plus the multiples of 4, worked by hand step by step:
  #   after 5: {4,5}; after 6: {5,6} + {4}; after 7: {6,7} + {4}; after 8: {7,8} + {4,8};
  #   after 9: {8,9} + {4,8} = {4,8,9}; a restarted manager then saving 10: {9,10} + {4,8}.
  expected_after = {5: [4, 5], 6: [4, 5, 6], 7: [4, 6, 7], 8: [4, 7, 8], 9: [4, 8, 9]}
  state = {"w": jnp.ones(2)}
  with _manager(tmp_path / "ckpt", max_to_keep=2, keep_every_n_steps=4) as manager:
    for step in range(1, 10):
      assert manager.save(step, state)
      manager.wait_until_finished()
      if step in expected_after:
        assert manager.all_steps() == expected_after[step], step
  assert sorted(int(name) for name in os.listdir(tmp_path / "ckpt") if name.isdigit()) == [4, 8, 9]
  with _manager(tmp_path / "ckpt", max_to_keep=2, keep_every_n_steps=4) as manager:
    manager.save(10, state)
    manager.wait_until_finished()
    assert manager.all_steps() == [4, 8, 9, 10]


def test_save_interval_force_and_repeated_steps(tmp_path):
  state = {"w": jnp.ones(2)}
  with _manager(tmp_path / "ckpt", save_interval_steps=5, async_save=False) as manager:
    assert [manager.save(step, state) for step in range(1, 11)] == [s % 5 == 0 for s in range(1, 11)]
    assert manager.save(12, state, force=True)  # e.g. a preemption save between intervals
    assert not manager.save(12, state, force=True)  # the latest step again: already saved, kept as is
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"cannot save step 7 .* holds the later step 12 \(steps \[5, 10, 12\]\)"):
      manager.save(7, state, force=True)
    with pytest.raises(ValueError, match=r"metadata keys \['step'\] are reserved"):
      manager.save(15, state, metadata={"step": 1})
    with pytest.raises(TypeError, match=r"metadata must be JSON-serializable"):
      manager.save(15, state, metadata={"config": object()})
    assert manager.all_steps() == [5, 10, 12]


def test_no_checkpoint_and_missing_step_errors(tmp_path):
  directory = tmp_path / "ckpt"
  with _manager(directory, async_save=False) as manager:
    assert not manager.has_checkpoint()
    with pytest.raises(FileNotFoundError, match=rf"no checkpoint in {directory}"):
      manager.restore(_state())
    manager.save(2, _state(step=2))
    manager.save(4, _state(step=4))
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"no checkpoint for step 3 in .*; available steps: \[2, 4\]"):
      manager.restore(_state(), step=3)
    _assert_states_equal(manager.restore(_zeros_like(_state()), step=2), _state(step=2))


def test_incompatible_template_lists_every_differing_leaf(tmp_path):
  with _manager(tmp_path / "ckpt", async_save=False) as manager:
    manager.save(1, _state(width=3))
    files = _files_under(tmp_path / "ckpt")
    template = _state(width=4)  # kernel (2, 3) -> (2, 4)
    template = template.replace(
        params={"dense": {"kernel": template.params["dense"]["kernel"],
                          "bias": template.params["dense"]["bias"].astype(jnp.bfloat16),
                          "scale": jnp.ones(5)}},  # an extra leaf the checkpoint lacks
        opt_state=template.opt_state[:1])  # a saved leaf the template lacks
    with pytest.raises(checkpointing.CheckpointError) as info:
      manager.restore(template)
  message = str(info.value)
  step_dir = os.path.join(str(tmp_path / "ckpt"), "1")
  assert f"checkpoint {step_dir} does not match the restore template (4 leaves differ)" in message
  assert "params/dense/kernel: saved float32[2, 3], expected float32[2, 4]" in message
  assert "params/dense/bias: saved float32[2], expected bfloat16[2]" in message
  assert "params/dense/scale: missing in the checkpoint (expected float32[5])" in message
  assert "opt_state/1: in the checkpoint (int64[2]) but not in the template" in message
  assert _files_under(tmp_path / "ckpt") == files  # nothing deleted or rewritten


def test_typed_key_template_of_another_impl_is_incompatible(tmp_path):
  with _manager(tmp_path / "ckpt", async_save=False) as manager:
    manager.save(1, {"rng": jax.random.key(1)})  # threefry: uint32[2] on disk
    with pytest.raises(checkpointing.CheckpointError, match=r"rng: saved uint32\[2\], expected uint32\[4\]"):
      manager.restore({"rng": jax.random.key(1, impl="rbg")})


def _saved_step_dir(tmp_path, *, with_data=False, data_dir=None):
  """Saves steps 1 and 2 of a state with a 64x64 leaf (large enough for its own data file)."""
  directory = tmp_path / "ckpt"
  with _manager(directory, async_save=False) as manager:
    manager.save(1, _big_state(1))
    iterator = None
    if with_data:
      iterator = data.create_train_iterator(data.get_default_data_config(), batch_size=8, seed=0,
                                            process_index=0, process_count=1, data_dir=data_dir)
    manager.save(2, _big_state(2), data_iterator=iterator)
  return directory, directory / "2"


def _big_state(step):
  return {"step": jnp.asarray(step, jnp.int32),
          "w": jnp.asarray(np.random.RandomState(step).randn(64, 64), jnp.float32)}


def _big_template():
  return {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((64, 64), jnp.float32)}


def _state_files(step_dir):
  return [os.path.join(root, f) for root, _, fs in os.walk(step_dir / "state") for f in fs]


def _assert_step_1_still_restores(manager):
  restored = manager.restore(_big_template(), step=1)
  np.testing.assert_array_equal(restored["w"], _big_state(1)["w"])


def test_garbage_in_the_array_data_gives_a_checkpoint_error(tmp_path):
  directory, step_dir = _saved_step_dir(tmp_path)
  # The largest file holds the 64x64 array's chunk; overwrite its middle, keeping its length.
  path = max(_state_files(step_dir), key=os.path.getsize)
  size = os.path.getsize(path)
  assert size > 64 * 64 * 4 / 2
  with open(path, "r+b") as f:
    f.seek(size // 4)
    f.write(b"\xab" * (size // 2))
  files = _files_under(directory)
  with _manager(directory) as manager:
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"checkpoint {step_dir} is corrupt: restoring it failed \((.|\n)*\)\n"
                             r"Available steps: \[1, 2\]; pass step= to restore an earlier one"):
      manager.restore(_big_template())
    _assert_step_1_still_restores(manager)
  assert _files_under(directory) == files  # nothing deleted or rewritten


def test_truncated_array_files_give_a_checkpoint_error(tmp_path):
  directory, step_dir = _saved_step_dir(tmp_path)
  for path in _state_files(step_dir):
    if os.path.basename(os.path.dirname(path)) == "d":  # the OCDBT array and index files
      os.truncate(path, os.path.getsize(path) // 2)
  with _manager(directory) as manager:
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"checkpoint {step_dir} is corrupt: cannot read the metadata of item 'state' "
                             r"\((.|\n)*\)\nAvailable steps: \[1, 2\]"):
      manager.restore(_big_template())
    _assert_step_1_still_restores(manager)
    assert manager.all_steps() == [1, 2]


def test_garbage_tree_metadata_gives_a_checkpoint_error(tmp_path):
  directory, step_dir = _saved_step_dir(tmp_path)
  (step_dir / "state" / "_METADATA").write_text("{not json")
  with _manager(directory) as manager:
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"checkpoint {step_dir} is corrupt: cannot read the metadata of item 'state'"):
      manager.restore(_big_template())
    (step_dir / "metadata" / "metadata").write_text("\x00garbage")
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"checkpoint {step_dir} is corrupt: reading item 'metadata' failed"):
      manager.metadata(2)
    assert manager.metadata(1)["step"] == 1


def test_missing_items_give_a_checkpoint_error(tmp_path, data_dir):
  directory, step_dir = _saved_step_dir(tmp_path, with_data=True, data_dir=data_dir)
  fresh = data.create_train_iterator(data.get_default_data_config(), batch_size=8, seed=0, process_index=0,
                                     process_count=1, data_dir=data_dir)
  with _manager(directory) as manager:
    # Step 1 was saved without an iterator: asking for one is an error, not a silently fresh stream.
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"1 is incomplete: item\(s\) \['data'\] missing \(this step was saved without"):
      manager.restore(_big_template(), data_iterator=fresh, step=1)
  for name in os.listdir(step_dir / "state"):
    path = step_dir / "state" / name
    if path.is_file():
      path.unlink()
    else:
      for root, dirs, fs in os.walk(path, topdown=False):
        for f in fs:
          os.unlink(os.path.join(root, f))
        for d in dirs:
          os.rmdir(os.path.join(root, d))
      path.rmdir()
  (step_dir / "state").rmdir()
  with _manager(directory) as manager:
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"checkpoint {step_dir} is incomplete: item\(s\) \['state'\] missing; "
                             r"available steps: \[1, 2\]"):
      manager.restore(_big_template(), data_iterator=fresh)
    assert manager.all_steps() == [1, 2]
    _assert_step_1_still_restores(manager)


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with _manager(os.path.join("runs", "ckpt")) as manager:  # async: written from a background thread
    assert str(manager.directory) == os.path.join(str(tmp_path), "runs", "ckpt")
    manager.save(5, _state(step=5))
    manager.wait_until_finished()
  monkeypatch.chdir(os.path.dirname(str(tmp_path)))  # a later cwd must not matter
  with _manager(tmp_path / "runs" / "ckpt") as manager:
    _assert_states_equal(manager.restore(_zeros_like(_state())), _state(step=5))


def test_bad_directory_and_arguments(tmp_path):
  a_file = tmp_path / "not_a_dir"
  a_file.write_text("x")
  with pytest.raises(NotADirectoryError, match=rf"checkpoint directory '{a_file}' exists and is not a"):
    _manager(a_file)
  assert a_file.read_text() == "x"
  with pytest.raises(ValueError, match=r"save_interval_steps must be a positive int; got 0"):
    _manager(tmp_path / "c", save_interval_steps=0)
  with pytest.raises(ValueError, match=r"keep_every_n_steps must be None or a positive int; got -4"):
    _manager(tmp_path / "c", keep_every_n_steps=-4)
  assert checkpointing.resolve_directory("gs://bucket/run/ckpt").as_uri() == "gs://bucket/run/ckpt"


_SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from ddpm_jax import checkpointing

    def deliver(manager, signum, step):
      os.kill(os.getpid(), signum)
      # Python runs the handler at its next check of pending signals: poll a bounded number of bytecodes.
      for _ in range(10**6):
        if manager.reached_preemption(step):
          return True
      return False

    directory = sys.argv[1]
    # The handlers this process inherited (a shell's background job starts with SIGINT ignored, say).
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    manager = checkpointing.CheckpointManager(directory, save_interval_steps=100, max_to_keep=2)
    manager.install_preemption_handler()
    assert not manager.reached_preemption(6)
    assert deliver(manager, signal.SIGTERM, 7), "SIGTERM did not set the preemption flag"
    assert manager.save(7, {"w": jnp.arange(3.0)}, force=True)  # the train loop's preemption save
    manager.close()
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM], "previous SIGTERM handler not restored"

    manager = checkpointing.CheckpointManager(directory, save_interval_steps=100, max_to_keep=2)
    manager.install_preemption_handler(sigint=True)
    assert deliver(manager, signal.SIGINT, 8), "SIGINT did not set the preemption flag"
    manager.close()
    assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT], "previous SIGINT handler not restored"
    print("survived", flush=True)
""")


def test_sigterm_sets_the_flag_and_does_not_kill(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=_REPO_ROOT)
  result = subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT, str(tmp_path / "ckpt")], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("survived")
  with _manager(tmp_path / "ckpt") as manager:
    assert manager.all_steps() == [7]
    np.testing.assert_array_equal(manager.restore({"w": jnp.zeros(3)})["w"], np.arange(3.0))


# Verification, write failures and setting steps aside.


def test_readable_but_wrong_arrays_fail_their_recorded_crc32(tmp_path):
  directory, step_dir = _saved_step_dir(tmp_path)
  # Step 1's arrays under step 2's name: every file is intact, so only the CRC-32 record can tell.
  shutil.rmtree(step_dir / "state")
  shutil.copytree(directory / "1" / "state", step_dir / "state")
  with _manager(directory) as manager:
    assert set(manager.metadata(2)["integrity"]["arrays"]) == {"step", "w"}
    with pytest.raises(checkpointing.CheckpointCorruptError,
                       match=rf"checkpoint {step_dir} is corrupt: array (step|w) does not match the CRC-32 "
                             r"recorded when it was saved \(saved [0-9a-f]{8} .*, read [0-9a-f]{8} .*\) \(and 1 "
                             r"more\)\nAvailable steps: \[1, 2\]"):
      manager.restore(_big_template())
    with pytest.raises(checkpointing.CheckpointCorruptError, match=r"array w does not match the CRC-32"):
      manager.restore_fields({"w": jax.ShapeDtypeStruct((64, 64), jnp.float32)})
    _assert_step_1_still_restores(manager)


def test_non_finite_states_are_not_saved_and_not_restored(tmp_path, monkeypatch):
  nan_state = {"w": jnp.asarray([1.0, np.nan, 3.0]), "n": jnp.arange(3)}
  with _manager(tmp_path / "ckpt") as manager:
    with pytest.raises(checkpointing.NonFiniteStateError, match=r"refusing to save step 1 .*: 1 array\(s\) "
                                                                 r"hold NaN or ±inf \(w\)"):
      manager.save(1, nan_state)
    assert manager.all_steps() == []
  # A NaN that reached the disk anyway (written without the check) is refused on restore.
  real = checkpoint_tree.integrity_records
  monkeypatch.setattr(checkpoint_tree, "integrity_records", lambda tree: (real(tree)[0], []))
  with _manager(tmp_path / "ckpt") as manager:
    manager.save(1, nan_state)
  monkeypatch.undo()
  with _manager(tmp_path / "ckpt") as manager:
    with pytest.raises(checkpointing.CheckpointCorruptError, match=r"/1 is corrupt: array w holds NaN or ±inf"):
      manager.restore({"w": jnp.zeros(3), "n": jnp.zeros(3, jnp.int32)})


def test_a_failed_background_write_is_reported_once_naming_the_last_good_step(tmp_path, monkeypatch):
  from etils import epath  # pylint: disable=g-import-not-at-top
  path_class = type(epath.Path("/"))
  write_text = path_class.write_text

  def disk_full(self, *args, **kwargs):  # Orbax writes the metadata item in its background thread
    if "/2.orbax-checkpoint-tmp/metadata" in str(self):
      raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(path_class, "write_text", disk_full)
  manager = _manager(tmp_path / "ckpt")
  manager.save(1, _big_state(1))
  assert manager.save(2, _big_state(2))  # returns at once; the write fails in the background
  deadline = time.monotonic() + 60
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=r"writing checkpoint step 2 to .*ckpt failed: OSError: \[Errno 28\] No space left on "
                           r"device: .*; the last committed checkpoint is step 1 \(intact\)"):
    while time.monotonic() < deadline:  # the train loop's per-step poll
      manager.check_background_save()
      time.sleep(0.05)
  manager.check_background_save()  # reported once
  manager.close()  # does not raise it again
  monkeypatch.undo()
  with _manager(tmp_path / "ckpt") as manager:
    assert manager.all_steps() == [1]
    _assert_step_1_still_restores(manager)


def test_set_aside_moves_a_step_out_so_that_it_can_be_written_again(tmp_path):
  directory, step_dir = _saved_step_dir(tmp_path)
  with _manager(directory) as manager:
    moved = manager.set_aside(2, "corrupt")
    assert manager.all_steps() == [1] and not step_dir.exists()
    assert moved.parent == tmp_path / "ckpt_set_aside" and moved.name.startswith("2-corrupt-")
    assert (moved / "WHY.txt").read_text() == "corrupt\n" and (moved / "state").is_dir()
    with pytest.raises(checkpointing.CheckpointStepError, match=r"no checkpoint for step 7"):
      manager.set_aside(7, "x")
    assert manager.save(2, _big_state(3))
    manager.wait_until_finished()
    np.testing.assert_array_equal(manager.restore(_big_template())["w"], _big_state(3)["w"])
