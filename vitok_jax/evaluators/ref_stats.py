"""Reference Inception statistics, computed once and then reused.

Generated samples are compared with the training set's evaluation crops
(ADM's evaluator protocol): gFID with the mean and covariance of their
Inception pool features, sFID with those of ADM's spatial features
(models/inception.py), precision/recall with the pool features of a seeded
random 10k of them (the size of ADM's reference batches). Computing them is
a pass over the data set (1.28M images for ImageNet), so they are cached in
a file named by what they depend on: the data set and split, the
resolution, the frames (videos, frame-wise), the number of examples (all,
or a seeded random subset: never the first N of a class-sorted folder),
next to the Inception weights they were computed with:

  <dir of the Inception .npz>/ref_stats/<data>_<res>px[_<T>f]_<all|<n>|random<n>>_v2.npz

holding mu, sigma, n, mu_s, sigma_s, pr_features.

Training, the eval job and `vitok_jax.sample` all look there first, and
`tools/compute_ref_stats.py` writes there by default. A start that would have
to compute statistics over more than MAX_AT_START examples fails instead and
names the tool command: run it once (as a multi-process job if you like; the
pass is sharded over processes), and every later start reuses the file.
"""
import hashlib
import logging
import re
from typing import NamedTuple, Optional, Tuple

import jax
import numpy as np

from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import metrics
from vitok_jax.io import fileio
from vitok_jax.models import inception
from vitok_jax.parallel import multihost

MAX_AT_START = 50_000
PR_EXAMPLES = 10_000  # reference features kept for precision/recall (ADM)
SUBSET_SEED = 0  # which num_examples of a data set (a seeded random subset)


def cache_name(data_config, num_examples: Optional[int] = None,
               random_subset: bool = False,
               inception_input: str = "pytorch_fid") -> str:
  data = str(data_config.data)
  slug = re.sub(r"[^A-Za-z0-9._-]+", "-", data).strip("-")
  if len(slug) > 80:  # long folder paths: keep them apart by a hash
    slug = slug[:60] + "-" + hashlib.sha1(data.encode()).hexdigest()[:10]
  frames = data_config.frames
  # v2: with ADM's sFID statistics and precision/recall features. A count
  # is the first n (the reconstruction evaluators' examples) or a seeded
  # random subset of n ("random<n>": generation; "random<n>seed<k>" for a
  # SUBSET_SEED other than 0, so that another seed is another file).
  count = (f"{'random' if random_subset else ''}{num_examples}"
           if num_examples else "all")
  if num_examples and random_subset and SUBSET_SEED:
    count += f"seed{SUBSET_SEED}"
  clips = ""
  if frames > 1:  # videos: the clip protocol is part of the statistics
    fps = input_pipeline.clip_fps(data_config)
    clips = f"_{frames}f" + (f"{fps:g}fps" if fps else "native")
    if data_config.video_filter != "bicubic":
      clips += f"_{data_config.video_filter}"
    repeats = input_pipeline.clips_per_video(data_config)
    clips += f"x{repeats}" if repeats > 1 else ""
    if data_config.file_list:
      clips += "_list" + hashlib.sha1(
          str(data_config.file_list).encode()).hexdigest()[:8]
  # ADM's Inception input gives other features than pytorch-fid's (the
  # names of pytorch-fid's statistics are those of before the choice).
  kind = "_adm" if inception_input == "adm" else ""
  return f"{slug}_{data_config.res}px{clips}_{count}{kind}_v2.npz"


def default_path(data_config, inception_weights: str,
                 num_examples: Optional[int] = None,
                 random_subset: bool = False,
                 inception_input: str = "pytorch_fid") -> str:
  weights_dir = fileio.dirname(fileio.abspath(inception_weights))
  return fileio.join(weights_dir, "ref_stats",
                     cache_name(data_config, num_examples, random_subset,
                                inception_input))


