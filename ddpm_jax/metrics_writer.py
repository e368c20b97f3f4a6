"""Run logs: scalars to `metrics.jsonl` and TensorBoard, images to TensorBoard, and one-line messages for
people (process 0 only) above any progress bar."""

from __future__ import annotations

import json
import os
import time

from absl import logging
import jax
import numpy as np
import tqdm

from ddpm_jax import fileio


def truncate_jsonl(path: str, last_step: int) -> int:
  """Keeps the records of `path` with step <= `last_step` (and drops a torn last line), atomically; returns
  how many records were dropped. A resumed run redoes the steps after its checkpoint, so their records
  would otherwise appear twice."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        record = json.loads(line)
        keep = isinstance(record, dict) and int(record.get("step", 0)) <= last_step
      except (ValueError, TypeError):
        keep = False
      if keep:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    fileio.write_text(path, "".join(kept))
  return dropped


class MetricWriter:
  """Scalars to `metrics.jsonl` and TensorBoard event files (tensorboardX; no TensorFlow), images to TB.

  For a URL workdir (gs://...) both are written to a local mirror and uploaded at most every
  `sync_seconds` and on close (object stores cannot append).

  `resume_step`: the checkpoint step a training run starts from. Records after it in metrics.jsonl (written
  by the earlier run past its last checkpoint, and about to be redone) are removed, and TensorBoard is told
  to drop its events after it (`purge_step`), so each step appears once.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, sync_seconds: float = 60.0,
               resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self.dropped = 0
    if enabled:
      self._mirror = fileio.LocalMirror(workdir)
      self._mirror.pull("metrics.jsonl")  # a resumed run continues the remote log
      jsonl = os.path.join(self._mirror.path, "metrics.jsonl")
      if resume_step is not None:
        self.dropped = truncate_jsonl(jsonl, resume_step)
      self._jsonl = open(jsonl, "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(self._mirror.path, "tensorboard"),
                               purge_step=None if resume_step is None else resume_step + 1)
      self._sync_seconds = sync_seconds
      self._last_sync = time.time()

  def _maybe_sync(self):
    if self._mirror.remote and time.time() - self._last_sync >= self._sync_seconds:
      self._tb.flush()
      self._mirror.sync()
      self._last_sync = time.time()

  def scalars(self, step: int, values: dict[str, float]):
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._maybe_sync()

  def image(self, step: int, tag: str, image_uint8: np.ndarray):
    if self.enabled:
      self._tb.add_image(tag, image_uint8, int(step), dataformats="HWC")
      self._maybe_sync()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      self._mirror.close()


def log(message: str) -> None:
  """One line for people (process 0 only), above any progress bar; absl logging keeps the details."""
  logging.info(message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)
