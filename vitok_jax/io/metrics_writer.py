"""Process-0 metrics writer: TensorBoard event files + metrics.jsonl.

clu.metric_writers imports TensorFlow at import time, so this small
writer uses tensorboardX and keeps clu's interface (write_scalars,
write_images, write_texts, flush, close). Other processes get no-ops.

On object storage (gs://: tensorboardX writes events there itself) a file
cannot be appended to, so the rows of metrics.jsonl are kept in memory and
the whole file is rewritten at each write (one small object per log step).
"""
import json
import sys
import time

import jax
import numpy as np

from vitok_jax.io import fileio


class _Rows:
  """metrics.jsonl: appended locally, rewritten whole on object storage."""

  def __init__(self, path):
    self.path = path
    self.remote = fileio.is_remote(path)
    self.lines = []
    if self.remote:
      if fileio.exists(path):
        self.lines = fileio.read_text(path).splitlines(keepends=True)
      self._f = None
    else:
      self._f = fileio.open(path, "a")

  def write(self, line: str) -> None:
    if self.remote:
      self.lines.append(line)
      fileio.write_atomic(self.path, "".join(self.lines))
    else:
      self._f.write(line)
      self._f.flush()

  def read_all(self):
    if self.remote:
      return list(self.lines)
    self._f.close()
    lines = fileio.read_text(self.path).splitlines(keepends=True)
    self._f = fileio.open(self.path, "a")
    return lines

  def replace_all(self, lines) -> None:
    if self.remote:
      self.lines = list(lines)
      fileio.write_atomic(self.path, "".join(self.lines))
      return
    self._f.close()
    fileio.write_atomic(self.path, "".join(lines))
    self._f = fileio.open(self.path, "a")

  def flush(self) -> None:
    if self._f:
      self._f.flush()

  def close(self) -> None:
    if self._f:
      self._f.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: when torch is
  installed, tensorboardX imports it at import time only to accept torch
  tensors (seconds of every job's start-up); this writer logs numpy. A
  torch already imported is used as is."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:

  def __init__(self, logdir: str, *, active=None, jsonl_name="metrics.jsonl"):
    self.active = jax.process_index() == 0 if active is None else active
    self.logdir = logdir
    self._tb = None
    self._jsonl = None
    if self.active:
      fileio.makedirs(logdir)
      self._tb = _summary_writer_class()(logdir, flush_secs=30)
      self._jsonl = _Rows(fileio.join(logdir, jsonl_name))

  def drop_rows_after(self, step: int) -> None:
    """Forgets metrics.jsonl rows logged after `step`: a resumed run logs
    those steps again, and the file keeps one row per step and kind."""
    if not self.active:
      return
    keep = []
    for line in self._jsonl.read_all():
      try:
        if json.loads(line)["step"] <= step:
          keep.append(line)
      except (ValueError, KeyError):
        pass  # a line cut by a kill
    self._jsonl.replace_all(keep)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, int(step))
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(),
                                  **clean}) + "\n")

  def write_images(self, step: int, images: dict) -> None:
    """images: name -> uint8 [H, W, 3] (or [N, H, W, 3], tiled as a row)."""
    if not self.active:
      return
    for k, img in images.items():
      img = np.asarray(img)
      if img.ndim == 4:
        img = np.concatenate(list(img), axis=1)
      self._tb.add_image(k, img, int(step), dataformats="HWC")

  def write_texts(self, step: int, texts: dict) -> None:
    if not self.active:
      return
    for k, v in texts.items():
      self._tb.add_text(k, str(v), int(step))

  def flush(self) -> None:
    if self.active:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()
      self._jsonl.close()
      self.active = False
