"""One running job per workdir: a lock file that names its holder.

Two jobs on one workdir would both train from step 0 into the same folder,
overwrite each other's checkpoints and interleave their metrics. The first
job creates <workdir>/LOCK (create-if-absent: O_EXCL on a local disk, an
ifGenerationMatch=0 upload on GCS, see fileio) with its host and pid; a
second one fails at start naming them. A lock left by a dead process of this
host is taken over with a warning; one of another host cannot be checked
from here and counts as held (remove the file if that job is gone).

Multi-host: process 0 holds the lock for the whole job and tells every
process the outcome, so that all of them stop together.
"""
import json
import logging
import os
import socket
import time

import jax
import numpy as np

from vitok_jax.io import fileio


class WorkdirInUseError(RuntimeError):
  pass


def _alive(holder: dict) -> bool:
  if holder.get("host") != socket.gethostname():
    return True  # cannot tell: assume it runs
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:

  def __init__(self, workdir: str):
    self.path = fileio.join(fileio.abspath(workdir), "LOCK")
    self.me = dict(host=socket.gethostname(), pid=os.getpid())
    self.held = False

  def _read(self):
    try:
      return json.loads(fileio.read_text(self.path))
    except (OSError, ValueError):
      return None  # vanished or half-written: treated as stale

  def _try_acquire(self) -> str:
    """'' on success, else a message naming the holder."""
    for _ in range(3):  # a stale lock taken over, then a retry
      mine = json.dumps(dict(self.me, since=time.time())).encode()
      if not fileio.create_exclusive(self.path, mine):
        holder = self._read()
        if holder is not None and _alive(holder):
          return (f"workdir {fileio.dirname(self.path)} is in use by pid "
                  f"{holder.get('pid')} on host {holder.get('host')} (since "
                  f"{time.ctime(holder.get('since', 0))}; lock file "
                  f"{self.path}): one running job per workdir")
        logging.warning("Taking over the stale lock %s of %s", self.path,
                        holder)
        fileio.remove(self.path)
        continue
      self.held = True
      return ""
    return f"could not take the lock {self.path}"

  def acquire(self) -> "WorkdirLock":
    error = self._try_acquire() if jax.process_index() == 0 else ""
    if jax.process_count() > 1:  # everyone learns process 0's outcome
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
      if int(failed) and not error:
        error = "process 0 could not lock the workdir (see its log)"
    if error:
      raise WorkdirInUseError(error)
    return self

  def release(self) -> None:
    if self.held:
      holder = self._read()
      if holder and holder.get("pid") == self.me["pid"] and holder.get(
          "host") == self.me["host"]:
        fileio.remove(self.path)
      self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
