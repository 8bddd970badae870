"""Generation evaluator: DiT samples scored by ADM's evaluator protocol.

Images: gFID, gIS, sFID, precision and recall (k = 3) against the training
set's reference statistics (evaluators/ref_stats.py); videos: gFVD (I3D
features of whole clips against the training clips', Table 7) and
frame-wise gFID, gIS and sFID. Optionally nearest-photo checks. Every output names its count
(<name>/num_samples) and the summary line says it ("gFID-10k").

config.evals.<name> fields (type="generation"):
  num_samples:       samples of a periodic evaluation during training
                     (default 10k: 50k x 250 steps x 2 every 50k steps would
                     cost more than half the training compute)
  final_num_samples: samples of the final evaluation (the last step of the
                     run, and the eval job): 50k, the paper's tables
  labels:            "random": uniform random classes, seeded by `seed`
                     (DiT's sampling protocol); "balanced": the classes in
                     turn 0, 1, ..., num_classes - 1 (equal counts)
  batch_size:        global batch of the sampler (divisible by the mesh)
  cfg_scale:         guidance scale (default config.sampling.cfg_scale)
  num_steps:         DDIM steps (default config.sampling.num_steps)
  log_steps:         every how many training steps (training loop only)
  inception_weights: .npz from tools/convert_inception.py; missing -> gFID
                     and gIS are skipped with a warning
  ref_stats:         .npz of tools/compute_ref_stats.py over the training set
                     (its evaluation crops); default: the cache file
                     evaluators/ref_stats.py names for `data` (default the
                     training input) and a seeded random ref_examples of it
                     (default all), computed at the first start (refused
                     above 50k examples: the error names the tool command)
                     and reused after
  i3d_weights:       videos: .npz from tools/convert_i3d.py for gFVD; its
                     reference statistics come from a seeded random
                     ref_examples (default all) of the training clips,
                     computed once and cached next to the weights; "random"
                     (tests) is flagged as <name>/gfvd_random_i3d = 1
  nearest:           also compare each sample with the photos of `data` by
                     PSNR (small data sets: is a sample of class k nearest
                     to a photo of class k?): <name>/own_class_psnr,
                     <name>/other_class_psnr, <name>/nearest_is_own_class
  seed:              the samples' noise and random labels (fixed:
                     evaluations are comparable)
  data:              the keys of config.input the references come from;
                     unset ones are the training input's
  log_steps:         0 = only at the end

Every field is in default_config() below and can be set from the command
line (--config.evals.<name>.<field>=...).
"""
import logging
from typing import Callable

import jax
import ml_collections
import numpy as np

from jax.experimental import multihost_utils

from vitok_jax import input_pipeline
from vitok_jax import multihost
from vitok_jax import sharding as sh
from vitok_jax.evaluators import common
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import precision_recall
from vitok_jax.evaluators import ref_stats as ref_stats_lib
from vitok_jax.models import i3d
from vitok_jax.models import inception


LABELS = ("random", "balanced")


def sample_labels(num_samples: int, num_classes: int, kind: str = "random",
                  seed: int = 0) -> np.ndarray:
  """The classes of samples 0 .. num_samples - 1: uniform random (seeded;
  DiT's protocol) or balanced (the classes in turn)."""
  if kind == "balanced":
    return (np.arange(num_samples) % num_classes).astype(np.int32)
  if kind == "random":
    return np.random.default_rng(seed).integers(
        0, num_classes, num_samples).astype(np.int32)
  raise ValueError(f"labels={kind!r}: expected one of {LABELS}")


def generate(sample: Callable, params, labels: np.ndarray, batch_size: int,
             mesh, seed: int = 0, skip=None):
  """Yields (images [b, H, W, 3] in [-1, 1], labels [b], sample numbers [b])
  batch by batch: this process's rows of each global batch.

  sample(params, labels, index, seed) is the sampler (sampling.py): sample
  i's noise depends on (seed, i) alone. The last batch is padded and the
  padding dropped here; so are the samples for which skip(index) is True
  (already written by an earlier run), and a batch with nothing left to
  sample on any process is not sampled at all.
  """
  batch_sh = sh.batch_sharding(mesh)
  rows = batch_size // jax.process_count()
  first = jax.process_index() * rows
  for start in range(0, len(labels), batch_size):
    global_index = np.arange(start, start + batch_size)
    todo = global_index < len(labels)
    if skip is not None:
      todo &= ~skip(global_index)
    if not todo.any():  # the same decision on every process
      continue
    y_full = labels[np.minimum(global_index, len(labels) - 1)]
    local = slice(first, first + rows)
    y, index = sh.put_global_batch(
        (y_full[local], global_index[local].astype(np.int32)), batch_sh)
    images = multihost.local_rows(sample(params, y, index, seed))
    keep = todo[local]
    yield images[keep], y_full[local][keep], global_index[local][keep]


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
               local_batch: int = 0, net=None, i3d_params=None, i3d_net=None):
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
      self.score = metrics.InceptionScore(num_samples * frames)
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


