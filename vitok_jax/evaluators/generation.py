"""Generation evaluator: gFID, gIS (and nearest-photo checks) of DiT samples.

config.evals.<name> fields (type="generation"):
  num_samples:       how many images to generate (50k in the paper); the
                     classes cycle 0, 1, ..., num_classes - 1 (balanced)
  batch_size:        global batch of the sampler (divisible by the mesh)
  cfg_scale:         guidance scale (default config.sampling.cfg_scale)
  num_steps:         DDIM steps (default config.sampling.num_steps)
  log_steps:         every how many training steps (training loop only)
  inception_weights: .npz from tools/convert_inception.py; missing -> gFID
                     and gIS are skipped with a warning
  ref_stats:         .npz of tools/compute_ref_stats.py over the training set
                     (its evaluation crops); otherwise computed here from
                     `data` (default the training input), ref_examples of it
  nearest:           also compare each sample with the photos of `data` by
                     PSNR (small data sets: is a sample of class k nearest
                     to a photo of class k?): <name>/own_class_psnr,
                     <name>/other_class_psnr, <name>/nearest_is_own_class
  seed:              the samples' noise (fixed: evaluations are comparable)
"""
import logging
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from vitok_jax import input_pipeline
from vitok_jax import sharding as sh
from vitok_jax.evaluators import common
from vitok_jax.evaluators import metrics
from vitok_jax.models import inception


def sample_labels(num_samples: int, num_classes: int) -> np.ndarray:
  return (np.arange(num_samples) % num_classes).astype(np.int32)


def generate(sample: Callable, params, labels: np.ndarray, batch_size: int,
             mesh, seed: int = 0):
  """Yields (images [b, H, W, 3] in [-1, 1], labels [b]) batch by batch;
  the last batch is padded for the sampler and trimmed here. Every process
  gets every image (the sampler's output is replicated)."""
  batch_sh = sh.batch_sharding(mesh)
  for i, start in enumerate(range(0, len(labels), batch_size)):
    y = labels[start:start + batch_size]
    pad = batch_size - len(y)
    y_full = np.concatenate([y, np.zeros((pad,), np.int32)])
    # Each process passes its rows of the global label batch.
    rows = batch_size // jax.process_count()
    local = y_full[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    images = sample(params, sh.put_global_batch(local, batch_sh),
                    jax.random.key(seed * 1_000_003 + i))
    yield np.asarray(images)[:len(y)], y


class Scorer:
  """Accumulates Inception statistics and the IS over generated images, and
  (optionally) PSNR against labelled reference photos."""

  def __init__(self, num_samples: int, inception_params=None,
               references=None, frames: int = 1):
    self.inception_params = inception_params
    if inception_params is not None:  # videos: frame-wise gFID/gIS
      self.stats = metrics.GaussianStats()
      self.score = metrics.InceptionScore(num_samples * frames)
      net = inception.FIDInceptionV3()
      self._net = jax.jit(lambda p, x: net.apply({"params": p}, x))
    self.references = references  # (uint8 images [R, H, W, 3], labels [R])
    self.own, self.other, self.hits, self.n = 0.0, 0.0, 0, 0

  def update(self, images: np.ndarray, labels: np.ndarray) -> None:
    q = np.asarray(metrics.quantize(images))
    self.n += len(q)
    if self.inception_params is not None:
      pool, logits = self._net(self.inception_params,
                               q.reshape((-1,) + q.shape[-3:]) / 255.0)
      self.stats.update(np.asarray(pool))
      self.score.update(np.asarray(logits))
    if self.references is not None:
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

  def results(self, prefix: str, ref_stats=None) -> dict:
    out = {f"{prefix}/num_samples": float(self.n)}
    if self.inception_params is not None and ref_stats is not None:
      out[f"{prefix}/gfid"] = metrics.frechet_distance(
          *self.stats.mean_cov(), *ref_stats)
      out[f"{prefix}/gis"], out[f"{prefix}/gis_std"] = self.score.result()
    if self.references is not None and self.n:
      out[f"{prefix}/own_class_psnr"] = self.own / self.n
      out[f"{prefix}/other_class_psnr"] = self.other / self.n
      out[f"{prefix}/nearest_is_own_class"] = self.hits / self.n
    return out


def reference_photos(data_config, max_examples: int = 256):
  """uint8 evaluation crops and labels of a (small) labelled data set."""
  images, labels = [], []
  for b in input_pipeline.make_eval_dataset(data_config, 16, max_examples):
    images.append(np.asarray(metrics.quantize(b["image"]))[b["mask"]])
    labels.append(b["label"][b["mask"]])
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels)


