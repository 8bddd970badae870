"""Trains a class-conditional DiT on a frozen ViTok's latents (paper §2.3).

  latents: encoded on the fly from images by the tokenizer run at
           config.tokenizer.workdir (latents.source="encode"), or read from
           shards that tools/encode_dataset.py wrote (source="shards:<dir>");
           standardised per channel with statistics computed when the run
           first starts and kept in its train state (state["latent_stats"],
           so every checkpoint carries the statistics it was trained with);
  loss:    DDPM epsilon loss (1000 steps, linear betas), or with
           diffusion.kind="flow" rectified flow's velocity loss (diffusion/flow.py);
           labels replaced by the null class at rate
           diffusion.label_dropout (for CFG);
  optim:   AdamW at a constant lr (DiT's recipe), EMA of the params (0.9999)
           that pictures, evaluators and sampling use.

Reads like trainers/tokenizer.py: config defaults, setup (model, optimizer,
shardings, jitted init and step), then the Task that the shared host loop
(trainers/host_loop.py) runs: data, step, log line, generation evaluators,
the samples picture.
"""
import logging
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vitok_jax import config_utils
from vitok_jax import flops
from vitok_jax.data import input_pipeline
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.diffusion import ddpm
from vitok_jax.diffusion import flow
from vitok_jax.diffusion import sampler
from vitok_jax.evaluators import common as evaluators
from vitok_jax.io import fileio
from vitok_jax.models import dit as dit_lib
from vitok_jax import optim
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import common
from vitok_jax.trainers import host_loop
import vitok_jax.utils as u


# ==========================================================================
# Config: every key the trainer knows, with its default
# ==========================================================================
def default_config() -> ml_collections.ConfigDict:
  """Every key a DiT config may set, with its default; the configs in
  configs/dit/ start from this (docs/configs.md). Unset values are "" or
  typed placeholders, so each can be set from the command line."""
  placeholder = ml_collections.config_dict.placeholder
  c = ml_collections.ConfigDict()
  c.trainer = "dit"
  # The picture: num_preview samples of classes 0, 1, ...
  host_loop.loop_config(c, total_steps=500_000, log_every=100, ckpt_every=5000,
                        image_every=5000, num_preview=16)
  # The frozen ViTok: a tokenizer run's workdir (its EMA params if any), at
  # its latest step unless `step` is set.
  c.tokenizer = dict(workdir="", step=placeholder(int), use_ema=True)
  # source: "encode" (on the fly) or "shards:<dir>" (tools/encode_dataset.py).
  # tokens/channels: what this DiT is built for; checked against the
  # tokenizer (unset = take the tokenizer's). stats_examples: training
  # examples the normalisation statistics are computed over, a random
  # subset seeded by stats_seed (never the first classes of a sorted set).
  c.latents = dict(source="encode", tokens=placeholder(int),
                   channels=placeholder(int), stats_examples=10_000,
                   stats_batch=64, stats_seed=0)
  c.num_classes = 1000
  c.model = dict(size="L", dtype="bfloat16", stream_dtype="float32",
                 remat="none", attn_impl="auto",
                 mlp_dim=placeholder(int), rope_base=10000.0)
  # Images for source="encode" (the tokenizer's resolution); ADM/DiT crop:
  # resize + centre crop + random flip.
  c.input = input_pipeline.default_config(batch_size=256, crop="center")
  # kind: "ddpm" (the paper: epsilon loss, DDIM sampling) or "flow"
  # (rectified flow, diffusion/flow.py: velocity loss with t ~ t_sampling "uniform" or
  # "logit_normal" (logit_mean, logit_std), Euler/Heun ODE sampling).
  c.diffusion = dict(kind="ddpm", train_steps=1000, beta_start=1e-4,
                     beta_end=0.02, label_dropout=0.1, t_sampling="uniform",
                     logit_mean=0.0, logit_std=1.0)
  # Sampling for pictures and `python -m vitok_jax.sample` defaults: DDIM
  # steps and eta (ddpm), or ODE steps and solver "euler"/"heun" (flow).
  c.sampling = dict(num_steps=250, eta=0.0, cfg_scale=1.5, solver="euler")
  # DiT: AdamW, lr 1e-4 at batch 256, constant (end_lr_factor 1), no decay.
  c.optim = optim.default_config(b2=0.999, weight_decay=0.0, warmup_steps=0,
                                 end_lr_factor=1.0, grad_clip=0.0)
  c.ema_decay = 0.9999  # 0 = no EMA
  # name -> evaluators.config("generation", ...); see evaluators/generation.py.
  c.evals = {}
  return c


