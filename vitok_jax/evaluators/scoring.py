"""Scores generated samples by ADM's evaluator protocol: one path for the
generation evaluator (evaluators/generation.py) and `vitok_jax.sample`.

  load_nets   Inception (gFID, gIS, sFID, precision/recall) and, for videos,
              I3D (gFVD) with their reference statistics, loaded once
  score       samples -> the metrics, as a multi-process sum
  summary     the metrics -> the one line a job prints, naming the counts

Images: gFID, gIS, sFID, precision and recall (k = 3) against the training
set's reference statistics (evaluators/ref_stats.py); videos: gFVD (I3D
features of whole clips against the training clips', Table 7) and
frame-wise gFID, gIS and sFID; optionally the nearest-photo check.
"""
import logging
from typing import Iterable, NamedTuple, Optional

import numpy as np

from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import common
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import precision_recall
from vitok_jax.evaluators import ref_stats as ref_stats_lib
from vitok_jax.models import i3d
from vitok_jax.models import inception
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh


class Nets(NamedTuple):
  """The scoring networks with their reference statistics (None: skipped)."""
  inception_params: object = None
  inception_net: object = None
  ref_stats: object = None        # ref_stats.RefStats of the training set
  i3d_params: object = None
  i3d_net: object = None
  fvd_ref: object = None          # (mu, sigma) of the training clips' I3D
  i3d_random: bool = False        # tests' random I3D: flagged in outputs
  inception_input: str = "adm"    # inception.INPUT_KINDS
  fvd_ref_clips: int = 0          # the gFVD reference's clip count
  no_fvd_reason: str = ""         # videos without gFVD: why (outputs say it)


# The Inception Score's split size: ADM's evaluator's (contiguous chunks of
# 5,000 samples; frames, for videos).
IS_SPLIT_SIZE = 5000


def load_nets(data_config, mesh, who: str, *, inception_weights: str = "",
              ref_stats: str = "", i3d_weights: str = "",
              ref_examples: Optional[int] = None,
              inception_input: str = "adm") -> Nets:
  """Loads what scoring needs, failing now rather than after sampling.

  data_config: the (resolved) input config of the reference data; its
  `frames` > 1 means videos, scored with gFVD when i3d_weights is set.
  ref_stats: a .npz of tools/compute_ref_stats.py, else the training set's
  statistics over a seeded random ref_examples (default all), cached.
  who: the job or evaluator, named in warnings and errors.
  inception_input: "adm" (ADM's evaluator, the default: the numbers DiT and
  the paper report) or "pytorch_fid" (models/inception.py).
  """
  inception.check_input_kind(inception_input, f"{who}: inception_input")
  inc = common.load_inception(inception_weights, mesh,
                              f"{who}: gFID and gIS")
  nets = dict(inception_input=inception_input)
  if inc is not None:
    if ref_stats:
      ref = ref_stats_lib.load(ref_stats)
      ref_stats_lib.check_input(ref, inception_input, ref_stats)
    else:
      ref = ref_stats_lib.load_or_compute(
          data_config, inc, inception_weights, num_examples=ref_examples,
          random_subset=True, inception_input=inception_input)
    nets.update(inception_params=inc, ref_stats=ref,
                inception_net=inception.apply_fn(
                    mesh, spatial=True, input_kind=inception_input))
  if data_config.frames > 1 and not i3d_weights:
    raise ValueError(
        f"{who}: i3d_weights is not set, but the samples are clips, whose "
        "metric is gFVD (Table 7): set it to tools/convert_i3d.py's .npz "
        "(e.g. weights/i3d_kinetics400.npz), or to 'none' to score without "
        "gFVD (every output then says so)")
  if data_config.frames > 1 and i3d_weights == "none":
    nets["no_fvd_reason"] = "i3d_weights='none'"
  elif data_config.frames > 1:
    ref_stats_lib.check_fvd_frames(data_config.frames, f"{who} (gFVD)")
    i3d_params = common.load_i3d(i3d_weights, mesh, f"{who}: gFVD")
    nets["no_fvd_reason"] = f"no I3D weights at {i3d_weights}"
    if i3d_params is not None:
      nets.update(
          no_fvd_reason="",
          fvd_ref_clips=input_pipeline.eval_num_examples(data_config,
                                                         ref_examples),
          i3d_params=i3d_params, i3d_net=ref_stats_lib.i3d_apply_fn(mesh),
          fvd_ref=ref_stats_lib.load_or_compute_fvd(
              data_config, i3d_params, i3d_weights,
              num_examples=ref_examples),
          i3d_random=i3d_weights == "random")
  return Nets(**nets)


