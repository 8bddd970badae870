"""SIGTERM (a preemption) and SIGINT (Ctrl-C) become a request to stop.

The handler only sets a flag; the host loop reads it after each step, saves
that step synchronously and exits, so the run resumes exactly there. A
second SIGINT interrupts at once (the default behaviour), for a job that
must die now. With several processes, all stop at the same step: they agree
on the flag every step (one tiny all-gather of the host flags).
"""
import logging
import signal
import threading

import jax
import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(SystemExit):
  """Raised after the save: exit status 128 + signal number, as a shell
  reports a process ended by that signal."""


class StopRequest:

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("Received %s: saving at the end of this step, then "
                    "stopping (a second Ctrl-C stops at once)",
                    signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in _SIGNALS:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def requested(self) -> bool:
    """Whether to stop now; the same answer on every process."""
    mine = self.signum is not None
    if jax.process_count() == 1:
      return mine
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(mine))
    if np.any(flags) and self.signum is None:
      self.signum = int(signal.SIGTERM)
    return bool(np.any(flags))

  def exit(self) -> None:
    raise StopRequested(128 + int(self.signum))