V = config_utils
VALIDATORS = {
    **host_loop.LOOP_VALIDATORS, "num_classes": V.POSITIVE,
    "latents.tokens": V.POSITIVE, "latents.channels": V.POSITIVE,
    "latents.stats_examples": V.POSITIVE, "latents.stats_batch": V.POSITIVE,
    "diffusion.train_steps": V.POSITIVE,
    "diffusion.beta_start": V.OPEN_UNIT_INTERVAL,
    "diffusion.beta_end": V.OPEN_UNIT_INTERVAL,
    "diffusion.label_dropout": V.FRACTION, "sampling.num_steps": V.POSITIVE,
    "diffusion.logit_std": V.POSITIVE,
    "sampling.eta": V.NON_NEGATIVE, "sampling.cfg_scale": V.NON_NEGATIVE,
    **optim.VALIDATORS,
}


def resolve_config(config) -> ml_collections.ConfigDict:
  """As tokenizer.resolve_config, and latents.source must name a source."""
  config = common.resolve_config(config, default_config(), VALIDATORS)
  kinds = ("ddpm", "flow")
  for key, value, allowed in (
      ("diffusion.kind", config.diffusion.kind, kinds),
      ("diffusion.t_sampling", config.diffusion.t_sampling, flow.T_SAMPLING),
      ("sampling.solver", config.sampling.solver, flow.SOLVERS)):
    if value not in allowed:
      raise ValueError(f"config.{key}={value!r}: expected one of {allowed}")
  if config.diffusion.kind == "flow" and config.sampling.eta:
    raise ValueError(f"config.sampling.eta={config.sampling.eta} is DDIM's; "
                     "diffusion.kind='flow' samples with an ODE solver "
                     "(sampling.solver)")
  source = config.latents.source
  if source != "encode" and not source.startswith("shards:"):
    raise ValueError(f"config.latents.source={source!r}: expected 'encode' or "
                     "'shards:<dir>' (tools/encode_dataset.py)")
  if config.model.size not in dit_lib.SIZES:  # a config error, caught at start
    raise ValueError(f"config.model.size={config.model.size!r}: expected one "
                     f"of {sorted(dit_lib.SIZES)}")
  return config


# ==========================================================================
# Setup: the frozen tokenizer, the DiT, optimizer, shardings, jitted steps
# ==========================================================================
def peak_lr(config) -> float:
  """base_lr x batch / 256: a DiT's batch is its batch of latents, with no
  frames factor (a video latent is one sample)."""
  return optim.peak_lr(config.optim, config.input, per_frame=False)


def make_schedule(config) -> ddpm.Schedule:
  dc = config.diffusion
  return ddpm.linear_schedule(dc.train_steps, dc.beta_start, dc.beta_end)


class Setup(NamedTuple):
  model: dit_lib.DiT
  codec: codec_lib.Codec
  sched: ddpm.Schedule
  mesh: Any
  abstract_state: Any
  state_sharding: Any
  batch_sharding: Any
  init: Callable  # rng -> sharded state
  step: Callable  # (state, inputs, labels, tok_params) -> (state, m)
  encode: Callable  # (tok_params, images) -> z (sharded like the batch)