class RefStats(NamedTuple):
  """What generated samples are compared with."""
  mu: np.ndarray  # pool features' mean [2048] and covariance: gFID
  sigma: np.ndarray
  n: int  # examples (frames, for videos) the statistics are over
  spatial: Optional[Tuple[np.ndarray, np.ndarray]] = None  # sFID (ADM)
  features: Optional[np.ndarray] = None  # pool features of a seeded random
  #                                        subset [K, 2048]: precision/recall
  inception_input: str = ""  # inception.INPUT_KINDS; "" = not recorded


def check_input(ref: RefStats, inception_input: str, path: str) -> None:
  """Statistics of one Inception input compare only with samples seen
  through the same one."""
  if ref.inception_input and ref.inception_input != inception_input:
    raise ValueError(
        f"{path} holds statistics of {inception.INPUT_NAMES[ref.inception_input]}"
        f", but the samples are scored with "
        f"{inception.INPUT_NAMES[inception_input]}: recompute them with "
        f"tools/compute_ref_stats.py --inception_input={inception_input}, or "
        "set the evaluator's inception_input to match")
  if not ref.inception_input:
    logging.warning("%s does not record its Inception input (written before "
                    "the choice existed, so pytorch-fid's); the samples use "
                    "%s", path, inception.INPUT_NAMES[inception_input])


def load(path: str) -> RefStats:
  """A file of save() or tools/compute_ref_stats.py. One written before sFID
  and precision/recall existed has only mu and sigma (spatial and features
  None: those metrics are then left out, with a warning)."""
  f = fileio.load_npz(fileio.abspath(path), None)
  if "mu" not in f or "sigma" not in f:
    raise ValueError(f"{path} holds {sorted(f)}, not reference statistics "
                     "(mu, sigma): write it with tools/compute_ref_stats.py")
  spatial = (f["mu_s"], f["sigma_s"]) if "mu_s" in f else None
  kind = str(f["inception_input"]) if "inception_input" in f else ""
  return RefStats(f["mu"], f["sigma"], int(f.get("n", 0)), spatial,
                  f.get("pr_features"), kind)


def save(ref: RefStats, path: str) -> None:
  """Atomically (a partly written file is never found as a cache)."""
  arrays = dict(mu=ref.mu, sigma=ref.sigma, n=ref.n)
  if ref.spatial is not None:
    arrays.update(mu_s=ref.spatial[0], sigma_s=ref.spatial[1])
  if ref.features is not None:
    arrays["pr_features"] = ref.features
  if ref.inception_input:
    arrays["inception_input"] = np.array(ref.inception_input)
  fileio.save_npz(path, **arrays)


class Accumulator:
  """Streams Inception outputs of `total` examples (frames) into RefStats:
  float64 sums for the Gaussians, and the pool features of `pr_examples`
  of them at seeded random positions for precision/recall (ADM compares
  with a 10k reference batch). Position = the example's index in the
  evaluation (make_eval_dataset's "index"), so the subset does not depend on
  the process count."""

  def __init__(self, total: int, pr_examples: int = PR_EXAMPLES,
               seed: int = 0):
    self.total = int(total)
    self.pool = metrics.GaussianStats()
    self.spatial = metrics.GaussianStats(inception.SPATIAL_DIM)
    k = min(int(pr_examples), self.total)
    chosen = np.sort(np.random.default_rng(seed).choice(
        self.total, k, replace=False)) if k else np.zeros(0, np.int64)
    self.slot = np.full(self.total, -1, np.int64)
    self.slot[chosen] = np.arange(k)
    self.k = k
    self.rows, self.rows_at = [], []

  def update(self, pool, spatial, index) -> None:
    pool, index = np.asarray(pool), np.asarray(index)
    self.pool.update(pool)
    self.spatial.update(np.asarray(spatial))
    slot = self.slot[index]
    keep = slot >= 0
    if keep.any():
      self.rows.append(pool[keep].astype(np.float32))
      self.rows_at.append(slot[keep])

  def result(self) -> RefStats:
    """Sums over processes; every process gets the whole result."""
    self.pool.sum_over_processes()
    self.spatial.sum_over_processes()
    rows = (np.concatenate(self.rows) if self.rows
            else np.zeros((0, self.pool.s1.shape[0]), np.float32))
    at = (np.concatenate(self.rows_at) if self.rows_at
          else np.zeros(0, np.int64))
    features = multihost.gather_rows(rows, at, self.k)
    return RefStats(*self.pool.mean_cov(), self.pool.n,
                    self.spatial.mean_cov(), features)


