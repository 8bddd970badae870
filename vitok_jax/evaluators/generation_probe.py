"""Generation probe: how good a tokenizer checkpoint's latents are for
generation, measured during tokenizer training (the paper's question:
reconstruction and generation part ways as E grows, Fig. 2 vs Fig. 5).

For the checkpoint at hand: encode a fixed set of training views (a seeded
subset of the training data, augmented as in training by a seeded rng: the
same images on any process count; input_pipeline.make_eval_dataset with
views_seed), train a small class-conditional DiT on those latents for a
fixed number of steps with a fixed recipe and seed (trainers/probe.py), sample
a fixed number of images with fixed noise and labels, and score them as
the generation evaluator does (evaluators/scoring.py) against the same
training views: probe gFID, gIS, sFID, precision/recall (and gFVD for
clips, with I3D weights), optionally PSNR to the nearest view of the
sample's class. Every output names the probe's recipe; a probe number
compares only with probe numbers of the same recipe.

config.evals.<name> fields (type="generation_probe"; the tokenizer trainer
and the eval job on a tokenizer run provide what it needs):
  num_examples, views_seed, encode_batch: the training views (count, seed)
                     and the encoding batch (divisible by the mesh)
  dit_size, dtype, kind, steps, batch_size, base_lr, warmup_steps,
  ema_decay:         the probe DiT's recipe (trainers/dit.py's model and
                     step; peak lr = base_lr x batch_size / 256)
  num_samples, sample_batch, sample_steps, cfg_scale, labels, seed: the
                     samples (DDIM steps, or ODE steps for kind="flow";
                     labels "random", "balanced" or "data": the views'),
                     the same at every evaluation (`final` changes nothing)
  inception_weights: .npz of tools/convert_inception.py; "random": a random
                     Inception (tests, machines without the weights: every
                     output flags it); missing file -> no gFID, with a warning
  inception_input:   "adm" (default) or "pytorch_fid"
  i3d_weights:       clips: tools/convert_i3d.py's .npz (or "random") for gFVD
  nearest:           also PSNR of each sample to the nearest view of its
                     class vs of another class (small data sets)
  data:              the keys of config.input the views come from
  log_steps:         every how many training steps (0: only at the end)

The encoded views are cached for the checkpoint last probed, so several
probes of one checkpoint (other seeds: the probe's own spread) encode once.
"""
import functools
import logging

import jax
import ml_collections
import numpy as np

from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import common
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import ref_stats as ref_stats_lib
from vitok_jax.evaluators import scoring
from vitok_jax.models import inception
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh
import vitok_jax.utils as u

NEEDS = ("codec", "fit_probe")
MAX_NEAREST_VIEWS = 4096  # every process holds the views for `nearest`
_CACHE = {}  # the last checkpoint's encoded views: {key: (leaves, latents)}


def default_config() -> ml_collections.ConfigDict:
  """Every field of a generation probe, with its default: a small DiT for
  a short budget on GPUs/TPUs (not tuned: a starting point; the mini
  sweep's :runlocal recipe is in configs/vitok/mini_e_sweep.py)."""
  return ml_collections.ConfigDict(dict(
      type="generation_probe", log_steps=0, num_examples=10_000,
      views_seed=0, encode_batch=64, dit_size="S", dtype="bfloat16",
      kind="ddpm", steps=20_000, batch_size=256, base_lr=2e-4,
      warmup_steps=1000, ema_decay=0.999, num_samples=10_000,
      sample_batch=64, sample_steps=50, cfg_scale=1.5, labels="random",
      seed=0, inception_weights="weights/fid_inception_v3.npz",
      inception_input="adm", i3d_weights="", nearest=False,
      data=common.data_fields()))


@functools.lru_cache(maxsize=None)
def _inception_net(mesh, input_kind: str):
  """One jitted Inception per mesh and input for every probe of a job."""
  return inception.apply_fn(mesh, spatial=True, input_kind=input_kind)


