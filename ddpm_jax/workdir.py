"""The workdir belongs to one run at a time and to one experiment: checks made before anything is written.

  check_usable(workdir)   a folder (or a URL) that exists or can be made, and can be written to;
  WorkdirLock             `<workdir>/.lock` ({pid, host, started}): a second training process on the same
                          workdir refuses at once, naming the holder; a lock left by a process that is gone
                          (same host, dead pid) is taken over with a message. Multi-host runs take it once,
                          on process 0. On a URL workdir (gs://) the lock is best effort: object stores have
                          no atomic create-if-absent here, so two runs started within the same second may
                          both get it, and a holder on another host is never judged stale;
  fingerprint(config)     the fields that make checkpoints of one experiment (network, diffusion, data
                          shape); `fingerprint_diff` lists the fields two fingerprints disagree on.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
import uuid

from ddpm_jax import errors
from ddpm_jax import fileio

LOCK_FILE = ".lock"

# The fields a checkpoint is tied to: what the network is, what its output means and the chain it learns,
# and the shape of the data. Everything else (optimizer, batch, cadence, sampling, evaluation) may change
# between runs on one workdir. `model.remat` only trades memory for time, so it may change too.
_FINGERPRINT_SECTIONS = ("model", "diffusion")
_FINGERPRINT_DATA_FIELDS = ("name", "image_size")
_FINGERPRINT_SKIPPED = ("model.remat",)


def resolve(workdir) -> str:
  """The workdir as an absolute local path, or a URL (gs://bucket/run) without a trailing slash."""
  if workdir is None or not isinstance(workdir, (str, os.PathLike)) or not os.fspath(workdir).strip():
    raise errors.WorkdirError(f"--workdir={workdir!r} is invalid: expected a local folder (runs/mnist_mu) or a "
                              "gs://bucket/path URL.")
  return fileio.resolve(workdir)


def check_usable(workdir: str, *, create: bool) -> bool:
  """Raises WorkdirError unless `workdir` is (or can be made) a folder this process can write to.

  With `create`, a missing local workdir is created; without it nothing is created, but the nearest
  existing parent must be writable. URLs are not probed (their writes fail with their own error). Returns
  whether the workdir was created here (so that a refused run can remove it again: `remove_if_empty`).
  """
  if fileio.is_url(workdir):
    return False
  existed = os.path.isdir(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir {workdir} exists and is not a folder; give a new or existing "
                              "folder.")
  probe_dir = workdir
  if create:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise errors.WorkdirError(f"cannot create --workdir {workdir}: {e.strerror or e} (choose a folder you "
                                "can write to).") from None
  else:
    while not os.path.exists(probe_dir):
      probe_dir = os.path.dirname(probe_dir)
    if not os.path.isdir(probe_dir):
      raise errors.WorkdirError(f"cannot create --workdir {workdir}: {probe_dir} is a file.")
  probe = os.path.join(probe_dir, f".ddpm_jax_write_test.{os.getpid()}.{uuid.uuid4().hex[:8]}")
  try:
    with open(probe, "x", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    if create and not existed:
      remove_if_empty(workdir)
    raise errors.WorkdirError(f"cannot write into {'--workdir ' + workdir if probe_dir == workdir else probe_dir}"
                              f": {e.strerror or e} (choose a folder you can write to).") from None
  return create and not existed


def remove_if_empty(workdir: str) -> None:
  """Removes `workdir` if it holds no file (only empty folders, e.g. a refused first run's)."""
  if fileio.is_url(workdir) or not os.path.isdir(workdir):
    return
  for root, dirs, files in os.walk(workdir, topdown=False):
    if files:
      return
    for d in dirs:
      try:
        os.rmdir(os.path.join(root, d))
      except OSError:
        return
  try:
    os.rmdir(workdir)
  except OSError:
    pass


# ------------------------------------------------------------------------------------------------------------
# The lock.
# ------------------------------------------------------------------------------------------------------------


def _process_start_ticks(pid: int) -> int | None:
  """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  except OSError:
    return True
  return True


def describe_holder(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
          f"{holder.get('started', '?')}")


class WorkdirLock:
  """`<workdir>/.lock`: held by one process (process 0 of a multi-host run) while it trains in `workdir`.

  `acquire()` creates the file atomically (a complete file is linked into place, so a reader never sees a
  half-written one) or raises WorkdirLockedError naming the holder; `release()` (also run at exit) removes
  it if it is still this process's.
  """

  def __init__(self, workdir: str):
    self.workdir = fileio.resolve(workdir)
    self.path = fileio.join(self.workdir, LOCK_FILE)
    self.token = uuid.uuid4().hex
    self.held = False
    self.taken_over: dict | None = None  # the stale holder this lock replaced, if any
    self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                   "proc_start": _process_start_ticks(os.getpid()), "token": self.token,
                   "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:12]))}

  def _read(self) -> dict | None:
    try:
      holder = json.loads(fileio.read_text(self.path))
      return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _stale(self, holder: dict) -> bool:
    """A holder on this host whose process is gone (or whose pid now belongs to another process)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
      return False
    pid = holder["pid"]
    if not _alive(pid):
      return True
    recorded, now = holder.get("proc_start"), _process_start_ticks(pid)
    return recorded is not None and now is not None and recorded != now

  def _create_local(self) -> bool:
    tmp = f"{self.path}.{self.token}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.record, f)
    try:
      os.link(tmp, self.path)  # atomic, fails if the lock exists
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)

  def _create(self) -> bool:
    if fileio.is_url(self.path):
      if fileio.exists(self.path):
        return False
      fileio.write_text(self.path, json.dumps(self.record))
      return True
    return self._create_local()

  def acquire(self) -> "WorkdirLock":
    try:
      for _ in range(3):
        if self._create():
          self.held = True
          atexit.register(self.release)
          return self
        holder = self._read()
        if holder is None:  # released between our attempt and the read: try again
          continue
        if not holder:
          raise errors.WorkdirLockedError(
              f"--workdir {self.workdir} is locked by {self.path}, which cannot be read; if no other run "
              f"uses this workdir, delete {self.path} and run again.")
        if not self._stale(holder):
          raise errors.WorkdirLockedError(
              f"--workdir {self.workdir} is in use by another run ({describe_holder(holder)}"
              f"{': ' + holder['command'] if holder.get('command') else ''}); wait for it to finish or stop "
              f"it, or use another --workdir (if that run is gone, delete {self.path}).")
        self._take_over(holder)
    except OSError as e:
      raise errors.WorkdirError(f"cannot write the lock {self.path}: {e.strerror or e}") from None
    raise errors.WorkdirLockedError(f"--workdir {self.workdir}: could not take the lock {self.path} after "
                                    "three tries (another run is starting at the same time?)")

  def _take_over(self, holder: dict) -> None:
    """Moves a stale lock out of the way (one of several racing processes wins the rename)."""
    if fileio.is_url(self.path):
      self.taken_over = holder
      fileio.write_text(self.path, json.dumps(self.record))
      return
    try:
      os.rename(self.path, f"{self.path}.stale.{self.token}")
    except FileNotFoundError:
      return  # another process moved it first; the next _create decides
    os.remove(f"{self.path}.stale.{self.token}")
    self.taken_over = holder

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:
      holder = self._read()
      if holder and holder.get("token") == self.token:
        if fileio.is_url(self.path):
          import fsspec  # pylint: disable=g-import-not-at-top
          fs, p = fsspec.core.url_to_fs(self.path)
          fs.rm(p)
        else:
          os.remove(self.path)
    except OSError:
      pass
    try:
      atexit.unregister(self.release)
    except Exception:  # pylint: disable=broad-except
      pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc_info):
    self.release()