def tool_command(data_config, inception_weights, num_examples, path,
                 random_subset: bool = False,
                 inception_input: str = "pytorch_fid") -> str:
  cmd = (f"python tools/compute_ref_stats.py --data={data_config.data} "
         f"--res={data_config.res} --inception={inception_weights}")
  if data_config.frames > 1:
    cmd += f" --frames={data_config.frames}"
  if data_config.data_dir:
    cmd += f" --data_dir={data_config.data_dir}"
  if num_examples:
    cmd += f" --num_examples={num_examples}"
    if random_subset:
      cmd += " --subset=random"
  if inception_input != "pytorch_fid":
    cmd += f" --inception_input={inception_input}"
  return cmd + f" --out={path}"


def compute(data_config, inception_params, num_examples=None,
            batch_size: int = 50, pr_examples: int = PR_EXAMPLES,
            random_subset: bool = False,
            inception_input: str = "pytorch_fid") -> RefStats:
  """Inception statistics of a data set's evaluation crops (frame-wise for
  videos) -- all of them, the first num_examples, or a seeded random subset
  of num_examples; tools/compute_ref_stats.py saves them."""
  fn = inception.apply_fn(spatial=True, input_kind=inception_input)
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  frames = data_config.frames
  acc = Accumulator(n * frames, pr_examples)
  # A global batch every process can split evenly, no larger than the data.
  nproc = jax.process_count()
  batch = max(min(batch_size, -(-n // nproc) * nproc) // nproc, 1) * nproc
  for b in input_pipeline.make_eval_dataset(data_config, batch, num_examples,
                                            subset_seed=SUBSET_SEED
                                            if random_subset else None):
    q = np.asarray(metrics.quantize(b["image"][b["mask"]])) / 255.0
    if len(q):
      pool, _, spatial = fn(inception_params, q.reshape((-1,) + q.shape[-3:]))
      index = (b["index"][b["mask"]][:, None] * frames +
               np.arange(frames)[None]).reshape(-1)
      acc.update(np.asarray(pool), np.asarray(spatial), index)
  return acc.result()._replace(inception_input=inception_input)


def load_or_compute(data_config, inception_params, inception_weights: str, *,
                    num_examples: Optional[int] = None,
                    path: Optional[str] = None,
                    max_examples: Optional[int] = None,
                    random_subset: bool = False,
                    inception_input: str = "pytorch_fid") -> RefStats:
  """RefStats of data_config's evaluation crops: from `path` (default:
  default_path), else computed (sharded over processes) and saved there."""
  path = path or default_path(data_config, inception_weights, num_examples,
                              random_subset, inception_input)
  if fileio.exists(path):
    ref = load(path)
    check_input(ref, inception_input, path)
    if ref.spatial is not None and ref.features is not None:
      logging.info("Reference statistics from %s", path)
      return ref
    logging.warning("%s predates sFID and precision/recall: recomputing it",
                    path)
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  limit = MAX_AT_START if max_examples is None else max_examples
  if n > limit:
    raise ValueError(
        f"No reference statistics at {path}, and computing them would read "
        f"{n} examples at every start (more than {limit}). Compute them once:"
        f"\n  {tool_command(data_config, inception_weights, num_examples, path, random_subset, inception_input)}")
  ref = compute(data_config, inception_params, num_examples,
                random_subset=random_subset, inception_input=inception_input)
  if multihost.is_main():
    save(ref, path)
  logging.info("Reference statistics of %d examples saved to %s", ref.n,
               path)
  return ref


# --------------------------------------------------------------------------
# gFVD: I3D statistics of the training clips
# --------------------------------------------------------------------------
I3D_MIN_FRAMES = 9  # I3D strides time by 2 three times, then pools 2


def check_fvd_frames(frames: int, what: str) -> None:
  """At start, not after a whole evaluation pass: I3D on fewer than 9
  frames has an empty time axis (NaN features)."""
  if frames < I3D_MIN_FRAMES:
    raise ValueError(f"{what} needs clips of at least {I3D_MIN_FRAMES} "
                     f"frames (I3D), but config.input.frames={frames} (or "
                     "the evaluator's data.frames): I3D's time axis would be "
                     "empty")


def fvd_default_path(data_config, i3d_weights: str,
                     num_examples: Optional[int] = None) -> str:
  weights_dir = fileio.dirname(fileio.abspath(i3d_weights))
  name = cache_name(data_config, num_examples, random_subset=True)
  return fileio.join(weights_dir, "ref_stats", name[:-len(".npz")] + "_i3d.npz")


def i3d_apply_fn(mesh=None):
  """Jitted (params, clips [B, T, H, W, 3] in [-1, 1]) -> I3D features
  [B, 400]; with a mesh, sharded like the batch."""
  from vitok_jax.models import i3d  # pylint: disable=g-import-not-at-top
  if mesh is None:
    return jax.jit(i3d.features)
  from vitok_jax.parallel import sharding as sh  # pylint: disable=g-import-not-at-top
  batch = sh.batch_sharding(mesh)
  return jax.jit(i3d.features, in_shardings=(sh.replicated(mesh), batch),
                 out_shardings=batch)


def compute_fvd(data_config, i3d_params, num_examples=None,
                batch_size: int = 8) -> metrics.GaussianStats:
  """I3D statistics of a video data set's evaluation clips (a seeded random
  subset of num_examples, or all), summed over processes."""
  from vitok_jax.models import i3d  # pylint: disable=g-import-not-at-top
  check_fvd_frames(data_config.frames, "gFVD")
  fn = i3d_apply_fn()
  stats = metrics.GaussianStats(i3d.NUM_CLASSES)
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  nproc = jax.process_count()
  batch = max(min(batch_size, -(-n // nproc) * nproc) // nproc, 1) * nproc
  for b in input_pipeline.make_eval_dataset(data_config, batch, num_examples,
                                            subset_seed=SUBSET_SEED):
    q = np.asarray(metrics.quantize(b["image"][b["mask"]]))
    if len(q):  # whole clips, on the uint8 grid, in [-1, 1]
      stats.update(np.asarray(fn(i3d_params, q / 127.5 - 1.0)))
  return stats.sum_over_processes()


def load_or_compute_fvd(data_config, i3d_params, i3d_weights: str, *,
                        num_examples: Optional[int] = None):
  """(mu, sigma) of the training clips' I3D features, cached next to the
  I3D weights (a random I3D's are computed every time, never cached)."""
  path = (None if i3d_weights == "random" else
          fvd_default_path(data_config, i3d_weights, num_examples))
  if path and fileio.exists(path):
    f = fileio.load_npz(path, ["mu", "sigma"])
    logging.info("gFVD reference statistics from %s", path)
    return f["mu"], f["sigma"]
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  if n > MAX_AT_START:
    raise ValueError(
        f"No gFVD reference statistics at {path}, and computing them would "
        f"read {n} clips at every start (more than {MAX_AT_START}): set "
        "ref_examples to a seeded random subset of the training clips")
  stats = compute_fvd(data_config, i3d_params, num_examples)
  if path and multihost.is_main():
    stats.save(path)
  return stats.mean_cov()
