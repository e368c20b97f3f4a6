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

Preemption (Cloud TPU sends SIGTERM with a short grace period): `install_preemption_handler` makes SIGTERM
only set a flag; the train loop polls `reached_preemption(step)`, saves with `force=True` and exits. On
several processes the decision must agree across hosts, so it comes from JAX's preemption sync service
(`jax.experimental.multihost_utils.reached_preemption_sync_point`), which handles SIGTERM itself.
"""

import json
import numbers
import os
import signal
import threading
import time

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

import ddpm_jax

STATE_ITEM = "state"
DATA_ITEM = "data"
METADATA_ITEM = "metadata"
_RESERVED_METADATA_KEYS = ("step", "wall_time", "ddpm_jax_version")


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used: corrupt, incomplete, or written for a different state."""


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


def _path_str(key_path):
  """'params/Dense_0/kernel' for a pytree key path, the same for dicts, dataclass fields and sequences."""
  parts = []
  for entry in key_path:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      parts.append(entry.name)
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
      parts.append(str(entry.key))
    else:
      parts.append(str(entry))
  return "/".join(parts) or "<root>"


def _describe(shape, dtype):
  return f"{np.dtype(dtype).name if dtype is not None else '?'}{list(shape) if shape is not None else '[?]'}"


def _expected_leaf(leaf):
  """(shape, dtype) the saved metadata must show for a template leaf; dtype None = any (Python scalars).

  Orbax stores a typed PRNG key array as its raw key data (uint32, trailing key dimension), so a typed-key
  template leaf expects the shape and dtype of `jax.random.key_data` of it.
  """
  if isinstance(leaf, (bool, numbers.Number)):
    return (), None
  shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
  if shape is None or dtype is None:
    return None, None
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    raw = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
    return tuple(raw.shape), np.dtype(raw.dtype)
  return tuple(shape), np.dtype(dtype)


