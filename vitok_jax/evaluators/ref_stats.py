"""Reference Inception statistics, computed once and then reused.

gFID compares samples with the Inception statistics (mean, covariance of the
pool features) of the training set's evaluation crops. Computing them is a
pass over the data set (1.28M images for ImageNet), so they are cached in a
file named by what they depend on: the data set and split, the resolution,
the frames (videos, frame-wise), the number of examples, next to the
Inception weights they were computed with:

  <dir of the Inception .npz>/ref_stats/<data>_<res>px[_<T>f]_<n|all>.npz

Training, the eval job and `vitok_jax.sample` all look there first, and
`tools/compute_ref_stats.py` writes there by default. A start that would have
to compute statistics over more than MAX_AT_START examples fails instead and
names the tool command: run it once (as a multi-process job if you like; the
pass is sharded over processes), and every later start reuses the file.
"""
import hashlib
import logging
import re
from typing import Optional, Tuple

import jax
import numpy as np

from vitok_jax import fileio
from vitok_jax import input_pipeline
from vitok_jax import multihost
from vitok_jax.evaluators import metrics
from vitok_jax.models import inception

MAX_AT_START = 50_000


def cache_name(data_config, num_examples: Optional[int] = None) -> str:
  data = str(data_config.data)
  slug = re.sub(r"[^A-Za-z0-9._-]+", "-", data).strip("-")
  if len(slug) > 80:  # long folder paths: keep them apart by a hash
    slug = slug[:60] + "-" + hashlib.sha1(data.encode()).hexdigest()[:10]
  frames = data_config.get("frames") or 1
  return (f"{slug}_{data_config.res}px" + (f"_{frames}f" if frames > 1 else "")
          + f"_{num_examples if num_examples else 'all'}.npz")


def default_path(data_config, inception_weights: str,
                 num_examples: Optional[int] = None) -> str:
  weights_dir = fileio.dirname(fileio.abspath(inception_weights))
  return fileio.join(weights_dir, "ref_stats",
                     cache_name(data_config, num_examples))


def load(path: str) -> Tuple[np.ndarray, np.ndarray]:
  f = fileio.load_npz(fileio.abspath(path), ["mu", "sigma"])
  return f["mu"], f["sigma"]


def tool_command(data_config, inception_weights, num_examples, path) -> str:
  cmd = (f"python tools/compute_ref_stats.py --data={data_config.data} "
         f"--res={data_config.res} --inception={inception_weights}")
  if (data_config.get("frames") or 1) > 1:
    cmd += f" --frames={data_config.frames}"
  if data_config.get("data_dir"):
    cmd += f" --data_dir={data_config.data_dir}"
  if num_examples:
    cmd += f" --num_examples={num_examples}"
  return cmd + f" --out={path}"


def compute(data_config, inception_params, num_examples=None,
            batch_size: int = 50) -> metrics.GaussianStats:
  """Inception statistics of a data set's evaluation crops (frame-wise for
  videos); tools/compute_ref_stats.py saves them."""
  fn = inception.apply_fn()
  stats = metrics.GaussianStats()
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  # A global batch every process can split evenly, no larger than the data.
  nproc = jax.process_count()
  batch = max(min(batch_size, -(-n // nproc) * nproc) // nproc, 1) * nproc
  for b in input_pipeline.make_eval_dataset(data_config, batch, num_examples):
    q = np.asarray(metrics.quantize(b["image"][b["mask"]])) / 255.0
    if len(q):
      stats.update(np.asarray(fn(inception_params,
                                 q.reshape((-1,) + q.shape[-3:]))[0]))
  return stats.sum_over_processes()


def load_or_compute(data_config, inception_params, inception_weights: str, *,
                    num_examples: Optional[int] = None,
                    path: Optional[str] = None,
                    max_examples: Optional[int] = None):
  """(mu, sigma) of data_config's evaluation crops: from `path` (default:
  default_path), else computed (sharded over processes) and saved there."""
  path = path or default_path(data_config, inception_weights, num_examples)
  if fileio.exists(path):
    logging.info("Reference statistics from %s", path)
    return load(path)
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  limit = MAX_AT_START if max_examples is None else max_examples
  if n > limit:
    raise ValueError(
        f"No reference statistics at {path}, and computing them would read "
        f"{n} examples at every start (more than {limit}). Compute them once:"
        f"\n  {tool_command(data_config, inception_weights, num_examples, path)}")
  stats = compute(data_config, inception_params, num_examples)
  if multihost.is_main():
    save(stats, path)
  logging.info("Reference statistics of %d examples saved to %s", stats.n,
               path)
  return stats.mean_cov()


def save(stats, path: str) -> None:
  """Atomically (a partly written file is never found as a cache)."""
  stats.save(path)