def reference_photos(data_config, max_examples: int = 256):
  """uint8 evaluation crops and labels of a (small) labelled data set; every
  process gets all of them (each reads its share, then they are gathered)."""
  images, labels, masks = [], [], []
  batch = 16 * jax.process_count()
  for b in input_pipeline.make_eval_dataset(data_config, batch, max_examples):
    images.append(np.asarray(metrics.quantize(b["image"])).astype(np.uint8))
    labels.append(b["label"])
    masks.append(b["mask"])
  images, labels, masks = (np.concatenate(images), np.concatenate(labels),
                           np.concatenate(masks))
  if jax.process_count() > 1:
    images, labels, masks = (
        np.asarray(a).reshape((-1,) + a.shape[1:]) for a in
        multihost_utils.process_allgather((images, labels, masks)))
  return images[masks], labels[masks]


NEEDS = ("sample", "num_classes")


def default_config() -> ml_collections.ConfigDict:
  """Every field of a generation evaluator, with its default; unset
  cfg_scale and num_steps are config.sampling's."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(dict(
      type="generation", log_steps=0, num_samples=10_000,
      final_num_samples=50_000, labels="random", batch_size=64,
      seed=0, cfg_scale=placeholder(float), num_steps=placeholder(int),
      inception_weights="", ref_stats="", ref_examples=placeholder(int),
      i3d_weights="",
      nearest=False, data=common.data_fields()))


class Evaluator:
  """predict_fns["sample"](cfg_scale, num_steps) -> fn(dit params, labels
  [B], index [B], seed) -> images; predict_fns["num_classes"]."""

  def __init__(self, name: str, config, *, predict_fns, mesh,
               input_config=None):
    config = common.complete(name, config, default_config())
    self.name = name
    self.sample = predict_fns["sample"](config.get("cfg_scale"),
                                        config.get("num_steps"))
    self.num_classes = int(predict_fns["num_classes"])
    self.label_kind = config.labels
    if self.label_kind not in LABELS:
      raise ValueError(f"config.evals.{name}.labels={self.label_kind!r}: "
                       f"expected one of {LABELS}")
    self.mesh = mesh
    self.num_samples = int(config.num_samples)
    self.final_num_samples = int(config.final_num_samples)
    self.batch_size = int(config.get("batch_size", 64))
    if self.batch_size % mesh.size:
      raise ValueError(f"config.evals.{name}.batch_size={self.batch_size} is "
                       f"not divisible by the {mesh.size} devices")
    self.log_steps = config.get("log_steps")
    self.seed = int(config.get("seed", 0))
    self.cfg_scale = config.get("cfg_scale")
    self.data_config = common.data_config(input_config, config.data)
    self.frames = self.data_config.get("frames") or 1
    self.ref_stats = None
    self.inception_params = common.load_inception(
        config.get("inception_weights"), mesh, f"evals.{name}: gFID and gIS")
    if self.inception_params is not None:
      if config.get("ref_stats"):
        self.ref_stats = ref_stats_lib.load(config.get("ref_stats"))
      else:  # the training set's evaluation crops, computed once
        self.ref_stats = ref_stats_lib.load_or_compute(
            self.data_config, self.inception_params,
            config.get("inception_weights"),
            num_examples=config.get("ref_examples"), random_subset=True)
    self.references = (reference_photos(self.data_config)
                       if config.get("nearest") else None)
    # Compiled once per run, not at every evaluation.
    self.net = (inception.apply_fn(mesh, spatial=True)
                if self.inception_params is not None else None)
    self.i3d_params, self.i3d_net, self.fvd_ref = None, None, None
    self.i3d_random = config.get("i3d_weights") == "random"
    if self.frames > 1 and config.get("i3d_weights"):
      ref_stats_lib.check_fvd_frames(self.frames,
                                     f"config.evals.{name} (gFVD)")
      self.i3d_params = common.load_i3d(config.get("i3d_weights"), mesh,
                                        f"evals.{name}: gFVD")
      if self.i3d_params is not None:
        self.i3d_net = ref_stats_lib.i3d_apply_fn(mesh)
        self.fvd_ref = ref_stats_lib.load_or_compute_fvd(
            self.data_config, self.i3d_params, config.get("i3d_weights"),
            num_examples=config.get("ref_examples"))

  def run(self, params, final: bool = False) -> common.Results:
    """A periodic evaluation (num_samples) or the final one
    (final_num_samples: the run's last step, the eval job)."""
    num = self.final_num_samples if final else self.num_samples
    scorer = Scorer(num, self.inception_params, self.references,
                    self.frames, mesh=self.mesh,
                    local_batch=self.batch_size // jax.process_count(),
                    net=self.net, i3d_params=self.i3d_params,
                    i3d_net=self.i3d_net)
    labels = sample_labels(num, self.num_classes, self.label_kind, self.seed)
    for images, y, index in generate(self.sample, params, labels,
                                     self.batch_size, self.mesh, self.seed):
      scorer.update(images, y, index)
    scorer.sum_over_processes()
    yield from scorer.results(self.name, self.ref_stats, self.fvd_ref,
                              self.i3d_random).items()

  def summary(self, results: dict) -> str:
    r = lambda k: results.get(f"{self.name}/{k}")
    n = int(r("num_samples"))
    count = f"{n // 1000}k" if n % 1000 == 0 and n else str(n)
    line = f"{self.name}: {n} samples ({self.label_kind} labels)"
    if self.cfg_scale is not None:
      line += f" at CFG {self.cfg_scale}"
    if r("gfid") is not None:
      line += f", gFID-{count} {r('gfid'):.2f}, gIS {r('gis'):.2f}"
    if r("sfid") is not None:
      line += f", sFID {r('sfid'):.2f}"
    if r("gfvd") is not None:
      line += (f", gFVD-{count} {r('gfvd'):.2f}" +
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
