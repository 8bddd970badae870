"""Precomputed latents on disk: what tools/encode_dataset.py writes and the DiT
trainer reads (`config.latents.source="shards:<dir>"`).

Layout of <dir>:
  meta.json                    tokenizer workdir/step, data, res, tokens,
                               channels, rope grid, shard size, total count
  shard_00000.latents.npy      float32 [n, tokens, channels]
  shard_00000.labels.npy       int32 [n]
  ...
Each shard is written to a temporary name and renamed when complete (labels
last), so an interrupted encoding resumes at the first missing shard. The
.npy files are memory-mapped: grain reads records at random without loading
the data set into memory.
"""
from typing import Iterator, Optional

import grain
import jax
import numpy as np

from vitok_jax import fileio

META = "meta.json"


def shard_paths(directory: str, index: int):
  base = fileio.join(directory, f"shard_{index:05d}")
  return base + ".latents.npy", base + ".labels.npy"


def read_meta(directory: str) -> dict:
  path = fileio.join(fileio.abspath(directory), META)
  if not fileio.exists(path):
    raise FileNotFoundError(
        f"config.latents.source: {path} does not exist; write latent shards "
        "with tools/encode_dataset.py --out=" + directory)
  return fileio.read_json(path)


def write_meta(directory: str, meta: dict) -> None:
  fileio.makedirs(directory)
  fileio.write_json(fileio.join(directory, META), meta)


def write_shard(directory: str, index: int, latents: np.ndarray,
                labels: np.ndarray) -> None:
  """Atomically: the labels file appears last and marks the shard done."""
  lat_path, lab_path = shard_paths(directory, index)
  for path, arr in ((lat_path, np.asarray(latents, np.float32)),
                    (lab_path, np.asarray(labels, np.int32))):
    fileio.save_npy(path, arr)


def complete_shards(directory: str) -> list:
  """Indices of the shards whose both files exist."""
  done = []
  for lab in fileio.glob(directory, "shard_*.labels.npy"):
    index = int(fileio.basename(lab)[6:11])
    if fileio.exists(shard_paths(directory, index)[0]):
      done.append(index)
  return done


class LatentShards:
  """Random access over every record of every shard: {"latent", "label"}."""

  def __init__(self, directory: str):
    self.directory = fileio.abspath(directory)
    self.meta = read_meta(self.directory)
    n_shards = int(self.meta["num_shards"])
    missing = sorted(set(range(n_shards)) - set(complete_shards(
        self.directory)))
    if missing:
      raise FileNotFoundError(
          f"{self.directory}: shards {missing[:5]} of {n_shards} are missing; "
          "run tools/encode_dataset.py again with the same --out to finish")
    self.latents, self.labels = [], []
    for i in range(n_shards):
      lat, lab = shard_paths(self.directory, i)
      self.latents.append(fileio.load_npy(lat, mmap=True))
      self.labels.append(fileio.load_npy(lab))
    sizes = [len(l) for l in self.labels]
    self.offsets = np.cumsum([0] + sizes)

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    s = int(np.searchsorted(self.offsets, i, side="right")) - 1
    j = i - int(self.offsets[s])
    return {"latent": np.array(self.latents[s][j]),
            "label": np.int32(self.labels[s][j])}


def make_train_dataset(directory: str, global_batch: int, seed: int):
  """Shuffled, repeated batches of this process's share (checkpointable)."""
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"config.input.batch_size={global_batch} is not divisible "
                     f"by the {n} processes")
  ds = grain.MapDataset.source(LatentShards(directory))
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds[jax.process_index()::n]
  return ds.to_iter_dataset().batch(global_batch // n, drop_remainder=True)


def iterate_latents(directory: str, max_examples: Optional[int] = None
                    ) -> Iterator[np.ndarray]:
  """The first `max_examples` latents, shard by shard (for statistics)."""
  src = LatentShards(directory)
  left = len(src) if max_examples is None else min(max_examples, len(src))
  for lat in src.latents:
    if left <= 0:
      return
    chunk = np.asarray(lat[:left], np.float32)
    left -= len(chunk)
    yield chunk
