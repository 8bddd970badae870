"""What one process of a multi-process job holds, and sums across processes.

Every evaluation is written as a cluster job: each process feeds its own rows
of a global batch (sharding.put_global_batch), reads back only its own rows
of the per-example outputs (`local_rows`), accumulates float64 sums on the
host, and the sums are added across processes once at the end
(`sum_over_processes`). A global array is never turned into numpy as a whole:
on a multi-process mesh that raises "spans non-addressable devices".

The sums are float64 on the host, but JAX's collectives carry float32 (x64 is
off). `sum_over_processes` therefore sends each float64 value as two float32
parts, hi = f32(x) and lo = f32(x - hi), gathers them from every process and
adds them in float64 on the host: hi + lo keeps about 48 bits of x, so a
metric does not depend on how many processes computed it (beyond float64
round-off of the order of additions).
"""
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, as numpy: the
  inverse of sharding.put_global_batch (whose rows of a process are one
  contiguous block of the global batch)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  blocks = {}
  for shard in x.addressable_shards:  # replicas of a block appear once
    start = (shard.index[0].start or 0) if shard.index else 0
    if start not in blocks:
      blocks[start] = np.asarray(shard.data)
  return np.concatenate([blocks[k] for k in sorted(blocks)])


def sum_over_processes(tree: Any) -> Any:
  """The elementwise sum over all processes of a tree of host numbers or
  arrays, in float64 (every process gets the same result)."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
  leaves, treedef = jax.tree.flatten(tree)
  parts = []
  for a in leaves:
    a = np.asarray(a, np.float64)
    hi = a.astype(np.float32)
    lo = (a - hi.astype(np.float64)).astype(np.float32)
    parts.append(np.stack([hi, lo]))
  gathered = multihost_utils.process_allgather(parts)  # each [P, 2, ...]
  sums = [np.asarray(g, np.float64).sum(axis=(0, 1)) for g in gathered]
  return jax.tree.unflatten(treedef, sums)


def is_main() -> bool:
  """Process 0 writes files, TensorBoard and prints summaries."""
  return jax.process_index() == 0


def gather_rows(rows: np.ndarray, index: np.ndarray, total: int) -> np.ndarray:
  """[total, ...] on every process from each process's rows and their global
  row numbers `index` (every row number in [0, total) given by exactly one
  process): per-example features (precision/recall) that need all examples
  at once. Each process sends only its own rows (padded to the largest
  share), so the traffic is about one copy of the result."""
  rows, index = np.asarray(rows), np.asarray(index, np.int64)
  if len(rows) != len(index):
    raise ValueError(f"gather_rows: {len(rows)} rows but {len(index)} indices")
  if jax.process_count() == 1:
    out, seen = np.zeros((total,) + rows.shape[1:], rows.dtype), index
    out[index] = rows
  else:
    counts = multihost_utils.process_allgather(np.int32(len(rows)))
    size = max(int(np.max(counts)), 1)
    pad = size - len(rows)
    rows_p = np.concatenate([rows, np.zeros((pad,) + rows.shape[1:],
                                            rows.dtype)])
    index_p = np.concatenate([index, np.full(pad, -1, np.int64)]).astype(
        np.int32)
    all_rows, all_index = multihost_utils.process_allgather((rows_p, index_p))
    all_rows = np.asarray(all_rows).reshape((-1,) + rows.shape[1:])
    all_index = np.asarray(all_index).reshape(-1)
    keep = all_index >= 0
    out = np.zeros((total,) + rows.shape[1:], rows.dtype)
    seen = all_index[keep]
    out[seen] = all_rows[keep]
  if len(seen) != total or len(np.unique(seen)) != total or (
      len(seen) and (seen.min() < 0 or seen.max() >= total)):
    raise ValueError(f"gather_rows: the processes gave {len(seen)} "
                     f"row numbers for {total} rows (each must appear once)")
  return out