def make_setup(config, mesh, codec: codec_lib.Codec, *,
               batch: Optional[int] = None) -> Setup:
  """Everything jitted, with explicit shardings over `mesh`. The step takes
  images (source "encode") or latents (shards) as `inputs`."""
  model = dit_lib.from_config(config.model, codec.channels,
                              config.num_classes)
  common.check_batch(config.input.batch_size if batch is None else batch, mesh)
  sched = make_schedule(config)
  grid = codec.rope_grid
  base_rng = jax.random.key(config.seed)
  ema_decay = config.ema_decay
  null = config.num_classes
  dropout = config.diffusion.label_dropout
  encode_inputs = config.latents.source == "encode"
  dc = config.diffusion
  flow_kind = dc.kind == "flow"
  x_shape = (1, codec.num_tokens, codec.channels)

  def init_params(rng):
    return model.init(rng, jnp.zeros(x_shape), jnp.zeros((1,), jnp.int32),
                      jnp.zeros((1,), jnp.int32), grid)["params"]

  abstract_params = jax.eval_shape(init_params, base_rng)
  tx, schedule = optim.make(config.optim, abstract_params, config.total_steps,
                            peak_lr(config))

  def init(rng):
    state = common.new_state(init_params(rng), tx, ema_decay)
    # Set once, before the first step (init_state_with_stats), then carried
    # and checkpointed with the state, never trained.
    state["latent_stats"] = dict(mean=jnp.zeros((codec.channels,)),
                                 std=jnp.ones((codec.channels,)))
    return state

  abstract_state = jax.eval_shape(init, base_rng)
  state_sharding = sh.state_sharding_from_config(abstract_state, mesh,
                                                 config.sharding)
  batch_sharding = sh.batch_sharding(mesh)
  repl = sh.replicated(mesh)

  def train_step(state, inputs, labels, tok_params):
    step = state["step"]
    rng_drop, rng_loss = jax.random.split(jax.random.fold_in(base_rng, step))
    # The tokenizer is frozen: its latents are inputs, never differentiated.
    z = codec.encode(tok_params, inputs) if encode_inputs else inputs
    mean, std = state["latent_stats"]["mean"], state["latent_stats"]["std"]
    x0 = jax.lax.stop_gradient((z.astype(jnp.float32) - mean) / std)
    labels = jnp.where(labels < 0, null, labels)  # no class: unconditional
    labels = ddpm.drop_labels(rng_drop, labels, dropout, null)

    def loss_fn(params):
      net = lambda x, t: model.apply({"params": params}, x, t, labels, grid)
      if flow_kind:
        return flow.velocity_loss(net, x0, rng_loss, dc.t_sampling,
                                  dc.logit_mean, dc.logit_std)
      return ddpm.epsilon_loss(net, sched, x0, rng_loss)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    new, measurements = common.apply_gradients(
        state, grads, tx, schedule, ema_decay, loss=loss,
        latent_std=jnp.std(x0))
    return new, common.with_finite_flag(measurements)

  init_jit = common.jit_init(init, state_sharding)
  step_jit = common.jit_step(train_step, state_sharding,
                             (batch_sharding, batch_sharding, repl), mesh)
  encode_jit = jax.jit(codec.encode, in_shardings=(repl, batch_sharding),
                       out_shardings=batch_sharding)
  return Setup(model, codec, sched, mesh, abstract_state, state_sharding,
               batch_sharding, init_jit, step_jit, encode_jit)