def reference_stats(data_config, inception_params, num_examples=None,
                    batch_size: int = 50) -> metrics.GaussianStats:
  """Inception statistics of a data set's evaluation crops (frame-wise for
  videos); tools/compute_ref_stats.py saves them."""
  net = inception.FIDInceptionV3()
  fn = jax.jit(lambda p, x: net.apply({"params": p}, x)[0])
  stats = metrics.GaussianStats()
  n = input_pipeline.eval_num_examples(data_config, num_examples)
  batch = min(batch_size, -(-n // jax.process_count()) * jax.process_count())
  for b in input_pipeline.make_eval_dataset(data_config, batch, num_examples):
    q = np.asarray(metrics.quantize(b["image"][b["mask"]])) / 255.0
    stats.update(np.asarray(fn(inception_params,
                               q.reshape((-1,) + q.shape[-3:]))))
  return stats


class Evaluator:

  def __init__(self, name: str, config, *, sample: Callable, num_classes: int,
               mesh, input_config=None):
    self.name = name
    self.sample = sample  # (dit params, labels [B], rng) -> images
    self.mesh = mesh
    self.num_classes = num_classes
    self.num_samples = int(config.get("num_samples", 50_000))
    self.batch_size = int(config.get("batch_size", 64))
    if self.batch_size % mesh.size:
      raise ValueError(f"config.evals.{name}.batch_size={self.batch_size} is "
                       f"not divisible by the {mesh.size} devices")
    self.log_steps = config.get("log_steps")
    self.seed = int(config.get("seed", 0))
    self.cfg_scale = config.get("cfg_scale")
    data = dict(input_config or {})
    data.update(dict(config.get("data") or {}))
    self.data_config = ml_collections.ConfigDict(
        {k: data.get(k) for k in ("data", "data_dir", "image_key", "res",
                                  "frames", "fps", "src_fps", "video_key")})
    self.frames = self.data_config.get("frames") or 1
    self.inception_params, self.ref_stats = None, None
    try:
      self.inception_params = jax.device_put(
          inception.load(config.get("inception_weights")),
          sh.replicated(mesh))
    except FileNotFoundError as e:
      logging.warning("evals.%s: gFID and gIS are SKIPPED: %s", name, e)
    if self.inception_params is not None:
      if config.get("ref_stats"):
        with np.load(os.path.expanduser(config.get("ref_stats"))) as f:
          self.ref_stats = (f["mu"], f["sigma"])
      else:  # the training set's evaluation crops, computed once
        self.ref_stats = reference_stats(
            self.data_config, self.inception_params,
            config.get("ref_examples")).mean_cov()
    self.references = (reference_photos(self.data_config)
                       if config.get("nearest") else None)

  def run(self, params) -> common.Results:
    scorer = Scorer(self.num_samples, self.inception_params, self.references,
                    self.frames)
    labels = sample_labels(self.num_samples, self.num_classes)
    for images, y in generate(self.sample, params, labels, self.batch_size,
                              self.mesh, self.seed):
      scorer.update(images, y)
    yield from scorer.results(self.name, self.ref_stats).items()

  def summary(self, results: dict) -> str:
    r = lambda k: results.get(f"{self.name}/{k}")
    line = f"{self.name}: {int(r('num_samples'))} samples"
    if self.cfg_scale is not None:
      line += f" at CFG {self.cfg_scale}"
    if r("gfid") is not None:
      line += f", gFID {r('gfid'):.2f}, gIS {r('gis'):.2f}"
    if r("own_class_psnr") is not None:
      line += (f", PSNR to the nearest photo of their class "
               f"{r('own_class_psnr'):.2f} dB vs of another class "
               f"{r('other_class_psnr'):.2f} dB, nearest is their class for "
               f"{100 * r('nearest_is_own_class'):.0f}%")
    return line
