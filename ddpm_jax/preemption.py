"""Preemption: Cloud TPU (and SLURM) send SIGTERM with a short grace period before taking the machine.

`PreemptionWatch.install` makes SIGTERM only set a flag (no I/O in a signal handler); the train loop polls
`reached(step)` after each step, saves with `force=True` and exits. On several processes the decision must
agree across hosts, so it comes from JAX's preemption sync service
(`jax.experimental.multihost_utils.reached_preemption_sync_point`), which handles SIGTERM itself.
`CheckpointManager` owns one and exposes it as `install_preemption_handler` / `reached_preemption`.
"""

import numbers
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Whether a preemption signal has arrived (one process) or been agreed on (several)."""

  def __init__(self):
    self._preempted_by = None  # the signal number once SIGTERM/SIGINT arrived (set by the handler only)
    self._previous_handlers = {}
    self._multiprocess_preemption = False

  def install(self, *, sigint=False):
    """Arranges for SIGTERM (and SIGINT if `sigint`) to make `reached` return True.

    With one process the handler only records the signal (no I/O in a signal handler; the train loop does
    the save). With several processes JAX's distributed runtime already turns SIGTERM into a preemption
    notice that it synchronizes over hosts, so no Python handler is installed (it would replace JAX's) and
    `reached` asks JAX. Must be called from the main thread; `restore_handlers()` puts the previous
    handlers back.
    """
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

  def reached(self, step):
    """True once a preemption signal arrived: the caller should save `step` with force=True and exit.

    With several processes this is JAX's `reached_preemption_sync_point(step)`, True on every process at
    the same step; it must then be called at every step by all processes.
    """
    if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 0:
      raise ValueError(f"step must be an int >= 0; got {step!r}")
    if self._multiprocess_preemption:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
      except RuntimeError as e:
        raise RuntimeError("JAX's preemption sync service is not running: call jax.distributed.initialize() "
                           "with jax_enable_preemption_service=True (the default) before training on "
                           f"several processes ({e})") from e
    return self._preempted_by is not None

  def restore_handlers(self):
    if not self._previous_handlers:
      return
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Preemption handlers released off the main thread: the previous signal handlers cannot "
                      "be restored.")
      return
    for signum, previous in self._previous_handlers.items():
      # None: the previous handler was not installed from Python; the default action is the best we can do.
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous_handlers = {}
