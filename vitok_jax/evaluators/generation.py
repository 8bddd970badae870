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
  inception_input:   "adm" (default: TF1's bilinear resize and (x - 128) /
                     128, as ADM's evaluator, whose numbers DiT and the
                     paper report) or "pytorch_fid" (models/inception.py);
                     named in every output. gIS uses ADM's splits of 5,000.
  ref_stats:         .npz of tools/compute_ref_stats.py over the training set
                     (its evaluation crops); default: the cache file
                     evaluators/ref_stats.py names for `data` (default the
                     training input) and a seeded random ref_examples of it
                     (default all), computed at the first start (refused
                     above 50k examples: the error names the tool command)
                     and reused after
  i3d_weights:       videos (required: gFVD is their metric; "none" scores
                     without it, and every output says so): .npz from
                     tools/convert_i3d.py for gFVD; its
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
from typing import Callable

import jax
import ml_collections
import numpy as np

from jax.experimental import multihost_utils

from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import common
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import scoring
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh


LABELS = ("random", "balanced", "data")


def sample_labels(num_samples: int, num_classes: int, kind: str = "random",
                  seed: int = 0, data_labels=None) -> np.ndarray:
  """The classes of samples 0 .. num_samples - 1: uniform random (seeded;
  DiT's protocol), balanced (the classes in turn), or "data": the labels of
  seeded random real examples (`data_labels`, every example's label: the
  data's class frequencies, as LARP's gFVD protocol samples UCF-101)."""
  if kind == "balanced":
    return (np.arange(num_samples) % num_classes).astype(np.int32)
  if kind == "random":
    return np.random.default_rng(seed).integers(
        0, num_classes, num_samples).astype(np.int32)
  if kind == "data":
    data_labels = np.asarray(data_labels if data_labels is not None else [])
    if not data_labels.size or data_labels.min() < 0:
      raise ValueError("labels='data' needs a labelled data set (every "
                       "example with a class)")
    pick = np.random.default_rng(seed).integers(0, len(data_labels),
                                                num_samples)
    return data_labels[pick].astype(np.int32)
  raise ValueError(f"labels={kind!r}: expected one of {LABELS}")


def generate(sample: Callable, params, labels: np.ndarray, batch_size: int,
             mesh, seed: int = 0, skip=None):
  """Yields (images [b, H, W, 3] in [-1, 1], labels [b], sample numbers [b])
  batch by batch: this process's rows of each global batch.

  sample(params, labels, index, seed) is the sampler (diffusion/sampler.py): sample
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
      inception_weights="", inception_input="adm", ref_stats="",
      ref_examples=placeholder(int),
      i3d_weights="",
      nearest=False, data=common.data_fields()))


class Evaluator:
  """predict_fns["sample"](cfg_scale, num_steps) -> fn(dit params, labels
  [B], index [B], seed) -> images; predict_fns["num_classes"]."""

  def __init__(self, name: str, config, *, predict_fns, mesh,
               input_config=None):
    config = common.complete(name, config, default_config())
    self.name, self.config, self.mesh = name, config, mesh
    self.sample = predict_fns["sample"](config.cfg_scale, config.num_steps)
    self.num_classes = int(predict_fns["num_classes"])
    if config.labels not in LABELS:
      raise ValueError(f"config.evals.{name}.labels={config.labels!r}: "
                       f"expected one of {LABELS}")
    if config.batch_size % mesh.size:
      raise ValueError(f"config.evals.{name}.batch_size={config.batch_size} "
                       f"is not divisible by the {mesh.size} devices")
    self.log_steps = config.log_steps
    self.data_config = common.data_config(input_config, config.data)
    # Loaded and compiled once per run, not at every evaluation.
    self.nets = scoring.load_nets(
        self.data_config, mesh, f"evals.{name}",
        inception_weights=config.inception_weights,
        ref_stats=config.ref_stats, i3d_weights=config.i3d_weights,
        ref_examples=config.ref_examples,
        inception_input=config.inception_input)
    self.references = (reference_photos(self.data_config)
                       if config.nearest else None)
    self.data_labels = (input_pipeline.source_labels(self.data_config)
                        if config.labels == "data" else None)

  def run(self, params, final: bool = False) -> common.Results:
    """A periodic evaluation (num_samples) or the final one
    (final_num_samples: the run's last step, the eval job)."""
    c = self.config
    num = c.final_num_samples if final else c.num_samples
    labels = sample_labels(num, self.num_classes, c.labels, c.seed,
                           self.data_labels)
    samples = generate(self.sample, params, labels, c.batch_size, self.mesh,
                       c.seed)
    yield from scoring.score(
        samples, num, self.nets, self.name, frames=self.data_config.frames,
        mesh=self.mesh, local_batch=c.batch_size // jax.process_count(),
        references=self.references).items()

  def protocol(self, results: dict) -> str:
    return scoring.protocol(self.name, results, self.nets, self.data_config)

  def summary(self, results: dict) -> str:
    line = scoring.summary(self.name, results, self.config.labels,
                           self.config.cfg_scale)
    if self.data_config.frames > 1:  # gFVD's clips and reference set
      line += f" [{self.protocol(results)}]"
    return line
