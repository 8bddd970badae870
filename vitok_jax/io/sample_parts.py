"""Samples on disk as parts: what lets `vitok_jax.sample` scale and resume.

Each process writes its rows of each global batch as one part file,
part_<first>_<last>_p<process>.npz = {images uint8 [n, ...], labels [n],
index [n]} (the sample numbers), atomically (a temporary name, then a
rename), as soon as they are sampled. No host holds more than one batch.

Sample i depends on (seed, i) alone (sampling.py), so a rerun, on any number
of processes and with any batch size, samples only the numbers no part holds
yet and gets the very samples a finished run would have. Every sample number
is written once: a run writes only numbers that were missing when it
started. `merge` writes the ADM-layout .npz (arr_0 uint8 [N, H, W, 3],
labels) in sample order, streaming one part at a time.

A manifest (manifest.json) records what the samples depend on besides their
number (checkpoint step, CFG, seed, DDIM steps, eta or the flow solver,
classes, label mode, the tokenizer's step); parts made with other settings
are refused, naming the difference.
"""
import json
import zipfile

import jax
import numpy as np
from numpy.lib import format as npy_format

from vitok_jax.io import fileio


class Parts:

  def __init__(self, directory: str, manifest: dict):
    self.directory = directory
    fileio.makedirs(directory)
    path = fileio.join(directory, "manifest.json")
    manifest = json.loads(json.dumps(manifest))  # plain JSON types
    if fileio.exists(path):
      old = fileio.read_json(path)
      # Every key of either: a setting one of them lacks differs too.
      diff = {k: (old.get(k), manifest.get(k))
              for k in sorted(set(old) | set(manifest))
              if old.get(k) != manifest.get(k)}
      if diff:
        raise ValueError(
            f"{directory} holds samples made with other settings "
            f"(setting: (theirs, now)) {diff}; use another --seed, or delete "
            "the folder to start again")
    elif jax.process_index() == 0:
      fileio.write_json(path, manifest)

  def files(self):
    return fileio.glob(self.directory, "part_*.npz")

  def _index(self):
    """[(file, sample numbers)] of every part."""
    out = []
    for path in self.files():
      out.append((path, fileio.load_npz(path, ["index"])["index"]))
    return out

  def covered(self, num: int) -> np.ndarray:
    """bool [num]: which of the first num samples some part holds."""
    done = np.zeros(num, bool)
    for _, index in self._index():
      done[index[index < num]] = True
    return done

  def write(self, images: np.ndarray, labels: np.ndarray,
            index: np.ndarray) -> None:
    """This process's new samples (uint8), atomically."""
    if not len(index):
      return
    name = (f"part_{int(index[0]):09d}_{int(index[-1]):09d}_"
            f"p{jax.process_index()}.npz")
    fileio.save_npz(fileio.join(self.directory, name), images=images,
                    labels=np.asarray(labels, np.int32),
                    index=np.asarray(index, np.int64))

  def _where(self, num: int):
    """Per sample number < num: (part number, row), and the part files."""
    index = self._index()
    part = np.full(num, -1, np.int64)
    row = np.zeros(num, np.int64)
    for k, (_, idx) in enumerate(index):
      keep = idx < num
      part[idx[keep]] = k
      row[idx[keep]] = np.nonzero(keep)[0]
    if (part < 0).any():
      missing = np.nonzero(part < 0)[0]
      raise ValueError(f"{self.directory} lacks {len(missing)} of the {num} "
                       f"samples (first: {missing[0]}): run the sampling "
                       "again to finish it")
    return part, row, [p for p, _ in index]

  def _reader(self, files):
    cache = {}

    def get(k):
      if k not in cache:
        cache.clear()  # one part in memory at a time
        f = fileio.load_npz(files[k], ["images", "labels"])
        cache[k] = (f["images"], f["labels"])
      return cache[k]
    return get

  def read_sharded(self, num: int, batch_size: int):
    """Yields this process's rows (images uint8, labels, sample numbers) of
    each global batch of the first num samples; every process yields the
    same number of times (possibly nothing), as sharded scoring needs."""
    part, row, files = self._where(num)
    get = self._reader(files)
    rows = batch_size // jax.process_count()
    first = jax.process_index() * rows
    for start in range(0, num, batch_size):
      index = np.arange(start + first, min(start + first + rows, num))
      images, labels = [], []
      for i in index:
        im, lb = get(part[i])
        images.append(im[row[i]])
        labels.append(lb[row[i]])
      if not len(index):
        shape = get(part[0])[0].shape[1:]
        yield np.zeros((0,) + shape, np.uint8), np.zeros(0, np.int32), index
        continue
      yield np.stack(images), np.asarray(labels, np.int32), index

  def head(self, k: int) -> np.ndarray:
    """The first k samples (uint8), read from the parts."""
    part, row, files = self._where(k)
    get = self._reader(files)
    return np.stack([get(part[i])[0][row[i]] for i in range(k)])

  def merge(self, num: int, path: str) -> None:
    """Writes the ADM-layout .npz of the first num samples, in order,
    without holding them all: arr_0 is streamed into the zip (locally into
    a temporary file renamed at the end; on object storage into the upload,
    which appears whole when it completes)."""
    part, row, files = self._where(num)
    get = self._reader(files)
    shape = get(part[0])[0].shape[1:]
    labels = np.empty(num, np.int32)
    remote = fileio.is_remote(path)
    out = fileio.open(path if remote else path + ".tmp", "wb")
    with out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED,
                              allowZip64=True) as zf:
      with zf.open("arr_0.npy", "w", force_zip64=True) as f:
        npy_format.write_array_header_1_0(f, dict(
            descr=npy_format.dtype_to_descr(np.dtype(np.uint8)),
            fortran_order=False, shape=(num,) + tuple(shape)))
        for i in range(num):
          images, lb = get(part[i])
          f.write(np.ascontiguousarray(images[row[i]], np.uint8).tobytes())
          labels[i] = lb[row[i]]
      with zf.open("labels.npy", "w") as f:
        npy_format.write_array(f, labels)
    if not remote:
      fileio.move(path + ".tmp", path)