def _abstract_leaf(leaf):
  """The restore target of one template leaf: jax.Arrays become ShapeDtypeStructs that keep their sharding."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf  # ShapeDtypeStruct (kept with its sharding), numpy arrays and Python scalars restore as such


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
    self._preempted_by = None  # the signal number once SIGTERM/SIGINT arrived (set by the handler only)
    self._previous_handlers = {}
    self._multiprocess_preemption = False
    self._closed = False

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
        raise FileNotFoundError(f"no checkpoint in {self._directory}: the directory holds no committed "
                                "step directory; check has_checkpoint() first to start a fresh run")
      return steps[-1]
    if not _is_int(step) or step < 0:
      raise ValueError(f"step must be None (the latest) or an int >= 0; got {step!r}")
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self._directory}; available steps: "
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
        keys 'step', 'wall_time' and 'ddpm_jax_version' are added and therefore reserved.
      force: save even if `step` is not a multiple of `save_interval_steps` (preemption, end of training).

    Returns:
      True if a save was started; False if `step` is not a save step, or if it is the latest saved step
      already (e.g. a preemption save right after a periodic save of the same step).

    Raises:
      CheckpointError: `step` is older than the latest saved step (the directory holds a later run).
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
    items = {STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(record)}
    if data_iterator is not None:
      if not isinstance(data_iterator, grain.DatasetIterator):
        raise TypeError(f"data_iterator must be a grain.DatasetIterator (from ddpm_jax.data); got "
                        f"{type(data_iterator).__name__}")
      items[DATA_ITEM] = grain.checkpoint.CheckpointSave(item=data_iterator)
    # force=True: the decision was made above; Orbax's own default policy would add an "initial save".
    return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))

  def wait_until_finished(self):
    """Blocks until every asynchronous save has been committed (re-raising an error of the background
    write)."""
    self._manager.wait_until_finished()

  # Restoring.

  def _earlier_steps_hint(self):
    return f"Available steps: {self.all_steps()}; pass step= to restore an earlier one."

  def _check_items(self, step, *, want_data):
    step_dir = self._step_dir(step)
    required = [STATE_ITEM] + ([DATA_ITEM] if want_data else [])
    missing = [name for name in required if not (step_dir / name).is_dir()]
    if missing:
      hint = ""
      if missing == [DATA_ITEM]:
        hint = (" (this step was saved without data_iterator: restore with data_iterator=None and "
                "start the data stream afresh, or pick a step saved with one)")
      raise CheckpointError(f"checkpoint {step_dir} is incomplete: item(s) {missing} missing{hint}; "
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
      raise CheckpointError(
          f"checkpoint {step_dir} is corrupt: cannot read the metadata of item {STATE_ITEM!r} "
          f"({_error_text(e)})\n{self._earlier_steps_hint()}") from e
    saved_leaves = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
    template_leaves = {_path_str(p): leaf
                       for p, leaf in jax.tree_util.tree_flatten_with_path(state_template)[0]}
    problems = []
    for path in sorted(set(template_leaves) - set(saved_leaves)):
      shape, dtype = _expected_leaf(template_leaves[path])
      problems.append(f"  {path}: missing in the checkpoint (expected {_describe(shape, dtype)})")
    for path in sorted(set(saved_leaves) - set(template_leaves)) if not partial else ():
      leaf = saved_leaves[path]
      described = _describe(getattr(leaf, "shape", None), getattr(leaf, "dtype", None))
      problems.append(f"  {path}: in the checkpoint ({described}) but not in the template")
    for path in sorted(set(saved_leaves) & set(template_leaves)):
      shape, dtype = _expected_leaf(template_leaves[path])
      if shape is None:
        continue
      leaf = saved_leaves[path]
      saved_shape = tuple(getattr(leaf, "shape", ()) or ())
      saved_dtype = getattr(leaf, "dtype", None)
      if saved_shape != shape or (dtype is not None and saved_dtype is not None and
                                  np.dtype(saved_dtype) != dtype):
        problems.append(f"  {path}: saved {_describe(saved_shape, saved_dtype)}, expected "
                        f"{_describe(shape, dtype if dtype is not None else saved_dtype)}")
    if problems:
      raise CheckpointError(
          f"checkpoint {step_dir} does not match the restore template ({len(problems)} leaves differ):\n"
          + "\n".join(problems) + "\nAccepted: a template with the saved tree structure, shapes and dtypes "
          "(the model/optimizer config the checkpoint was written with; see metadata(step))")

  def restore(self, state_template, *, data_iterator=None, step=None):
    """Returns the state saved at `step` (default: the latest), laid out like `state_template`.

    Args:
      state_template: a pytree like the saved state: jax.Array leaves (their sharding is used for the
        restored arrays), `jax.ShapeDtypeStruct`s (with `sharding=`), numpy arrays or Python scalars.
      data_iterator: a fresh grain `DatasetIterator` of the same pipeline; its position is set in place.
      step: the step to restore; None for the latest.

    Raises:
      FileNotFoundError: the directory holds no checkpoint (and step is None).
      CheckpointError: `step` does not exist, the checkpoint is corrupt or incomplete, or it does not match
        the template (every differing leaf is listed).
    """
    self._check_open()
    self._manager.wait_until_finished()  # an in-flight save of this run must be committed before reading
    step = self._resolve_step(step)
    if data_iterator is not None and not isinstance(data_iterator, grain.DatasetIterator):
      raise TypeError(f"data_iterator must be a grain.DatasetIterator (from ddpm_jax.data); got "
                      f"{type(data_iterator).__name__}")
    self._check_items(step, want_data=data_iterator is not None)
    self._check_template(step, state_template)
    items = {STATE_ITEM: ocp.args.StandardRestore(jax.tree.map(_abstract_leaf, state_template))}
    if data_iterator is not None:
      items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(item=data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  (the structure matched, so the files are bad)
      raise CheckpointError(
          f"checkpoint {self._step_dir(step)} is corrupt: restoring it failed ({_error_text(e)})\n"
          f"{self._earlier_steps_hint()}") from e
    return restored[STATE_ITEM]

  def restore_fields(self, template, *, step=None):
    """Reads only the named top-level fields of the saved state, e.g. {'step': ..., 'ema_params': ...}.

    For inference: the optimizer state, the other parameter copy and the data iterator are not read, so the
    caller needs neither the optimizer nor the dataset to build the template. `template` is a dict from
    field names to pytrees of `jax.ShapeDtypeStruct`s (with `sharding=`), jax.Arrays or numpy arrays.

    Raises: as `restore`; a field the checkpoint lacks, or leaves that differ, are listed.
    """
    self._check_open()
    self._manager.wait_until_finished()
    step = self._resolve_step(step)
    if not isinstance(template, dict) or not template:
      raise TypeError(f"template must be a non-empty dict of state fields; got {type(template).__name__}")
    self._check_items(step, want_data=False)
    self._check_template(step, template, partial=True)
    abstract = jax.tree.map(_abstract_leaf, template)
    try:
      with ocp.PyTreeCheckpointer() as reader:
        return reader.restore(
            self._step_dir(step) / STATE_ITEM,
            args=ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(
                abstract), partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except  (the structure matched, so the files are bad)
      raise CheckpointError(
          f"checkpoint {self._step_dir(step)} is corrupt: restoring {sorted(template)} failed "
          f"({_error_text(e)})\n{self._earlier_steps_hint()}") from e

  def metadata(self, step=None):
    """The JSON metadata dict saved with `step` (default: the latest): the caller's entries plus 'step',
    'wall_time' (seconds since the epoch) and 'ddpm_jax_version'."""
    self._check_open()
    self._manager.wait_until_finished()
    step = self._resolve_step(step)
    step_dir = self._step_dir(step)
    if not (step_dir / METADATA_ITEM).is_dir():
      raise CheckpointError(f"checkpoint {step_dir} is incomplete: item {METADATA_ITEM!r} missing; "
                            f"available steps: {self.all_steps()}")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{METADATA_ITEM: ocp.args.JsonRestore()}))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {step_dir} is corrupt: reading item {METADATA_ITEM!r} failed with "
                            f"{_error_text(e)}") from e
    return restored[METADATA_ITEM]

  # Preemption.

  def install_preemption_handler(self, *, sigint=False):
    """Arranges for SIGTERM (and SIGINT if `sigint`) to make `reached_preemption` return True.

    With one process the handler only records the signal (no I/O in a signal handler; the train loop does
    the save). With several processes JAX's distributed runtime already turns SIGTERM into a preemption
    notice that it synchronizes over hosts, so no Python handler is installed (it would replace JAX's) and
    `reached_preemption` asks JAX. Must be called from the main thread; `close()` puts the previous
    handlers back.
    """
    self._check_open()
    if jax.process_count() > 1:
      self._multiprocess_preemption = True
      if sigint:
        logging.warning("install_preemption_handler(sigint=True) is ignored with %d processes: only "
                        "SIGTERM reaches JAX's preemption sync service.", jax.process_count())
      return
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("install_preemption_handler must be called from the main thread (Python delivers "
                         "signals there only)")
    signums = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
    for signum in signums:
      if signum not in self._previous_handlers:
        self._previous_handlers[signum] = signal.getsignal(signum)
      signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    self._preempted_by = signum

  def reached_preemption(self, step):
    """True once a preemption signal arrived: the caller should save `step` with force=True and exit.

    With several processes this is JAX's `reached_preemption_sync_point(step)`, True on every process at
    the same step; it must then be called at every step by all processes.
    """
    if not _is_int(step) or step < 0:
      raise ValueError(f"step must be an int >= 0; got {step!r}")
    if self._multiprocess_preemption:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
      except RuntimeError as e:
        raise RuntimeError("JAX's preemption sync service is not running: call jax.distributed.initialize() "
                           "with jax_enable_preemption_service=True (the default) before training on "
                           f"several processes ({e})") from e
    return self._preempted_by is not None

  def _restore_signal_handlers(self):
    if not self._previous_handlers:
      return
    if threading.current_thread() is not threading.main_thread():
      logging.warning("CheckpointManager closed off the main thread: the previous signal handlers cannot "
                      "be restored.")
      return
    for signum, previous in self._previous_handlers.items():
      # None: the previous handler was not installed from Python; the default action is the best we can do.
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous_handlers = {}

  # Lifetime.

  def _check_open(self):
    if self._closed:
      raise RuntimeError(f"CheckpointManager for {self._directory} is closed")

  def close(self):
    """Waits for pending saves, releases Orbax's resources and restores the previous signal handlers."""
    if self._closed:
      return
    try:
      self._manager.wait_until_finished()
      self._manager.close()
    finally:
      self._restore_signal_handlers()
      self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
