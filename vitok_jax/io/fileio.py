"""Every file the jobs read or write, on local disk or on cloud storage.

TPU jobs keep their workdir, weights and data on object storage
(`--workdir=gs://bucket/run`), where `open()` and `os.path` cannot reach.
Everything outside this module goes through these functions; local paths
take the plain `os` route (exactly as before), `scheme://` paths go through
`etils.epath` (fsspec / gcsfs for gs://). Orbax takes the same path strings
and writes its arrays through TensorStore.

Object storage has no rename and no append, so:
- `write_atomic` writes a local file beside its target and renames it (a
  killed job never leaves half a file); a remote object appears whole when
  its upload completes, so it is written directly.
- `create_exclusive` is O_EXCL locally and an `ifGenerationMatch=0` upload
  (create-if-absent) on GCS: the workdir lock without rename races.

Emulators: gcsfs honours STORAGE_EMULATOR_HOST and TensorStore
TENSORSTORE_GCS_HTTP_URL (tests/test_cloud_storage.py sets both).
"""
import io
import os
import shutil
from typing import List

import numpy as np


def is_remote(path) -> bool:
  return "://" in str(path)


def _fs(path):
  """The fsspec filesystem epath uses for a remote path, with its listing
  cache dropped: other processes write to the same bucket (the eval job
  beside training, every process of a multi-host job), and a cached listing
  would hide their files."""
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  fs = backend.fsspec_backend.fs(str(path))
  fs.invalidate_cache()
  return fs


def _epath(path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  _fs(path)
  return epath.Path(str(path))


def abspath(path: str) -> str:
  """A local path made absolute (~ expanded); a remote one unchanged."""
  path = str(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(*parts) -> str:
  parts = [str(p) for p in parts]
  if is_remote(parts[0]):
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]])
  return os.path.join(*parts)


def dirname(path: str) -> str:
  path = str(path)
  return path.rstrip("/").rsplit("/", 1)[0] if is_remote(path) else (
      os.path.dirname(path))


def basename(path: str) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def makedirs(path) -> None:
  """A folder and its parents (object storage has none: nothing to do)."""
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path) -> List[str]:
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def glob(directory, pattern: str) -> List[str]:
  """Sorted full paths of `directory`'s entries matching `pattern`."""
  if is_remote(directory):
    return sorted(str(p) for p in _epath(directory).glob(pattern))
  import glob as glob_lib  # pylint: disable=g-import-not-at-top
  return sorted(glob_lib.glob(os.path.join(directory, pattern)))


def open(path, mode: str = "r"):  # pylint: disable=redefined-builtin
  """A file object; remote writes ('w') upload on close, ('a') is refused."""
  if is_remote(path):
    if "a" in mode:
      raise ValueError(f"{path}: object storage cannot append; rewrite the "
                       "whole file (fileio.write_atomic)")
    if "r" in mode:  # plain read-ahead: fsspec's background prefetcher
      # has been seen to stall on small objects
      return _fs(path).open(str(path), mode, cache_type="readahead")
    return _epath(path).open(mode)
  import builtins  # pylint: disable=g-import-not-at-top
  return builtins.open(path, mode)


def read_bytes(path) -> bytes:
  if is_remote(path):
    return _fs(path).cat_file(str(path))
  with open(path, "rb") as f:
    return f.read()


def sha256(path) -> str:
  """The hex sha256 of a file's bytes, read in 1 MiB blocks (weights files
  are hundreds of MB)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def read_text(path) -> str:
  with open(path, "r") as f:
    return f.read()


def write_atomic(path, data) -> None:
  """The whole file at once, never half of it (see the module docstring)."""
  data = data.encode() if isinstance(data, str) else bytes(data)
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  makedirs(os.path.dirname(os.path.abspath(path)) or ".")
  tmp = f"{path}.tmp{os.getpid()}"
  with io.open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def create_exclusive(path, data: bytes) -> bool:
  """Creates `path` holding `data` unless it exists: True if this call made
  it. One atomic step on both local disk and GCS, so two jobs can never
  both succeed."""
  if not is_remote(path):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, p = fsspec.core.url_to_fs(str(path))
  try:
    fs.pipe_file(p, data, mode="create")  # GCS: ifGenerationMatch=0
  except FileExistsError:
    return False
  return True


def remove(path) -> None:
  """Deletes a file; a missing one is fine."""
  if is_remote(path):
    _epath(path).unlink(missing_ok=True)
  else:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass


def rmtree(path) -> None:
  if is_remote(path):
    if exists(path):
      _epath(path).rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def move(src, dst) -> None:
  """A folder or file moved (on object storage: copied, then deleted)."""
  if is_remote(src) or is_remote(dst):
    _epath(src).rename(dst) if not _epath(src).is_dir() else _copytree(src, dst)
    return
  shutil.move(src, dst)


def _copytree(src, dst) -> None:
  s = _epath(src)
  for f in s.rglob("*"):
    if f.is_file():
      _epath(join(dst, str(f.relative_to(s)))).write_bytes(f.read_bytes())
  s.rmtree()


def save_npz(path, **arrays) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(path, buf.getvalue())


def load_npz(path, keys=None) -> dict:
  """The arrays of an .npz file (all, or those named in `keys`)."""
  src = io.BytesIO(read_bytes(path)) if is_remote(path) else path
  with np.load(src) as f:
    return {k: f[k] for k in (f.files if keys is None else keys)}


def save_npy(path, array) -> None:
  buf = io.BytesIO()
  np.save(buf, array)
  write_atomic(path, buf.getvalue())


def load_npy(path, mmap: bool = False) -> np.ndarray:
  """An .npy array; memory-mapped when local and asked (a remote one is read
  whole: object storage cannot be mapped)."""
  if is_remote(path):
    return np.load(io.BytesIO(read_bytes(path)))
  return np.load(path, mmap_mode="r" if mmap else None)


def write_json(path, obj, indent: int = 2) -> None:
  import json  # pylint: disable=g-import-not-at-top
  write_atomic(path, json.dumps(obj, indent=indent))


def read_json(path):
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(read_text(path))


def save_image(path, array, **kwargs) -> None:
  """A uint8 [H, W, 3] picture; the format follows the file name."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(
      str(path).rsplit(".", 1)[-1].lower(), str(path).rsplit(".", 1)[-1].upper())
  Image.fromarray(np.asarray(array)).save(buf, format=fmt, **kwargs)
  write_atomic(path, buf.getvalue())


def rglob(root) -> List[str]:
  """Sorted paths of every file below `root` (any depth)."""
  if is_remote(root):
    return sorted(str(p) for p in _epath(root).rglob("*") if p.is_file())
  out = []
  for d, _, names in os.walk(root):
    out.extend(os.path.join(d, n) for n in names)
  return sorted(out)


def relative_parts(path, root) -> tuple:
  """The folder names and file name of `path` below `root`."""
  rel = str(path)[len(str(root).rstrip("/")):].strip("/")
  return tuple(p for p in rel.split("/") if p)


def local_or_file(path):
  """What a decoder that takes a path or a file object (PIL, PyAV) should
  get: the path itself when local, an open binary file when remote."""
  return open(path, "rb") if is_remote(path) else path
