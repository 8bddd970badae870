"""Improved precision and recall (Kynkäänniemi et al. 2019), ADM's protocol.

On Inception pool features of generated samples S and reference images R:

  radius(x, X) = distance from x to its k-th nearest neighbour in X, x
                 itself counted as the 0th (k = 3)
  precision    = fraction of samples s with |s - r| <= radius(r, R) for
                 some reference r (samples that fall on the real manifold)
  recall       = fraction of references r with |r - s| <= radius(s, S) for
                 some sample s (real images the samples cover)

This is ADM's evaluator (`ManifoldEstimator`, k = 3, squared Euclidean
distances: the same comparisons) and torch-fidelity's `prc`. The usual
ImageNet protocol compares 50k samples with a 10k reference batch.

Distances are computed in blocks of `block` x `block` (10k x 10k in ADM), on
this process's first device, so 50k x 50k needs no more than one block of
distances at a time. On N processes every process holds both feature sets
(multihost.gather_rows) and computes its own contiguous share of the rows;
the counts and radii are added across processes, so the result does not
depend on N.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.parallel import multihost

NEIGHBOURHOOD = 3


@jax.jit
def _sq_dist(a, b):
  """Squared Euclidean distances [A, B], float32 (clamped at 0)."""
  aa = jnp.sum(a * a, axis=1)[:, None]
  bb = jnp.sum(b * b, axis=1)[None]
  ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(aa + bb - 2 * ab, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _merge_smallest(best, a, b, b_valid, k: int):
  """The k + 1 smallest distances of each row of a, over best and block b."""
  d = jnp.where(b_valid[None], _sq_dist(a, b), jnp.inf)
  both = jnp.concatenate([best, d], axis=1)
  return -jax.lax.top_k(-both, k + 1)[0]


@jax.jit
def _inside_any(hit, a, b, radii_b):
  """hit | (a row lies within the radius of some row of b)."""
  return hit | jnp.any(_sq_dist(a, b) <= radii_b[None], axis=1)


def _blocks(x: np.ndarray, block: int):
  """(padded block [block, D], valid [block]) over the rows of x."""
  for start in range(0, len(x), block):
    part = x[start:start + block]
    valid = np.ones(block, bool)
    valid[len(part):] = False
    if len(part) < block:
      part = np.concatenate([part, np.zeros((block - len(part),) +
                                            part.shape[1:], part.dtype)])
    yield start, jnp.asarray(part), jnp.asarray(valid)


def _my_rows(n: int):
  """This process's contiguous share [lo, hi) of n rows."""
  p, count = jax.process_index(), jax.process_count()
  return n * p // count, n * (p + 1) // count


def radii(x: np.ndarray, k: int = NEIGHBOURHOOD,
          block: int = 10_000) -> np.ndarray:
  """Squared distance of every row of x to its k-th nearest row (itself the
  0th) [N]; every process gets all of them."""
  x = np.asarray(x, np.float32)
  n, block = len(x), min(block, len(x))
  if n <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} "
                     f"feature vectors, got {n}")
  lo, hi = _my_rows(n)
  out = np.zeros(n, np.float64)
  for start, a, _ in _blocks(x[lo:hi], block):
    best = jnp.full((block, k + 1), jnp.inf)
    for _, b, b_valid in _blocks(x, block):
      best = _merge_smallest(best, a, b, b_valid, k)
    rows = min(block, hi - lo - start)
    out[lo + start:lo + start + rows] = np.asarray(best[:rows, k])
  return multihost.sum_over_processes(out)


def coverage(x: np.ndarray, y: np.ndarray, radii_y: np.ndarray,
             block: int = 10_000) -> float:
  """Fraction of the rows of x within radii_y of some row of y."""
  x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
  block = min(block, max(len(x), len(y)))
  lo, hi = _my_rows(len(x))
  # Padding rows of y get radius -1: nothing lies within it.
  r = np.full(-(-len(y) // block) * block, -1.0, np.float32)
  r[:len(y)] = radii_y
  inside = 0
  for start, a, a_valid in _blocks(x[lo:hi], block):
    hit = jnp.zeros(block, bool)
    for j, b, _ in _blocks(y, block):
      hit = _inside_any(hit, a, b, jnp.asarray(r[j:j + block]))
    inside += int(jnp.sum(hit & a_valid))
  return float(multihost.sum_over_processes(inside)) / len(x)


def precision_recall(samples: np.ndarray, references: np.ndarray,
                     k: int = NEIGHBOURHOOD, block: int = 10_000):
  """(precision, recall) of sample features [S, D] against reference
  features [R, D]; every process passes all of both."""
  if samples.ndim != 2 or references.shape[1:] != samples.shape[1:]:
    raise ValueError(f"precision/recall needs [N, D] features of the same D, "
                     f"got {samples.shape} and {references.shape}")
  precision = coverage(samples, references, radii(references, k, block), block)
  recall = coverage(references, samples, radii(samples, k, block), block)
  return precision, recall