def recipe(c, num_classes: int) -> str:
  """The probe's recipe in words (every output names it)."""
  sampler = "DDIM" if c.kind == "ddpm" else "ODE"
  return (f"probe DiT-{c.dit_size} ({c.kind}, {num_classes} classes) "
          f"trained {c.steps} steps at batch {c.batch_size}, base lr "
          f"{c.base_lr:g}, seed {c.seed}, on the latents of {c.num_examples} "
          f"training views (seed {c.views_seed}); {c.num_samples} samples, "
          f"{c.labels} labels, CFG {c.cfg_scale:g}, {c.sample_steps} "
          f"{sampler} steps")


class Evaluator:
  """predict_fns["codec"](data config) -> diffusion/codec.Codec of the
  tokenizer (params passed at each call); predict_fns["fit_probe"]:
  trainers/probe.fit."""

  def __init__(self, name: str, config, *, predict_fns, mesh,
               input_config=None):
    c = common.complete(name, config, default_config())
    self.name, self.config, self.mesh = name, c, mesh
    self.log_steps = c.log_steps
    for key in ("encode_batch", "batch_size", "sample_batch"):
      if c[key] % mesh.size:
        raise ValueError(f"config.evals.{name}.{key}={c[key]} is not "
                         f"divisible by the {mesh.size} devices")
    if c.labels not in generation.LABELS:
      raise ValueError(f"config.evals.{name}.labels={c.labels!r}: expected "
                       f"one of {generation.LABELS}")
    if c.nearest and c.num_examples > MAX_NEAREST_VIEWS:
      raise ValueError(f"config.evals.{name}.nearest needs every view on "
                       f"every process: num_examples={c.num_examples} is "
                       f"over {MAX_NEAREST_VIEWS}")
    self.data_config = common.data_config(input_config, c.data)
    self.codec = predict_fns["codec"](self.data_config)
    self.fit = predict_fns["fit_probe"]
    self.encode = jax.jit(self.codec.encode,
                          in_shardings=(sh.replicated(mesh),
                                        sh.batch_sharding(mesh)),
                          out_shardings=sh.batch_sharding(mesh))
    self._scan_views()

  def _views(self):
    """This process's batches of the probe's training views."""
    c = self.config
    return input_pipeline.make_eval_dataset(
        self.data_config, c.encode_batch, c.num_examples,
        views_seed=c.views_seed)

  def _scan_views(self):
    """Once per run: the views' labels (every process), their reference
    statistics for the scores, and for `nearest` the views themselves."""
    c, who = self.config, f"evals.{self.name}"
    frames = self.data_config.frames
    if c.inception_weights == "random":
      logging.warning("%s: gFID uses a RANDOM Inception: not comparable to "
                      "any published number", who)
      inc = jax.device_put(u.random_frozen_params(
          inception.abstract_params()), sh.replicated(self.mesh))
    else:
      inc = common.load_inception(c.inception_weights, self.mesh,
                                  f"{who}: probe gFID")
    i3d = None
    if frames > 1 and c.i3d_weights:
      ref_stats_lib.check_fvd_frames(frames, f"{who} (gFVD)")
      i3d = common.load_i3d(c.i3d_weights, self.mesh, f"{who}: probe gFVD")
    net = (_inception_net(self.mesh, c.inception_input)
           if inc is not None else None)
    i3d_net = ref_stats_lib.i3d_apply_fn(self.mesh) if i3d is not None else None
    real = scoring.Scorer(c.num_examples, inc, None, frames, mesh=self.mesh,
                          local_batch=c.encode_batch // jax.process_count(),
                          net=net, i3d_params=i3d, i3d_net=i3d_net)
    labels, index, views = [], [], []
    for b in self._views():
      m = b["mask"]
      real.update(b["image"][m], b["label"][m], b["index"][m])
      labels.append(b["label"][m])
      index.append(b["index"][m])
      if c.nearest:
        views.append(np.asarray(metrics.quantize(b["image"][m]), np.uint8))
    real.sum_over_processes()
    index = np.concatenate(index)
    self.labels = multihost.gather_rows(np.concatenate(labels), index,
                                        c.num_examples)
    self.num_classes = max(int(self.labels.max()) + 1, 1)
    self.references = None
    if c.nearest:
      self.references = (multihost.gather_rows(np.concatenate(views), index,
                                               c.num_examples), self.labels)
    ref, fvd_ref = None, None
    if inc is not None:
      ref = ref_stats_lib.RefStats(
          *real.stats.mean_cov(), n=real.n,
          spatial=real.spatial.mean_cov(),
          features=real.features[0] if real.features is not None else None,
          inception_input=c.inception_input)
    if i3d is not None:
      fvd_ref = real.fvd.mean_cov()
    self.nets = scoring.Nets(
        inception_params=inc, inception_net=net, ref_stats=ref,
        i3d_params=i3d, i3d_net=i3d_net, fvd_ref=fvd_ref,
        i3d_random=c.i3d_weights == "random",
        inception_input=c.inception_input, fvd_ref_clips=c.num_examples,
        no_fvd_reason="" if i3d is not None else "no i3d_weights")

  def latents(self, params, tok_params) -> np.ndarray:
    """The views' latents [N, tokens, c] (float32, every process) by
    tok_params (`params` replicated), encoded once per checkpoint: the last
    one is cached, keyed by its arrays."""
    c = self.config
    leaves = jax.tree.leaves(params)
    key = (tuple(id(l) for l in leaves), repr(self.data_config),
           c.num_examples, c.views_seed)
    if key in _CACHE:
      return _CACHE[key][1]
    z, index = [], []
    for b in self._views():
      out = multihost.local_rows(self.encode(tok_params, sh.put_global_batch(
          b["image"], sh.batch_sharding(self.mesh))))
      z.append(out[b["mask"]])
      index.append(b["index"][b["mask"]])
    z = multihost.gather_rows(np.concatenate(z), np.concatenate(index),
                              c.num_examples)
    _CACHE.clear()
    _CACHE[key] = (leaves, z)  # the leaves kept alive: their ids stay theirs
    return z

  def run(self, params, final: bool = False) -> common.Results:
    """The probe on `params` (the tokenizer's evaluation params); the same
    protocol whether final or periodic."""
    del final
    c = self.config
    tok_params = jax.device_put(params, sh.replicated(self.mesh))
    z = self.latents(params, tok_params)
    sample, loss = self.fit(c, self.mesh, self.codec, tok_params, z,
                            self.labels, self.num_classes)
    labels = generation.sample_labels(c.num_samples, self.num_classes,
                                      c.labels, c.seed, self.labels)
    samples = generation.generate(lambda p, y, i, seed: sample(y, i, seed),
                                  None, labels, c.sample_batch, self.mesh,
                                  c.seed)
    out = scoring.score(samples, c.num_samples, self.nets, self.name,
                        frames=self.data_config.frames, mesh=self.mesh,
                        local_batch=c.sample_batch // jax.process_count(),
                        references=self.references)
    out[f"{self.name}/probe_loss"] = loss
    out[f"{self.name}/probe_steps"] = float(c.steps)
    out[f"{self.name}/probe_examples"] = float(c.num_examples)
    if f"{self.name}/gfid" in out:
      out[f"{self.name}/gfid_random_inception"] = float(
          c.inception_weights == "random")
    yield from out.items()

  def protocol(self, results: dict) -> str:
    del results
    return recipe(self.config, self.num_classes)

  def summary(self, results: dict) -> str:
    line = scoring.summary(self.name, results, self.config.labels,
                           self.config.cfg_scale)
    line = line.replace("nearest photo", "nearest training view")
    if results.get(f"{self.name}/gfid_random_inception"):
      line = line.replace("gFID-", "(RANDOM Inception) gFID-", 1)
    line += (f", probe loss {results[f'{self.name}/probe_loss']:.4f} "
             f"[{self.protocol(results)}]")
    return line
