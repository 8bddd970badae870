"""Precomputed latents on disk: what tools/encode_dataset.py writes and the DiT
trainer reads (`config.latents.source="shards:<dir>"`).

Layout of <dir>:
  meta.json                    tokenizer workdir/step, data, res, tokens,
                               channels, rope grid, shard size, total count,
                               flips (whether flipped encodings are stored)
  shard_00000.latents.npy      float32 [n, tokens, channels]
  shard_00000.flipped.npy      float32 [n, tokens, channels]: the encodings
                               of the mirrored crops (MAR's way to keep
                               config.input.flip on precomputed latents)
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

from vitok_jax.data import input_pipeline
from vitok_jax.io import fileio

META = "meta.json"


def shard_paths(directory: str, index: int):
  base = fileio.join(directory, f"shard_{index:05d}")
  return base + ".latents.npy", base + ".labels.npy"


def flipped_path(directory: str, index: int) -> str:
  return fileio.join(directory, f"shard_{index:05d}.flipped.npy")


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
                labels: np.ndarray, flipped: Optional[np.ndarray] = None
                ) -> None:
  """Atomically: the labels file appears last and marks the shard done."""
  lat_path, lab_path = shard_paths(directory, index)
  arrays = [(lat_path, np.asarray(latents, np.float32))]
  if flipped is not None:
    arrays.append((flipped_path(directory, index),
                   np.asarray(flipped, np.float32)))
  arrays.append((lab_path, np.asarray(labels, np.int32)))
  for path, arr in arrays:
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
  """Random access over every record of every shard: {"latent", "label"},
  and "flipped" when the shards hold the mirrored crops' encodings."""

  def __init__(self, directory: str):
    self.directory = fileio.abspath(directory)
    self.meta = read_meta(self.directory)
    n_shards = int(self.meta["num_shards"])
    missing = sorted(set(range(n_shards)) - set(complete_shards(
        self.directory)))
    if self.meta.get("flips"):
      missing = sorted(set(missing) | {
          i for i in range(n_shards) if i not in missing and
          not fileio.exists(flipped_path(self.directory, i))})
    if missing:
      raise FileNotFoundError(
          f"{self.directory}: shards {missing[:5]} of {n_shards} are missing; "
          "run tools/encode_dataset.py again with the same --out to finish")
    self.flips = bool(self.meta.get("flips", False))
    self.latents, self.labels, self.flipped = [], [], []
    for i in range(n_shards):
      lat, lab = shard_paths(self.directory, i)
      self.latents.append(fileio.load_npy(lat, mmap=True))
      self.labels.append(fileio.load_npy(lab))
      if self.flips:
        self.flipped.append(fileio.load_npy(flipped_path(self.directory, i),
                                            mmap=True))
    sizes = [len(l) for l in self.labels]
    self.offsets = np.cumsum([0] + sizes)

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    s = int(np.searchsorted(self.offsets, i, side="right")) - 1
    j = i - int(self.offsets[s])
    rec = {"latent": np.array(self.latents[s][j]),
           "label": np.int32(self.labels[s][j])}
    if self.flips:
      rec["flipped"] = np.array(self.flipped[s][j])
    return rec


def pick_flip(rec: dict, rng: np.random.Generator) -> dict:
  """One of the two encodings, as input_pipeline's random flip picks the
  mirrored crop: with probability 1/2 (rng.uniform() < 0.5)."""
  flipped = rec.pop("flipped")
  if rng.uniform() < 0.5:
    rec["latent"] = flipped
  return rec


def make_train_dataset(directory: str, global_batch: int, seed: int,
                       flip: bool = False):
  """Shuffled, repeated batches of this process's share (checkpointable);
  with `flip` (config.input.flip) each example is the encoding of its crop
  or of the mirrored crop, at random."""
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"config.input.batch_size={global_batch} is not divisible "
                     f"by the {n} processes")
  src = LatentShards(directory)
  if flip and not src.flips:
    raise ValueError(
        f"config.input.flip=True, but the shards in {directory} hold no "
        "flipped encodings (written before they were stored): encode them "
        "again with tools/encode_dataset.py into a new --out, or set "
        "config.input.flip=False")
  ds = grain.MapDataset.source(src)
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds[jax.process_index()::n]
  if src.flips:
    ds = (ds.random_map(pick_flip, seed=seed + 1) if flip else
          ds.map(lambda rec: {k: v for k, v in rec.items() if k != "flipped"}))
  return ds.to_iter_dataset().batch(global_batch // n, drop_remainder=True)


def iterate_latents(directory: str, max_examples: Optional[int] = None,
                    seed: Optional[int] = None) -> Iterator[np.ndarray]:
  """`max_examples` latents (for statistics), shard by shard: the first
  ones, or with a seed a random subset (input_pipeline.subset_rows: the
  same rows the on-the-fly path encodes)."""
  src = LatentShards(directory)
  left = len(src) if max_examples is None else min(max_examples, len(src))
  if seed is not None and left < len(src):
    rows = input_pipeline.subset_rows(len(src), left, seed)
    shard = np.searchsorted(src.offsets, rows, side="right") - 1
    for s in np.unique(shard):
      at = rows[shard == s] - src.offsets[s]
      yield np.asarray(src.latents[s][at], np.float32)
    return
  for lat in src.latents:
    if left <= 0:
      return
    chunk = np.asarray(lat[:left], np.float32)
    left -= len(chunk)
    yield chunk