def score(samples: Iterable, num: int, nets: Nets, prefix: str, *,
          frames: int, mesh, local_batch: int, references=None) -> dict:
  """The metrics of `num` samples: `samples` yields this process's
  (images in [-1, 1], labels, sample numbers), at most local_batch a time;
  every process makes the same number of calls (a collective each)."""
  scorer = Scorer(num, nets.inception_params, references, frames, mesh=mesh,
                  local_batch=local_batch, net=nets.inception_net,
                  i3d_params=nets.i3d_params, i3d_net=nets.i3d_net,
                  is_split_size=IS_SPLIT_SIZE)
  for images, labels, index in samples:
    scorer.update(images, labels, index)
  scorer.sum_over_processes()
  out = scorer.results(prefix, nets.ref_stats, nets.fvd_ref, nets.i3d_random)
  if f"{prefix}/gfid" in out:  # what the Inception numbers were measured with
    out[f"{prefix}/gis_splits"] = float(scorer.score.splits)
    out[f"{prefix}/inception_input_adm"] = float(
        nets.inception_input == "adm")
  return out


def protocol(prefix: str, results: dict, nets: Nets, data_config) -> str:
  """What the numbers were measured on: for clips, how they are taken and
  the gFVD reference set (or why there is no gFVD); the Inception input and
  the IS splits."""
  n = int(results.get(f"{prefix}/num_samples") or 0)
  parts = []
  if data_config.frames > 1:
    clips = input_pipeline.describe_clips(data_config)
    if nets.no_fvd_reason:
      parts.append(f"gFVD NOT computed ({nets.no_fvd_reason})")
    else:
      parts.append(f"gFVD of {n} sampled clips of {data_config.frames} frames "
                   f"against {nets.fvd_ref_clips} real clips of {clips}, "
                   f"{data_config.data}" + (f" ({data_config.file_list})"
                                            if data_config.file_list else ""))
  if f"{prefix}/gfid" in results:
    splits = int(results.get(f"{prefix}/gis_splits") or 0)
    parts.append(f"{inception.INPUT_NAMES[nets.inception_input]}, gIS over "
                 f"{splits} split(s) of up to {IS_SPLIT_SIZE}")
  return "; ".join(parts) or f"{n} samples"


def count_name(n: int) -> str:
  """10000 -> "10k" (the paper's gFID-10k / gFID-50k), else the number."""
  return f"{n // 1000}k" if n % 1000 == 0 and n else str(n)


def summary(prefix: str, results: dict, label_kind: str,
            cfg_scale=None) -> str:
  """One line naming the sample count, the labels and every score."""
  r = lambda k: results.get(f"{prefix}/{k}")
  n = int(r("num_samples"))
  count = count_name(n)
  line = f"{prefix}: {n} samples ({label_kind} labels)"
  if cfg_scale is not None:
    line += f" at CFG {cfg_scale}"
  if r("gfid") is not None:
    adm = r("inception_input_adm") in (None, 1.0)
    splits = int(r("gis_splits") or 0)
    line += (f", gFID-{count} {metrics.format_distance(r('gfid'))}, "
             f"gIS {r('gis'):.2f}" +
             (f" ({splits} split{'s' if splits > 1 else ''} of up to "
              f"{IS_SPLIT_SIZE})" if splits else "") +
             (" [ADM's Inception input]" if adm else
              " [pytorch-fid's Inception input]"))
  if r("sfid") is not None:
    line += f", sFID {metrics.format_distance(r('sfid'))}"
  if r("gfvd") is not None:
    line += (f", gFVD-{count} {metrics.format_distance(r('gfvd'))}" +
             (" (RANDOM I3D weights)" if r("gfvd_random_i3d") else ""))
  if r("precision") is not None:
    line += (f", precision {r('precision'):.3f}, recall "
             f"{r('recall'):.3f} (ADM's, k=3)")
  if r("own_class_psnr") is not None:
    line += (f", PSNR to the nearest photo of their class "
             f"{r('own_class_psnr'):.2f} dB vs of another class "
             f"{r('other_class_psnr'):.2f} dB, nearest is their class for "
             f"{100 * r('nearest_is_own_class'):.0f}%")
  return line


