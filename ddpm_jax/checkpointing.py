"""Checkpoints of the train state, data iterator position and run metadata (the only module using Orbax).

One step directory per saved step, `<directory>/<step>/`, holds three Orbax items:
  state     the train-state pytree (`ocp.args.StandardSave`; jax.Array, numpy and typed PRNG-key leaves),
  data      the grain `DatasetIterator` position (`grain.checkpoint.CheckpointSave`, one JSON per process),
  metadata  a small JSON dict: the caller's entries (e.g. the config) plus step, wall time and version.

Saves are asynchronous by default: `save` returns once the arrays are copied off the device and the iterator
state is written, the array files are written in a background thread, and a step becomes visible only when
Orbax has committed it, so a crash mid-save never leaves a half-written step that `restore` would pick.
Retention keeps the last `max_to_keep` steps plus every step that is a multiple of `keep_every_n_steps`.

Restores are checked: the saved tree's metadata is compared with the template before any array is read, so
a checkpoint written by a different model gives a `CheckpointError` listing the mismatching leaves instead of
a deep Orbax traceback, and nothing is ever restarted from scratch or deleted behind the caller's back.

Checkpoints are verified. `save` records, in the metadata item, a CRC-32 of every array's bytes (taken from a
host copy before the background write starts; with several processes the replicated copies are identical and
the primary host's record is the one written) and refuses a state holding NaN or ±inf. `restore` and
`restore_fields` recompute the CRC of every array they read and check that every float is finite, so random
bytes, a truncated file or a NaN in a checkpoint raise `CheckpointCorruptError` naming the step and the array
instead of restoring silently. The caller decides what to do with a bad step: the train loop falls back to
an earlier one and `set_aside` moves the bad one out of the directory (never deleting it).

Background writes are watched: `check_background_save()` (cheap, called every train step) raises
`CheckpointWriteError` as soon as an asynchronous write has failed (disk full, permissions), with the last
committed step named, instead of waiting for the next save to trip over it.

Preemption (SIGTERM before a TPU VM is taken): `install_preemption_handler` / `reached_preemption(step)`,
with the signal handling in `ddpm_jax.preemption`. Pytree paths, template expectations and the CRC-32 records
are in `ddpm_jax.checkpoint_tree`.
"""

import json
import numbers
import os
import time

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

import ddpm_jax
from ddpm_jax import checkpoint_tree
from ddpm_jax import errors
from ddpm_jax import preemption

STATE_ITEM = "state"
DATA_ITEM = "data"
METADATA_ITEM = "metadata"
INTEGRITY_KEY = "integrity"  # in the metadata item: {"algorithm": "crc32", "arrays": {path: [crc, dtype, shape]}}
_RESERVED_METADATA_KEYS = ("step", "wall_time", "ddpm_jax_version", INTEGRITY_KEY)
SET_ASIDE_SUFFIX = "_set_aside"  # <directory>_set_aside/<step>-<why>-<time>/: steps moved out by set_aside


class CheckpointError(errors.DdpmJaxError, RuntimeError):
  """A checkpoint exists but cannot be used: corrupt, incomplete, or written for a different state."""


class CheckpointCorruptError(CheckpointError):
  """A step's files cannot be read, are incomplete, or fail verification (checksum, non-finite values)."""


class CheckpointStepError(errors.BadInputError, CheckpointError):
  """The requested step is not in the directory (bad input: exit status 2 on the command line)."""


class CheckpointWriteError(CheckpointError):
  """Writing a checkpoint failed (disk full, permissions, ...); earlier committed steps are intact."""


class NonFiniteStateError(CheckpointError):
  """`save` was given a state holding NaN or ±inf; nothing was written."""


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resolve_directory(directory):
  """Returns `directory` as an absolute `epath.Path`; URLs such as gs://bucket/run are kept as they are.

  Orbax writes from background threads that do not share the caller's idea of the working directory, so a
  relative path is made absolute here, once, against the current directory.
  """
  if isinstance(directory, epath.Path):
    directory = os.fspath(directory)
  if not isinstance(directory, (str, os.PathLike)):
    raise TypeError(f"checkpoint directory must be a str or os.PathLike; got {type(directory).__name__} "
                    f"{directory!r}")
  text = os.fspath(directory)
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"checkpoint directory must be a non-empty path such as '/tmp/run/checkpoints' or "
                     f"'gs://bucket/run/checkpoints'; got {directory!r}")
  if "://" in text:
    return epath.Path(text)
  path = os.path.abspath(os.path.expanduser(text))
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"checkpoint directory {path!r} exists and is not a directory; pass a new or "
                             "existing directory path")
  return epath.Path(path)