def compute_latent_stats(config, setup: Setup, tok_params
                         ) -> codec_lib.LatentStats:
  """Per-channel mean/std over latents.stats_examples training latents,
  a seeded random subset (input_pipeline.subset_rows): the same rows from
  shards as encoded on the fly."""
  moments = codec_lib.RunningMoments()
  lc = config.latents
  if lc.source.startswith("shards:"):
    from vitok_jax.data import latent_shards  # pylint: disable=g-import-not-at-top
    for z in latent_shards.iterate_latents(lc.source[7:], lc.stats_examples,
                                           seed=lc.stats_seed):
      moments.update(z)
    return moments.result()
  # Each process encodes its own examples; the sums are added across
  # processes, so the statistics do not depend on the process count.
  n_dev = setup.mesh.size
  batch = max(lc.stats_batch // n_dev, 1) * n_dev
  for b in input_pipeline.make_eval_dataset(config.input, batch,
                                            lc.stats_examples,
                                            subset_seed=lc.stats_seed):
    z = multihost.local_rows(setup.encode(tok_params, sh.put_global_batch(
        b["image"], setup.batch_sharding)))
    moments.update(z[b["mask"]])
  return moments.sum_over_processes().result()


def init_state_with_stats(config, setup: Setup, tok_params, rng):
  """A fresh state whose latent_stats are computed now (the first start;
  a resumed run restores them with its state)."""
  state = setup.init(rng)
  stats = compute_latent_stats(config, setup, tok_params)
  logging.info("Latent statistics of %s (kept in the train state): mean %s, "
               "std %s", setup.codec.describe(), np.round(stats.mean, 3),
               np.round(stats.std, 3))
  state["latent_stats"] = jax.device_put(
      dict(mean=jnp.asarray(stats.mean, jnp.float32),
           std=jnp.asarray(stats.std, jnp.float32)),
      setup.state_sharding["latent_stats"])
  return state


def stats_of(state) -> Any:
  """(mean, std) of a state's latent statistics: the sampler's input."""
  return state["latent_stats"]["mean"], state["latent_stats"]["std"]


class Restored(NamedTuple):
  """A DiT run ready to sample: what sample.py and eval.py need."""
  setup: Setup
  step: int
  params: Any  # the EMA params when the run has them
  tok_params: Any  # the frozen ViTok's, replicated
  stats: Any  # (mean, std) from the train state


def restore_run(config, workdir: str, step: Optional[int] = None) -> Restored:
  """Restores `step` (or the latest) of a DiT run onto config.mesh. A
  read-only job: a workdir without checkpoints is an error, not created."""
  ckpt_dir = fileio.join(fileio.abspath(workdir), "checkpoints")
  if not fileio.isdir(ckpt_dir):
    raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints folder "
                            f"({ckpt_dir}): is it a DiT run's workdir?")
  from vitok_jax.io import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  mesh = sh.make_mesh(config.mesh)
  setup = make_setup(config, mesh, codec_lib.load_pinned(config, workdir),
                     batch=mesh.size)
  ckpt = ckpt_lib.Checkpointer(workdir)
  state, _, _ = ckpt.restore(setup.abstract_state, setup.state_sharding, step)
  ckpt.close()
  return Restored(setup, int(state["step"]), common.eval_params(state),
                  jax.device_put(setup.codec.params, sh.replicated(mesh)),
                  stats_of(state))


def load_run_stats(workdir: str, step: Optional[int] = None
                   ) -> codec_lib.LatentStats:
  """The latent statistics a DiT run's checkpoint carries (host numpy)."""
  from vitok_jax.io import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  tree = ckpt_lib.load_state_tree(workdir, step)
  if "latent_stats" not in tree:
    raise ValueError(f"{workdir!r}'s checkpoint has no latent_stats: is it a "
                     "DiT run's workdir?")
  return codec_lib.LatentStats(np.asarray(tree["latent_stats"]["mean"]),
                                 np.asarray(tree["latent_stats"]["std"]))


def make_sampler(config, setup: Setup, *, cfg_scale=None, num_steps=None,
                 eta=None) -> Callable:
  """sampler.make_sample_fn with config.sampling's defaults."""
  sc = config.sampling
  return sampler.make_sample_fn(
      setup.model, setup.codec, setup.sched, mesh=setup.mesh,
      dit_params_sharding=setup.state_sharding["params"],
      num_steps=num_steps or sc.num_steps,
      eta=sc.eta if eta is None else eta,
      cfg_scale=sc.cfg_scale if cfg_scale is None else cfg_scale,
      grid=setup.codec.rope_grid, kind=config.diffusion.kind,
      solver=sc.solver)