class Scorer:
  """Accumulates Inception statistics, the IS, ADM's spatial statistics and
  (images) the pool features for precision/recall over generated samples,
  and (optionally) PSNR against labelled reference photos.

  With a `mesh`, Inception runs sharded like the batch: each process passes
  its own samples (at most `local_batch` per call, the same number of calls
  on every process) and `sum_over_processes` adds the sums at the end.
  `net` is inception.apply_fn(mesh, spatial=True), built once by the caller
  (a new one compiles anew).
  """

  def __init__(self, num_samples: int, inception_params=None,
               references=None, frames: int = 1, mesh=None,
               local_batch: int = 0, net=None, i3d_params=None, i3d_net=None,
               is_split_size: int = 0):
    self.inception_params = inception_params
    self.i3d_params = i3d_params  # videos: gFVD over whole clips
    if i3d_params is not None:
      self.fvd = metrics.GaussianStats(i3d.NUM_CLASSES)
      self._i3d = i3d_net or ref_stats_lib.i3d_apply_fn(mesh)
    self.mesh, self.local_batch = mesh, int(local_batch)
    self.num_samples, self.frames = int(num_samples), int(frames)
    if inception_params is not None:  # videos: frame-wise gFID/gIS/sFID
      self.stats = metrics.GaussianStats()
      self.spatial = metrics.GaussianStats(inception.SPATIAL_DIM)
      self.score = metrics.InceptionScore(num_samples * frames,
                                          split_size=is_split_size)
      self._net = net or inception.apply_fn(mesh, spatial=True)
      # Precision/recall need every sample's features at once: images only
      # (50k x 2048 float32 = 400 MB; a video's frames would be 16x that).
      self.features = [] if frames == 1 else None
      self.feature_index = []
    self.references = references  # (uint8 images [R, H, W, 3], labels [R])
    self.own, self.other, self.hits, self.n = 0.0, 0.0, 0, 0

  def _apply(self, net, params, x: np.ndarray, per: int):
    """net's outputs for this process's rows x ([b * per, ...]: `per` rows
    per sample), padded to the local batch on a mesh."""
    if self.mesh is None:
      return net(params, x)
    b = len(x) // per
    if b > self.local_batch:
      raise ValueError(f"Scorer got {b} samples, more than its local batch "
                       f"{self.local_batch}")
    pad = np.zeros(((self.local_batch - b) * per,) + x.shape[1:], x.dtype)
    out = net(params, sh.put_global_batch(np.concatenate([x, pad]).astype(
        np.float32), sh.batch_sharding(self.mesh)))
    rows = lambda o: multihost.local_rows(o)[:b * per]
    return tuple(map(rows, out)) if isinstance(out, tuple) else rows(out)

  def _inception(self, q: np.ndarray):
    """(pool, logits, spatial) of this process's uint8-grid images
    [b, (T,) H, W, 3], frame by frame."""
    per = int(np.prod(q.shape[1:-3], dtype=np.int64))  # frames per sample
    return self._apply(self._net, self.inception_params,
                       q.reshape((-1,) + q.shape[-3:]) / 255.0, per)

  def update(self, images: np.ndarray, labels: np.ndarray,
             index=None) -> None:
    """images: this process's samples; index: their sample numbers (the IS
    splits, the precision/recall rows; default: the order of the calls)."""
    q = np.asarray(metrics.quantize(images))
    if index is None:
      index = np.arange(self.n, self.n + len(q))
    index = np.asarray(index)
    self.n += len(q)
    if not len(q) and self.mesh is None:
      return
    if self.inception_params is not None:
      pool, logits, spatial = (np.asarray(o) for o in self._inception(q))
      self.stats.update(pool)
      self.spatial.update(spatial)
      findex = None
      if len(q):  # frame f of sample i: i * frames + f
        frames = len(pool) // len(q)
        findex = (index[:, None] * frames +
                  np.arange(frames)[None]).reshape(-1)
      self.score.update(logits, index=findex)
      if self.features is not None and len(q):
        self.features.append(pool.astype(np.float32))
        self.feature_index.append(index)
    if self.i3d_params is not None:  # whole clips on the uint8 grid, [-1, 1]
      feats = self._apply(self._i3d, self.i3d_params, q / 127.5 - 1.0, 1)
      self.fvd.update(np.asarray(feats))
    if self.references is not None and len(q):
      ref, ref_labels = self.references
      # PSNR of every sample against every reference photo [b, R].
      diff = q[:, None].astype(np.float64) - ref[None]
      mse = (diff ** 2).reshape(diff.shape[:2] + (-1,)).mean(-1)
      psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))
      same = labels[:, None] == ref_labels[None]
      own = np.where(same, psnr, -np.inf).max(1)
      other = np.where(~same, psnr, -np.inf).max(1)
      self.own += float(own[np.isfinite(own)].sum())
      self.other += float(other[np.isfinite(other)].sum())
      self.hits += int((own > other).sum())

  def sum_over_processes(self) -> "Scorer":
    """Adds every process's sums (each scored its own samples), and gathers
    the features precision/recall need on every process."""
    n, self.own, self.other, hits = multihost.sum_over_processes(
        (self.n, self.own, self.other, self.hits))
    self.n, self.hits = int(round(float(n))), int(round(float(hits)))
    self.own, self.other = float(self.own), float(self.other)
    if self.i3d_params is not None:
      self.fvd.sum_over_processes()
    if self.inception_params is not None:
      self.stats.sum_over_processes()
      self.spatial.sum_over_processes()
      self.score.sum_over_processes()
      if self.features is not None:
        dim = self.stats.s1.shape[0]
        rows = (np.concatenate(self.features) if self.features
                else np.zeros((0, dim), np.float32))
        at = (np.concatenate(self.feature_index) if self.feature_index
              else np.zeros(0, np.int64))
        self.features = [multihost.gather_rows(rows, at, self.n)]
        self.feature_index = [np.arange(self.n)]
    return self

  def results(self, prefix: str, ref=None, fvd_ref=None,
              random_i3d: bool = False) -> dict:
    """ref: ref_stats.RefStats (or (mu, sigma): gFID only). sFID and
    precision/recall are left out when ref lacks their statistics. fvd_ref:
    (mu, sigma) of the training clips' I3D features (gFVD)."""
    out = {f"{prefix}/num_samples": float(self.n)}
    if self.i3d_params is not None and fvd_ref is not None:
      out[f"{prefix}/gfvd"] = metrics.frechet_distance(*self.fvd.mean_cov(),
                                                       *fvd_ref)
      out[f"{prefix}/gfvd_random_i3d"] = float(random_i3d)
    if self.inception_params is not None and ref is not None:
      if not isinstance(ref, ref_stats_lib.RefStats):
        ref = ref_stats_lib.RefStats(ref[0], ref[1], 0)
      out[f"{prefix}/gfid"] = metrics.frechet_distance(
          *self.stats.mean_cov(), ref.mu, ref.sigma)
      out[f"{prefix}/gis"], out[f"{prefix}/gis_std"] = self.score.result()
      if ref.spatial is not None:
        out[f"{prefix}/sfid"] = metrics.frechet_distance(
            *self.spatial.mean_cov(), *ref.spatial)
      if self.features is not None and ref.features is not None:
        p, r = precision_recall.precision_recall(self.features[0],
                                                 ref.features)
        out[f"{prefix}/precision"], out[f"{prefix}/recall"] = p, r
      missing = [m for m, ok in (("sFID", ref.spatial is not None), (
          "precision/recall", ref.features is not None)) if not ok]
      if missing:
        logging.warning("%s: the reference statistics have no %s (written "
                        "before they existed: recompute them with "
                        "tools/compute_ref_stats.py)", prefix,
                        " or ".join(missing))
    if self.references is not None and self.n:
      out[f"{prefix}/own_class_psnr"] = self.own / self.n
      out[f"{prefix}/other_class_psnr"] = self.other / self.n
      out[f"{prefix}/nearest_is_own_class"] = self.hits / self.n
    return out
