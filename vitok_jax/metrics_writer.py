"""Process-0 metrics writer: TensorBoard event files + metrics.jsonl.

clu.metric_writers imports TensorFlow at import time, so this small
writer uses tensorboardX and keeps clu's interface (write_scalars,
write_images, write_texts, flush, close). Other processes get no-ops.
"""
import json
import os
import time

import jax
import numpy as np


class MetricWriter:

  def __init__(self, logdir: str, *, active=None, jsonl_name="metrics.jsonl"):
    self.active = jax.process_index() == 0 if active is None else active
    self.logdir = logdir
    self._tb = None
    self._jsonl = None
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir, flush_secs=30)
      self._jsonl = open(os.path.join(logdir, jsonl_name), "a")

  def drop_rows_after(self, step: int) -> None:
    """Forgets metrics.jsonl rows logged after `step`: a resumed run logs
    those steps again, and the file keeps one row per step and kind."""
    if not self.active:
      return
    path = self._jsonl.name
    self._jsonl.close()
    with open(path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          keep.append(line)
      except (ValueError, KeyError):
        pass  # a line cut by a kill
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)
    self._jsonl = open(path, "a")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, int(step))
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(),
                                  **clean}) + "\n")
    self._jsonl.flush()

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