def preview_index(config, mesh) -> np.ndarray:
  """This process's rows of the pictures' global batch of sample numbers."""
  n = max(config.num_preview // mesh.size, 1) * mesh.size
  rows = n // jax.process_count()
  return np.arange(rows, dtype=np.int32) + jax.process_index() * rows


def preview_labels(config, mesh) -> np.ndarray:
  """Their labels: the classes in turn."""
  return (preview_index(config, mesh) % config.num_classes).astype(np.int32)


# ==========================================================================
# The task the shared host loop runs
# ==========================================================================
def train_and_evaluate(config, workdir: str, *,
                       max_steps: Optional[int] = None) -> dict:
  """As tokenizer.train_and_evaluate, for a DiT."""
  return host_loop.train_and_evaluate(resolve_config(config), workdir,
                                      make_task, max_steps=max_steps)


def make_task(config, mesh, workdir) -> host_loop.Task:
  codec = codec_lib.load_pinned(config, workdir)
  codec_lib.pin_tokenizer(workdir, codec)
  setup = make_setup(config, mesh, codec)
  tok_params = jax.device_put(codec.params, sh.replicated(mesh))
  logging.info("Peak lr %.4g; latents %s", peak_lr(config), codec.describe())

  if config.latents.source == "encode":
    train_data = input_pipeline.make_train_dataset(config.input, config.seed)
    key = "image"
  else:
    from vitok_jax.data import latent_shards  # pylint: disable=g-import-not-at-top
    train_data = latent_shards.make_train_dataset(
        config.latents.source[7:], config.input.batch_size, config.seed,
        flip=config.input.flip)
    key = "latent"

  def train_step(state, local):
    labels = np.asarray(local["label"])
    if labels.size and labels.max() >= config.num_classes:
      raise ValueError(f"A training label is {labels.max()}, but "
                       f"config.num_classes={config.num_classes}")
    inputs, labels = sh.put_global_batch((local[key], labels),
                                         setup.batch_sharding)
    return setup.step(state, inputs, labels, tok_params)

  # The evaluators and the picture sample with the statistics of the state
  # they are handed (its buffers: the next step donates the state).
  stats = {}

  def eval_params(state):
    stats["v"] = stats_of(state)
    return common.eval_params(state)

  fns = predict_fns(config, setup, tok_params, lambda: stats["v"])
  evals = evaluators.build_all(config.evals, predict_fns=fns, mesh=mesh,
                               input_config=config.input)
  labels = preview_labels(config, mesh)
  sample_fn = fns["sample"]()
  index = preview_index(config, mesh)

  def pictures(params):
    images = sample_fn(params, *sh.put_global_batch((labels, index),
                                                    setup.batch_sharding),
                       config.seed + 1)
    # Process 0's rows (it alone writes pictures).
    return {"samples": evaluators.grid_picture(
        multihost.local_rows(images))}

  return host_loop.Task(
      abstract_state=setup.abstract_state,
      state_sharding=setup.state_sharding,
      init_state=lambda: init_state_with_stats(
          config, setup, tok_params, jax.random.key(config.seed)),
      train_step=train_step, train_data=train_data,
      examples_per_step=config.input.batch_size,
      log_line=lambda m: f"loss {m['loss']:.4f}", evaluators=evals,
      pictures=pictures, eval_params=eval_params,
      max_bad_fraction=config.input.max_bad_fraction,
      # The DiT's model FLOPs (MFU); encoding on the fly is not counted.
      flops_per_step=flops.dit_train_step_flops(
          setup.model, codec.num_tokens, config.input.batch_size),
      description=f"DiT-{config.model.size} with "
      f"{u.count_params(setup.abstract_state['params']) / 1e6:.1f}M params on "
      f"{codec.describe()}")


def predict_fns(config, setup: Setup, tok_params, stats: Callable) -> dict:
  """What a DiT hands its evaluators (evaluators/common.py): `sample`, a
  factory (cfg_scale, num_steps) -> fn(params, labels, index, seed) ->
  images, and `num_classes` (the evaluator draws the labels).
  stats() gives the latent statistics (mean, std) when sampling."""
  def sample(cfg_scale=None, num_steps=None):
    sampler = make_sampler(config, setup, cfg_scale=cfg_scale,
                           num_steps=num_steps)
    return lambda p, y, i, seed: sampler(p, tok_params, stats(), y, i,
                                         seed)[0]

  return dict(sample=sample, num_classes=config.num_classes)


def restore_for_eval(config, workdir: str, step=None) -> common.EvalRun:
  """The eval job's view of a DiT run (vitok_jax/eval.py)."""
  if not config.evals:
    raise ValueError("config.evals has no generation evaluator to run")
  run = restore_run(config, workdir, step)
  return common.EvalRun(
      step=run.step, params=run.params, ema=bool(config.ema_decay),
      mesh=run.setup.mesh,
      predict_fns=predict_fns(config, run.setup, run.tok_params,
                              lambda: run.stats))
