"""Workdir files on a local disk or behind a URL (gs://bucket/run on Cloud TPU), through one small API.

Local paths use the operating system directly. URLs go through fsspec (gs:// needs `gcsfs`, installed by the
`tpu` extra); object stores cannot append, so appendable files (metrics.jsonl, TensorBoard events) are written
to a local mirror and uploaded whole by `LocalMirror.sync`. Checkpoints do not pass through here: Orbax
reads and writes gs:// itself (ddpm_jax.checkpointing).
"""

from __future__ import annotations

import os
import shutil
import tempfile


def is_url(path) -> bool:
  return "://" in str(path)


def resolve(path) -> str:
  """An absolute local path, or the URL without a trailing slash."""
  path = os.fspath(path)
  if is_url(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(base, *parts) -> str:
  base = os.fspath(base)
  if is_url(base):
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


def _fs(url):
  import fsspec  # pylint: disable=g-import-not-at-top
  try:
    fs, path = fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:
    scheme = url.split("://", 1)[0]
    hint = " (pip install gcsfs, or the package's [tpu] extra)" if scheme == "gs" else ""
    raise ValueError(f"cannot open {url!r}: no filesystem for {scheme}://{hint}: {e}") from e
  return fs, path


def makedirs(path) -> None:
  if is_url(path):
    fs, p = _fs(path)
    fs.makedirs(p, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path) -> bool:
  if is_url(path):
    fs, p = _fs(path)
    return fs.exists(p)
  return os.path.exists(path)


def write_bytes(path, data: bytes) -> str:
  """Writes `data` to `path` (its folder is created), replacing any file there; returns `path`."""
  if is_url(path):
    fs, p = _fs(path)
    with fs.open(p, "wb") as f:
      f.write(data)
  else:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)  # never leaves a half-written file under the real name
  return path


def write_text(path, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def read_bytes(path) -> bytes:
  if is_url(path):
    fs, p = _fs(path)
    with fs.open(p, "rb") as f:
      return f.read()
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def append_text(path, text: str) -> None:
  """Appends to a text file (for a URL: read, extend, rewrite; fine for the small logs it is used for)."""
  if is_url(path):
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)
  else:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)


def copy(src, dst) -> str:
  if is_url(src) or is_url(dst):
    write_bytes(dst, read_bytes(src))
  else:
    shutil.copyfile(src, dst)
  return dst


class LocalMirror:
  """A local folder standing for `target`: `target` itself when it is local; for a URL, a temporary folder
  whose files `sync()` uploads to the same relative paths under the URL (only those changed since the last
  sync). `pull(name)` first copies an existing remote file down, so that appending continues it."""

  def __init__(self, target: str):
    self.target = resolve(target)
    self.remote = is_url(self.target)
    self.path = tempfile.mkdtemp(prefix="ddpm_jax_mirror_") if self.remote else self.target
    os.makedirs(self.path, exist_ok=True)
    self._synced: dict[str, tuple[int, int]] = {}

  def pull(self, name: str) -> None:
    if self.remote and exists(join(self.target, name)):
      local = os.path.join(self.path, name)
      os.makedirs(os.path.dirname(local), exist_ok=True)
      with open(local, "wb") as f:
        f.write(read_bytes(join(self.target, name)))
      self._synced[name] = (os.stat(local).st_mtime_ns, os.path.getsize(local))

  def sync(self) -> None:
    if not self.remote:
      return
    for root, _, files in os.walk(self.path):
      for fname in files:
        local = os.path.join(root, fname)
        rel = os.path.relpath(local, self.path).replace(os.sep, "/")
        stamp = (os.stat(local).st_mtime_ns, os.path.getsize(local))
        if self._synced.get(rel) != stamp:
          write_bytes(join(self.target, rel), read_bytes(local))
          self._synced[rel] = stamp

  def close(self) -> None:
    self.sync()
    if self.remote:
      shutil.rmtree(self.path, ignore_errors=True)