def _error_text(error):
  """'ErrorType: message' without the long TensorStore spec dump that Orbax's I/O errors carry."""
  text = str(error)
  for marker in (" [tensorstore_spec=", " See full TensorStore details"):
    text = text.split(marker)[0]
  return f"{type(error).__name__}: {text[:2000]}"


class CheckpointManager:
  """Saves and restores (train state, data iterator, JSON metadata) at integer steps under one directory.

  Args:
    directory: where the step directories go; relative paths are made absolute, gs:// URLs kept.
    save_interval_steps: `save(step, ...)` writes when step % save_interval_steps == 0 (or `force=True`).
    max_to_keep: the number of most recent steps kept.
    keep_every_n_steps: if set, steps that are multiples of it are also kept forever (an archive beside
      the last `max_to_keep`). A step is deleted only when it is neither among the last `max_to_keep` nor
      such a multiple.
    async_save: write the arrays in a background thread (`save` returns after the device-to-host copy).
  """

  def __init__(self, directory, *, save_interval_steps, max_to_keep, keep_every_n_steps=None,
               async_save=True):
    if not _is_int(save_interval_steps) or save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be a positive int; got {save_interval_steps!r}")
    if not _is_int(max_to_keep) or max_to_keep < 1:
      raise ValueError(f"max_to_keep must be a positive int (the number of latest steps kept); got "
                       f"{max_to_keep!r}")
    if keep_every_n_steps is not None and (not _is_int(keep_every_n_steps) or keep_every_n_steps < 1):
      raise ValueError(f"keep_every_n_steps must be None or a positive int; got {keep_every_n_steps!r}")
    if not isinstance(async_save, bool):
      raise ValueError(f"async_save must be True or False; got {async_save!r}")
    self._directory = resolve_directory(directory)
    self._save_interval_steps = int(save_interval_steps)
    policies = [ocp.checkpoint_managers.LatestN(n=int(max_to_keep))]
    if keep_every_n_steps is not None:
      # exact_interval=True keeps exactly the steps with step % n == 0, not "n steps after the last kept".
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=int(keep_every_n_steps),
                                                          exact_interval=True))
    options = ocp.CheckpointManagerOptions(
        # Whether to save is decided in `save` (every save below is forced), so Orbax's own default policy,
        # which also saves the first step it sees whatever its number, never applies.
        save_interval_steps=self._save_interval_steps,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=options,
        item_handlers={
            STATE_ITEM: ocp.StandardCheckpointHandler(),
            DATA_ITEM: grain.checkpoint.CheckpointHandler(),
            METADATA_ITEM: ocp.JsonCheckpointHandler(),
        },
    )
    self._preemption = preemption.PreemptionWatch()
    self._closed = False
    self._in_flight = None  # the step an asynchronous save is writing, until its end is checked
    self._write_failed = False  # a background write failed (and was reported)
    self._warned_unverified = False

  @property
  def directory(self):
    """The absolute checkpoint directory (an `epath.Path`)."""
    return self._directory

  def _step_dir(self, step):
    return self._directory / str(step)

  # Steps.

  def all_steps(self):
    """The saved steps, ascending: the committed ones in the directory plus one still being written by an
    asynchronous save of this manager (`wait_until_finished` commits it; a crash before then discards it)."""
    return sorted(int(s) for s in self._manager.all_steps())

  def latest_step(self):
    """The largest saved step (see `all_steps`), or None when the directory holds no checkpoint."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def has_checkpoint(self):
    """Whether `restore()` has a step to restore (so the caller can decide to start fresh)."""
    return self.latest_step() is not None

  def _resolve_step(self, step):
    """The step to read: the latest by default; raises FileNotFoundError/CheckpointError if there is none."""
    self._manager.reload()  # another process (an earlier run) may have written since this object was made
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise errors.NoCheckpointError(f"no checkpoint in {self._directory}: the directory holds no "
                                       "committed step directory; check has_checkpoint() first to start a "
                                       "fresh run")
      return steps[-1]
    if not _is_int(step) or step < 0:
      raise ValueError(f"step must be None (the latest) or an int >= 0; got {step!r}")
    if step not in steps:
      raise CheckpointStepError(f"no checkpoint for step {step} in {self._directory}; available steps: "
                                f"{steps if steps else 'none'}")
    return int(step)

  # Saving.

  def save(self, step, state, *, data_iterator=None, metadata=None, force=False):
    """Saves `state` (and the iterator position and `metadata`) at `step` if it is a save step.

    Args:
      step: the int training step the state is at (after `step` updates).
      state: a pytree of jax.Array / numpy / Python-scalar leaves; typed PRNG keys are supported.
      data_iterator: a grain `DatasetIterator` whose position to save (read now, before returning).
      metadata: a JSON-serializable dict stored beside the state (e.g. {'config': config.to_dict()}); the
        keys 'step', 'wall_time', 'ddpm_jax_version' and 'integrity' (the arrays' CRC-32s) are added and
        therefore reserved.
      force: save even if `step` is not a multiple of `save_interval_steps` (preemption, end of training).

    Returns:
      True if a save was started; False if `step` is not a save step, or if it is the latest saved step
      already (e.g. a preemption save right after a periodic save of the same step).

    Raises:
      CheckpointError: `step` is older than the latest saved step (the directory holds a later run).
      NonFiniteStateError: a float array of `state` holds NaN or ±inf (nothing is written).
      CheckpointWriteError: the previous asynchronous save, or this one's synchronous part, failed.
    """
    self._check_open()
    if not _is_int(step) or step < 0:
      raise ValueError(f"step must be an int >= 0; got {step!r}")
    step = int(step)
    if not isinstance(force, bool):
      raise ValueError(f"force must be True or False; got {force!r}")
    if metadata is not None and not isinstance(metadata, dict):
      raise TypeError(f"metadata must be None or a dict; got {type(metadata).__name__}")
    if not force and step % self._save_interval_steps:
      return False
    self._finish_background_save()  # report a failed earlier write as that step's failure, not this one's
    latest = self.latest_step()
    if latest is not None and step <= latest:
      if step == latest:
        logging.info("Step %d is already saved in %s; not saving it again.", step, self._directory)
        return False
      raise CheckpointError(
          f"cannot save step {step} in {self._directory}: it already holds the later step {latest} "
          f"(steps {self.all_steps()}), so the new checkpoint would not be the one resumed from; save to a "
          "new directory, continue from the latest step, or move the later step directories away (this "
          "manager never deletes them)")
    record = dict(metadata or {})
    clashes = sorted(set(record) & set(_RESERVED_METADATA_KEYS))
    if clashes:
      raise ValueError(f"metadata keys {clashes} are reserved (filled in by save); accepted: any other "
                       "JSON-serializable keys")
    record.update(step=step, wall_time=time.time(), ddpm_jax_version=ddpm_jax.__version__)
    try:
      json.dumps(record)
    except (TypeError, ValueError) as e:
      raise TypeError(f"metadata must be JSON-serializable (dicts, lists, str, numbers, bool, None); "
                      f"{e}") from e
    arrays, nonfinite = checkpoint_tree.integrity_records(state)
    if nonfinite:
      raise NonFiniteStateError(
          f"refusing to save step {step} in {self._directory}: {len(nonfinite)} array(s) hold NaN or ±inf "
          f"({', '.join(nonfinite[:3])}{', ...' if len(nonfinite) > 3 else ''})")
    record[INTEGRITY_KEY] = {"algorithm": "crc32", "arrays": arrays}
    items = {STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(record)}
    if data_iterator is not None:
      if not isinstance(data_iterator, grain.DatasetIterator):
        raise TypeError(f"data_iterator must be a grain.DatasetIterator (from ddpm_jax.data); got "
                        f"{type(data_iterator).__name__}")
      items[DATA_ITEM] = grain.checkpoint.CheckpointSave(item=data_iterator)
    # force=True: the decision was made above; Orbax's own default policy would add an "initial save".
    try:
      started = bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))
    except Exception as e:  # pylint: disable=broad-except  (any failure to start writing is a write error)
      raise self._write_error(step, e) from e
    if started:
      self._in_flight = step
    return started

  def _write_error(self, step, error):
    self._write_failed = True
    self._in_flight = None
    committed = [s for s in self.all_steps() if s != step]
    last = (f"the last committed checkpoint is step {committed[-1]} (intact)" if committed
            else "no earlier checkpoint was committed")
    return CheckpointWriteError(f"writing checkpoint step {step} to {self._directory} failed: "
                                f"{_error_text(error).splitlines()[0]}; {last}")

  def _finish_background_save(self):
    """Waits for the asynchronous save in flight (if any); a failure becomes a CheckpointWriteError."""
    step, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if self._write_failed:  # reported once already; Orbax repeats it at every wait
        return
      raise self._write_error(step if step is not None else self.latest_step(), e) from e

  def check_background_save(self):
    """Raises CheckpointWriteError at once if the asynchronous write of the last save has failed; returns
    at once (without waiting) while it is still running. Cheap: the train loop calls it every step, so a
    full disk stops the run when it happens, not at the next save."""
    if self._in_flight is not None and not self._manager.is_saving_in_progress():
      self._finish_background_save()

  def wait_until_finished(self):
    """Blocks until every asynchronous save has been committed (a failed background write raises
    CheckpointWriteError)."""
    self._finish_background_save()

  def committed_steps(self):
    """The steps whose writes have finished (waits for a save in flight)."""
    self._finish_background_save()
    return self.all_steps()

  # Restoring.

  def _earlier_steps_hint(self):
    return (f"Available steps: {self.all_steps()}; pass step= to restore an earlier one (--step N on the "
            "command line).")

  def _check_items(self, step, *, want_data):
    step_dir = self._step_dir(step)
    required = [STATE_ITEM, METADATA_ITEM] + ([DATA_ITEM] if want_data else [])
    missing = [name for name in required if not (step_dir / name).is_dir()]
    if missing:
      hint = ""
      error = CheckpointCorruptError
      if missing == [DATA_ITEM]:
        error = CheckpointError  # not damage: the caller saved this step without an iterator
        hint = (" (this step was saved without data_iterator: restore with data_iterator=None and "
                "start the data stream afresh, or pick a step saved with one)")
      raise error(f"checkpoint {step_dir} is incomplete: item(s) {missing} missing{hint}; "
                  f"available steps: {self.all_steps()}")

  def _check_template(self, step, state_template, *, partial=False):
    """Raises CheckpointError listing every leaf where the saved tree and the template disagree (with
    `partial`, the saved leaves the template does not name are not compared)."""
    step_dir = self._step_dir(step)
    try:
      saved = self._manager.metadata(step).item_metadata[STATE_ITEM]
      saved = getattr(saved, "tree", saved)
      if saved is None:
        raise ValueError("no tree metadata")
    except Exception as e:  # pylint: disable=broad-except  (any reader failure means the files are bad)
      raise CheckpointCorruptError(
          f"checkpoint {step_dir} is corrupt: cannot read the metadata of item {STATE_ITEM!r} "
          f"({_error_text(e)})\n{self._earlier_steps_hint()}") from e
    saved_leaves = {checkpoint_tree.path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
    template_leaves = {checkpoint_tree.path_str(p): leaf
                       for p, leaf in jax.tree_util.tree_flatten_with_path(state_template)[0]}
    problems = []
    for path in sorted(set(template_leaves) - set(saved_leaves)):
      shape, dtype = checkpoint_tree.expected_leaf(template_leaves[path])
      problems.append(f"  {path}: missing in the checkpoint (expected {checkpoint_tree.describe(shape, dtype)})")
    for path in sorted(set(saved_leaves) - set(template_leaves)) if not partial else ():
      leaf = saved_leaves[path]
      described = checkpoint_tree.describe(getattr(leaf, "shape", None), getattr(leaf, "dtype", None))
      problems.append(f"  {path}: in the checkpoint ({described}) but not in the template")
    for path in sorted(set(saved_leaves) & set(template_leaves)):
      shape, dtype = checkpoint_tree.expected_leaf(template_leaves[path])
      if shape is None:
        continue
      leaf = saved_leaves[path]
      saved_shape = tuple(getattr(leaf, "shape", ()) or ())
      saved_dtype = getattr(leaf, "dtype", None)
      if saved_shape != shape or (dtype is not None and saved_dtype is not None and
                                  np.dtype(saved_dtype) != dtype):
        problems.append(f"  {path}: saved {checkpoint_tree.describe(saved_shape, saved_dtype)}, expected "
                        f"{checkpoint_tree.describe(shape, dtype if dtype is not None else saved_dtype)}")
    if problems:
      raise CheckpointError(
          f"checkpoint {step_dir} does not match the restore template ({len(problems)} leaves differ):\n"
          + "\n".join(problems) + "\nAccepted: a template with the saved tree structure, shapes and dtypes "
          "(the model/optimizer config the checkpoint was written with; see metadata(step))")

  def _verify(self, step, tree, integrity):
    """Raises CheckpointCorruptError unless every array of the restored `tree` has the CRC-32 recorded at
    save time (when there is a record) and every float array is finite."""
    recorded = (integrity or {}).get("arrays", {}) if isinstance(integrity, dict) else {}
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    problems = []
    for (key_path, _), value in zip(flat, checkpoint_tree.host_values([leaf for _, leaf in flat])):
      if value is None:
        continue
      path = checkpoint_tree.path_str(key_path)
      record = recorded.get(path)
      if record is not None:
        crc = checkpoint_tree.crc32(value)
        if [crc, value.dtype.name, list(value.shape)] != [record[0], record[1], list(record[2])]:
          problems.append(f"array {path} does not match the CRC-32 recorded when it was saved (saved "
                          f"{record[0]:08x} {record[1]}{list(record[2])}, read {crc:08x} "
                          f"{value.dtype.name}{list(value.shape)})")
          continue
      if checkpoint_tree.is_float(value.dtype) and not np.isfinite(value).all():
        problems.append(f"array {path} holds NaN or ±inf")
    if problems:
      more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
      raise CheckpointCorruptError(f"checkpoint {self._step_dir(step)} is corrupt: {problems[0]}{more}\n"
                                   f"{self._earlier_steps_hint()}")
    if integrity is None and not self._warned_unverified:
      self._warned_unverified = True
      logging.warning("Checkpoint %s has no CRC-32 record (saved by an older ddpm_jax): its arrays were "
                      "checked for NaN/inf only.", self._step_dir(step))

  def _integrity(self, step):
    """The step's recorded CRC-32s (None for a checkpoint saved before they were recorded)."""
    return self._read_metadata(step).get(INTEGRITY_KEY)

  def restore(self, state_template, *, data_iterator=None, step=None):
    """Returns the state saved at `step` (default: the latest), laid out like `state_template`, verified.

    Args:
      state_template: a pytree like the saved state: jax.Array leaves (their sharding is used for the
        restored arrays), `jax.ShapeDtypeStruct`s (with `sharding=`), numpy arrays or Python scalars.
      data_iterator: a fresh grain `DatasetIterator` of the same pipeline; its position is set in place.
      step: the step to restore; None for the latest.

    Raises:
      FileNotFoundError (errors.NoCheckpointError): the directory holds no checkpoint (and step is None).
      CheckpointStepError: `step` does not exist.
      CheckpointCorruptError: the checkpoint is unreadable, incomplete, or fails verification (an array's
        CRC-32 differs from the one recorded at save time, or a float array holds NaN/inf).
      CheckpointError: it does not match the template (every differing leaf is listed).
    """
    self._check_open()
    self._finish_background_save()  # an in-flight save of this run must be committed before reading
    step = self._resolve_step(step)
    if data_iterator is not None and not isinstance(data_iterator, grain.DatasetIterator):
      raise TypeError(f"data_iterator must be a grain.DatasetIterator (from ddpm_jax.data); got "
                      f"{type(data_iterator).__name__}")
    self._check_items(step, want_data=data_iterator is not None)
    self._check_template(step, state_template)
    integrity = self._integrity(step)
    items = {STATE_ITEM: ocp.args.StandardRestore(jax.tree.map(checkpoint_tree.abstract_leaf, state_template))}
    if data_iterator is not None:
      items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(item=data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  (the structure matched, so the files are bad)
      raise CheckpointCorruptError(
          f"checkpoint {self._step_dir(step)} is corrupt: restoring it failed ({_error_text(e)})\n"
          f"{self._earlier_steps_hint()}") from e
    self._verify(step, restored[STATE_ITEM], integrity)
    return restored[STATE_ITEM]

  def restore_fields(self, template, *, step=None):
    """Reads only the named top-level fields of the saved state, e.g. {'step': ..., 'ema_params': ...}.

    For inference: the optimizer state, the other parameter copy and the data iterator are not read, so the
    caller needs neither the optimizer nor the dataset to build the template. `template` is a dict from
    field names to pytrees of `jax.ShapeDtypeStruct`s (with `sharding=`), jax.Arrays or numpy arrays. The
    fields read are verified as in `restore`.

    Raises: as `restore`; a field the checkpoint lacks, or leaves that differ, are listed.
    """
    self._check_open()
    self._finish_background_save()
    step = self._resolve_step(step)
    if not isinstance(template, dict) or not template:
      raise TypeError(f"template must be a non-empty dict of state fields; got {type(template).__name__}")
    self._check_items(step, want_data=False)
    self._check_template(step, template, partial=True)
    integrity = self._integrity(step)
    abstract = jax.tree.map(checkpoint_tree.abstract_leaf, template)
    try:
      with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(
            self._step_dir(step) / STATE_ITEM,
            args=ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(
                abstract), partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except  (the structure matched, so the files are bad)
      raise CheckpointCorruptError(
          f"checkpoint {self._step_dir(step)} is corrupt: restoring {sorted(template)} failed "
          f"({_error_text(e)})\n{self._earlier_steps_hint()}") from e
    self._verify(step, restored, integrity)
    return restored

  def metadata(self, step=None):
    """The JSON metadata dict saved with `step` (default: the latest): the caller's entries plus 'step',
    'wall_time' (seconds since the epoch), 'ddpm_jax_version' and 'integrity'."""
    self._check_open()
    self._finish_background_save()
    return self._read_metadata(self._resolve_step(step))

  def _read_metadata(self, step):
    step_dir = self._step_dir(step)
    if not (step_dir / METADATA_ITEM).is_dir():
      raise CheckpointCorruptError(f"checkpoint {step_dir} is incomplete: item {METADATA_ITEM!r} missing; "
                                   f"available steps: {self.all_steps()}")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{METADATA_ITEM: ocp.args.JsonRestore()}))
      record = restored[METADATA_ITEM]
      if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"checkpoint {step_dir} is corrupt: reading item {METADATA_ITEM!r} "
                                   f"failed with {_error_text(e)}") from e
    return record

  def set_aside(self, step, why):
    """Moves step directory `step` out of the directory, to `<directory>_set_aside/<step>-<why>-<time>/`
    (with a WHY.txt), so that later steps can be saved after an earlier one is resumed. Nothing is deleted.
    With several processes the primary host moves it; all wait for each other. Returns the new path."""
    self._check_open()
    self._finish_background_save()
    if not _is_int(step) or int(step) not in self.all_steps():
      raise CheckpointStepError(f"no checkpoint for step {step} in {self._directory}; available steps: "
                                f"{self.all_steps()}")
    tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(why))[:40] or "set_aside"
    destination = (self._directory.parent / (self._directory.name + SET_ASIDE_SUFFIX) /
                   f"{int(step)}-{tag}-{time.strftime('%Y%m%dT%H%M%S')}")
    if jax.process_index() == 0:
      destination.parent.mkdir(parents=True, exist_ok=True)
      self._step_dir(step).rename(destination)
      (destination / "WHY.txt").write_text(f"{why}\n")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"ddpm_jax_set_aside_{int(step)}")
    self._manager.reload()
    return destination

  # Preemption.

  def install_preemption_handler(self, *, sigint=False):
    """SIGTERM (and SIGINT if `sigint`) makes `reached_preemption` return True (`preemption.PreemptionWatch`);
    `close()` puts the previous handlers back. Must be called from the main thread."""
    self._check_open()
    self._preemption.install(sigint=sigint)

  def reached_preemption(self, step):
    """True once a preemption signal arrived: the caller should save `step` with force=True and exit (with
    several processes, True on every process at the same step; then call it at every step on all)."""
    return self._preemption.reached(step)

  # Lifetime.

  def _check_open(self):
    if self._closed:
      raise RuntimeError(f"CheckpointManager for {self._directory} is closed")

  def close(self):
    """Waits for pending saves, releases Orbax's resources and restores the previous signal handlers."""
    if self._closed:
      return
    try:
      self._finish_background_save()
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._write_failed:  # else: the failure was raised already; Orbax repeats it here
          raise
    finally:
      self._preemption.restore_handlers()
      self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