# ------------------------------------------------------------------------------------------------------------
# The experiment's fingerprint.
# ------------------------------------------------------------------------------------------------------------


def _plain(value):
  return json.loads(json.dumps(value, default=str))


def fingerprint(config) -> dict:
  """{'model.ch': 32, 'diffusion.mean_type': 'xprev', 'data.name': 'mnist5k', ...}: the config fields a
  checkpoint belongs to (from a ConfigDict or the plain dict a checkpoint's metadata holds)."""
  as_dict = config.to_dict() if hasattr(config, "to_dict") else config
  out = {}
  for section in _FINGERPRINT_SECTIONS:
    for key, value in sorted((as_dict.get(section) or {}).items()):
      if f"{section}.{key}" not in _FINGERPRINT_SKIPPED:
        out[f"{section}.{key}"] = _plain(value)
  for key in _FINGERPRINT_DATA_FIELDS:
    out[f"data.{key}"] = _plain((as_dict.get("data") or {}).get(key))
  return out


def fingerprint_diff(saved: dict, current: dict) -> list[str]:
  """'field: saved → current' for every field the two fingerprints disagree on. A field only one of them
  has (added or removed by another version of the code) is not compared."""
  lines = []
  for field in sorted(set(saved) | set(current)):
    if field not in saved or field not in current:
      continue  # a field added (or removed) by another version of the code; its default is implied
    if saved[field] != current[field]:
      lines.append(f"{field}: {saved[field]!r} → {current[field]!r}")
  return lines
