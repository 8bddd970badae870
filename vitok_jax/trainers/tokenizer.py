"""Trains a ViTok tokenizer, both stages of paper §2.3.

  stage 1: encoder + decoder, L2 + beta KL + eta LPIPS.
  stage 2: `init_from` a stage-1 run, encoder and bottleneck frozen through the
           optimizer, decoder trained with + lambda GAN against a StyleGAN2
           discriminator (its own optax chain), EMA of the trained params.

Reads top to bottom: config defaults, setup (model, optimizers, shardings, the
jitted init and the one jitted step that updates G, D and the EMA), and the
Task that the shared host loop (trainers/host_loop.py) runs: data, step,
log line, evaluators, the reconstruction picture.
"""
import functools
import logging
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vitok_jax import config_utils
from vitok_jax import flops
from vitok_jax.data import input_pipeline
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.evaluators import common as evaluators
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax import losses
from vitok_jax.models import discriminator
from vitok_jax.models import lpips as lpips_lib
from vitok_jax.models import vitok
from vitok_jax import optim
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import common
from vitok_jax.trainers import host_loop
from vitok_jax.trainers import naflex
from vitok_jax.trainers import tokenizer_shared as shared
import vitok_jax.utils as u

# Shared with the NaFlex trainer (trainers/tokenizer_shared.py).
disc_schedule, make_disc_tx = shared.disc_schedule, shared.make_disc_tx
load_frozen, init_from_stage1 = shared.load_frozen, shared.init_from_stage1


# ==========================================================================
# Config: every key the trainer knows, with its default
# ==========================================================================
def default_config() -> ml_collections.ConfigDict:
  """Every key a tokenizer config may set, with its default; the configs in
  configs/vitok/ start from this (docs/configs.md). Unset values are "" or
  typed placeholders, so each can be set from the command line."""
  placeholder = ml_collections.config_dict.placeholder
  c = ml_collections.ConfigDict()
  c.trainer = "tokenizer"
  host_loop.loop_config(c, total_steps=100_000, log_every=50, ckpt_every=1000,
                        image_every=1000, num_preview=8)  # reconstructions
  # Every vitok.Model field a user may set (the variant gives the sizes).
  # dtype: matmuls; stream_dtype: residual stream and norms (the paper's
  # bf16 autocast is dtype=bfloat16, stream_dtype=float32).
  c.model = dict(
      variant="S-B/16", code_channels=16, posemb="learn",
      num_latent_tokens=0,  # > 0: Latent ViTok (appendix 8.3)
      mask_lengths=(),  # e.g. (32, 64, 128, 256): Masked ViTok
      eval_length=placeholder(int),  # l_eval of Masked ViTok
      enc_mlp_dim=placeholder(int), dec_mlp_dim=placeholder(int),
      logvar_range=(-30.0, 20.0), rope_base=10000.0,
      dtype="bfloat16", stream_dtype="float32", remat="none",
      attn_impl="auto")  # models/attention.py: auto | xla | cudnn | splash
  c.input = input_pipeline.default_config(batch_size=1024)
  c.loss = dict(rec="l2", kl_weight=1e-3, lpips_weight=0.0,
                lpips_weights="",  # .npz from tools/convert_lpips.py
                lpips_allow_random=False,  # no weights -> random VGG
                gan_weight=0.0, gan_loss="hinge", gan_start_step=0,
                r1_weight=0.0, lecam_weight=0.0, lecam_decay=0.999)
  # Peak lr = base_lr * batch * frames / 256 (optim.peak_lr).
  c.optim = optim.default_config()
  # StyleGAN2 discriminator, used when loss.gan_weight > 0: lr 2e-5 with a
  # linear warm-up over 25k steps, then constant.
  c.disc = dict(lr=2e-5, warmup_steps=25_000, b1=0.0, b2=0.99,
                weight_decay=0.0, grad_clip=0.0, channel_base=32768,
                channel_max=512, mbstd_group=4)
  c.ema_decay = 0.0  # 0 = no EMA; e.g. 0.9999 in stage 2 (then evaluated)
  # Stage 2: start from this stage-1 workdir ("" = a fresh start), at its
  # latest step or at init_from_step.
  c.init_from = ""
  c.init_from_step = placeholder(int)
  # name -> evaluators.config("reconstruction", ...); see evaluators/.
  c.evals = {}
  return c


# The rule every numeric key must satisfy; checked at start, naming the key.
V = config_utils
VALIDATORS = {
    **host_loop.LOOP_VALIDATORS,
    "model.code_channels": V.POSITIVE, "model.num_latent_tokens": V.NON_NEGATIVE,
    "loss.kl_weight": V.NON_NEGATIVE, "loss.lpips_weight": V.NON_NEGATIVE,
    "loss.gan_weight": V.NON_NEGATIVE, "loss.gan_start_step": V.NON_NEGATIVE,
    "loss.r1_weight": V.NON_NEGATIVE, "loss.lecam_weight": V.NON_NEGATIVE,
    "loss.lecam_decay": V.FRACTION,
    **optim.VALIDATORS,
    "disc.lr": V.NON_NEGATIVE, "disc.warmup_steps": V.NON_NEGATIVE,
    "disc.b1": V.FRACTION, "disc.b2": V.FRACTION,
    "disc.weight_decay": V.NON_NEGATIVE, "disc.grad_clip": V.NON_NEGATIVE,
}


def resolve_config(config) -> ml_collections.ConfigDict:
  """The config as the trainer runs it: checked against default_config()
  (unknown or missing keys fail), evaluator entries completed with their
  type's defaults, every value checked against VALIDATORS."""
  config = common.resolve_config(config, default_config(), VALIDATORS)
  try:  # a config error, caught at start rather than when the model builds
    vitok.decode_variant(config.model.variant)
  except ValueError as e:
    raise ValueError(f"config.model.variant: {e}") from e
  if config.input.naflex:
    naflex.check_config(config)
  return config


# ==========================================================================
# Setup: model, optimizer, shardings, jitted init and step
# ==========================================================================
def input_shape(config, batch: Optional[int] = None):
  if config.input.naflex:  # so tools/bench.py, aot_compile.py, flops say so
    raise NotImplementedError(
        "config.input.naflex=True: the square setup, its input shape and "
        "FLOP count do not apply (trainers/naflex.py; docs/naflex.md)")
  b = config.input.batch_size if batch is None else batch
  res, t = config.input.res, config.input.frames
  return (b, res, res, 3) if t == 1 else (b, t, res, res, 3)


# Stage 2 freezes these (encoder and bottleneck) through the optimizer.
ENCODER_PATTERNS = ("tubelet_embed/.*", "enc_posemb/.*", "latent_tokens",
                    "encoder/.*", "to_moments/.*")
# Everything Model.encode reads. When the optimizer freezes all of it, the
# step encodes outside the differentiated function: stage 2 then pays for
# the encoder's forward only, never for its backward.
ENCODE_PATTERNS = ENCODER_PATTERNS + ("mask_token",)


def encoder_is_frozen(params, freeze) -> bool:
  """True if `freeze` (optim.freeze regexes) covers every encode-side param."""
  if not freeze:
    return False
  frozen = jax.tree.leaves(u.make_mask(params, list(freeze)))
  encode_side = jax.tree.leaves(u.make_mask(params, ENCODE_PATTERNS))
  return all(f for f, e in zip(frozen, encode_side) if e)


class Setup(NamedTuple):
  model: vitok.Model
  mesh: Any
  abstract_state: Any
  state_sharding: Any
  batch_sharding: Any
  init: Callable  # rng -> sharded state
  step: Callable  # (state, images, frozen) -> (state, measurements)
  # The two losses the step differentiates (not jitted), exposed so that
  # tests differentiate exactly what the step does:
  # (params, state, images, frozen, rng) -> (loss, (terms, recon)), and
  # (d_params, state, images, recon) -> (loss, terms).
  g_loss: Callable
  d_loss: Callable


def make_setup(config, mesh, *, batch: Optional[int] = None) -> Setup:
  """Everything jitted, with explicit shardings over `mesh`.

  The step takes `frozen` = {"lpips": params} (replicated, no gradients,
  outside the train state); pass {} when loss.lpips_weight is 0.
  """
  model = vitok.from_config(config.model)
  shape = input_shape(config, batch)
  common.check_batch(shape[0], mesh)
  model.token_grid(shape)  # fail early on a resolution the model can't take
  base_rng = jax.random.key(config.seed)
  lc, dc = config.loss, config.disc
  use_gan = bool(lc.gan_weight)
  use_lecam = use_gan and bool(lc.lecam_weight)
  ema_decay = config.ema_decay
  lpips_distance = lpips_lib.make_distance_fn(model.dtype)
  disc = None
  if use_gan:
    disc = discriminator.Discriminator(
        channel_base=dc.channel_base, channel_max=dc.channel_max,
        mbstd_group=dc.mbstd_group, dtype=model.dtype)
  frame_shape = (1,) + shape[-3:]

  def init_params(rng):
    x = jnp.zeros((1,) + shape[1:], jnp.float32)
    return model.init({"params": rng, "sample": rng}, x)["params"]

  abstract_params = jax.eval_shape(init_params, base_rng)
  tx, schedule = optim.make(config.optim, abstract_params, config.total_steps,
                            optim.peak_lr(config.optim, config.input))
  encoder_frozen = encoder_is_frozen(abstract_params, config.optim.freeze)
  d_tx, d_sched = make_disc_tx(dc) if use_gan else (None, None)

  def init(rng):
    state = common.new_state(init_params(rng), tx, ema_decay)
    if use_gan:
      d_params = disc.init(jax.random.fold_in(rng, 1),
                           jnp.zeros(frame_shape))["params"]
      state.update(d_params=d_params, d_opt=d_tx.init(d_params))
    if use_lecam:
      state["lecam"] = dict(real=jnp.zeros(()), fake=jnp.zeros(()))
    return state

  abstract_state = jax.eval_shape(init, base_rng)
  state_sharding = sh.state_sharding_from_config(abstract_state, mesh,
                                                 config.sharding)
  batch_sharding = sh.batch_sharding(mesh)
  repl = sh.replicated(mesh)

  def gan_switch(step):  # the GAN term is lambda * 0 before gan_start_step
    return (step >= lc.gan_start_step).astype(jnp.float32)

  def g_loss(params, state, images, frozen, rng):
    """L_AE (eq. 1) as a function of `params`. A frozen encoder (stage 2),
    D and the step come from `state`; `rng` samples the code."""
    lpips_fn = None
    if lc.lpips_weight:
      lpips_fn = functools.partial(lpips_distance, frozen["lpips"])
    if encoder_frozen:  # the code is an input, not a function of params
      grid = model.token_grid(images.shape)
      enc = jax.lax.stop_gradient(model.apply(
          {"params": state["params"]}, images, train=True,
          rngs={"sample": rng}, method="encode"))
      recon = model.apply({"params": params}, enc["z"], grid, method="decode")
      recon, aux = (recon if images.ndim == 5 else recon[:, 0]), enc
    else:
      recon, aux = model.apply({"params": params}, images, train=True,
                               rngs={"sample": rng})
    gen_adv = None
    if use_gan:
      fake_logits = disc.apply({"params": state["d_params"]},
                               losses.frames(recon))
      gen_adv = losses.generator_adversarial(fake_logits, lc.gan_loss)
    loss, terms = losses.autoencoder(
        recon, images, aux, rec=lc.rec, kl_weight=lc.kl_weight,
        lpips_weight=lc.lpips_weight, lpips_fn=lpips_fn, gen_adv_loss=gen_adv,
        gan_weight=lc.gan_weight * gan_switch(state["step"]))
    return loss, (terms, recon)

  def d_loss(d_params, state, images, recon):
    """D's loss on real frames vs the (stopped) reconstructions."""
    real = losses.frames(images)
    fake = jax.lax.stop_gradient(losses.frames(recon))
    d_fn = lambda x: disc.apply({"params": d_params}, x)
    real_logits, fake_logits = d_fn(real), d_fn(fake)
    loss, t = losses.discriminator(real_logits, fake_logits, lc.gan_loss)
    if lc.r1_weight:
      r1, t_r1 = losses.r1_penalty(d_fn, real)
      loss, t = loss + lc.r1_weight * r1, {**t, **t_r1}
    if use_lecam:
      lc_loss, t_lc = losses.lecam(real_logits, fake_logits,
                                   state["lecam"]["real"],
                                   state["lecam"]["fake"])
      loss, t = loss + lc.lecam_weight * lc_loss, {**t, **t_lc}
    return loss, t

  def train_step(state, images, frozen):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)

    # --- generator (the ViTok auto-encoder)
    (_, (terms, recon)), grads = jax.value_and_grad(g_loss, has_aux=True)(
        state["params"], state, images, frozen, rng)
    # (and the EMA of the trained params; frozen ones stay themselves)
    new, measurements = common.apply_gradients(state, grads, tx, schedule,
                                               ema_decay, **terms)

    # --- discriminator
    if use_gan:
      (_, d_terms), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
          state["d_params"], state, images, recon)
      d_updates, d_opt = d_tx.update(d_grads, state["d_opt"],
                                     state["d_params"])
      new.update(d_params=optax.apply_updates(state["d_params"], d_updates),
                 d_opt=d_opt)
      if use_lecam:
        dec = lc.lecam_decay
        new["lecam"] = dict(
            real=dec * state["lecam"]["real"] + (1 - dec) * d_terms["d_real"],
            fake=dec * state["lecam"]["fake"] + (1 - dec) * d_terms["d_fake"])
      measurements.update(d_terms, l2_d_grads=u.l2_norm(d_grads),
                          d_lr=d_sched(step), gan_on=gan_switch(step))
    return new, common.with_finite_flag(measurements)

  frozen_sharding = {"lpips": repl} if lc.lpips_weight else {}
  init_jit = common.jit_init(init, state_sharding)
  step_jit = common.jit_step(train_step, state_sharding,
                             (batch_sharding, frozen_sharding), mesh)
  return Setup(model, mesh, abstract_state, state_sharding, batch_sharding,
               init_jit, step_jit, g_loss, d_loss)


def predict_fns(setup: Setup) -> dict:
  """What a tokenizer hands its evaluators (evaluators/common.py):
  `reconstruct` (params, images) -> evaluation-mode reconstructions,
  `code_floats` (data config) -> floats per frame of the code (bicubic);
  for the generation probe, `codec` (data config) -> the model as a
  diffusion/codec.Codec and `fit_probe` (trainers/probe.py)."""
  from vitok_jax.evaluators import reconstruction  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import probe  # pylint: disable=g-import-not-at-top
  model = setup.model
  return dict(
      reconstruct=lambda params, images: model.apply({"params": params},
                                                     images)[0],
      code_floats=lambda data_config: reconstruction.code_floats_per_frame(
          model, data_config),
      codec=lambda data_config: codec_lib.Codec(
          model, None, data_config.res, data_config.frames),
      fit_probe=probe.fit)


def restore_for_eval(config, workdir: str, step=None) -> common.EvalRun:
  """The eval job's view of a tokenizer run (vitok_jax/eval.py): `step` (or
  the latest) restored onto config.mesh; the EMA params when present."""
  nf = config.input.naflex  # NaFlex rows: trainers/naflex.py
  if not config.evals:  # score the training data's evaluation crops
    config.evals = naflex.default_evals() if nf else {"recon": dict(
        type="reconstruction", batch_size=8, num_examples=None)}
  mesh = sh.make_mesh(config.mesh)
  setup = (naflex.make_setup if nf else make_setup)(config, mesh)
  ckpt = ckpt_lib.Checkpointer(workdir)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory} to evaluate")
  state, _, _ = ckpt.restore(setup.abstract_state, setup.state_sharding, step)
  ckpt.close()
  return common.EvalRun(step=int(step), params=common.eval_params(state),
                        ema="params_ema" in state, mesh=mesh,
                        predict_fns=(naflex.predict_fns if nf else
                                     predict_fns)(setup))


def make_reconstruct_fn(setup: Setup):
  """Jitted evaluation-mode reconstruction, replicated output."""
  return jax.jit(predict_fns(setup)["reconstruct"], in_shardings=(setup.state_sharding["params"],
                                      setup.batch_sharding),
                 out_shardings=sh.replicated(setup.mesh))


# ==========================================================================
# The task the shared host loop (trainers/host_loop.py) runs
# ==========================================================================
def train_and_evaluate(config, workdir: str, *,
                       max_steps: Optional[int] = None) -> dict:
  """Trains until config.total_steps (or `max_steps` more steps in this run,
  which simulates a preemption in tests). Returns the last measurements.
  See host_loop.train_and_evaluate for resume, signals and failures."""
  return host_loop.train_and_evaluate(resolve_config(config), workdir,
                                      make_task, max_steps=max_steps)


def make_task(config, mesh, workdir) -> host_loop.Task:
  if config.input.naflex:  # padded patch sequences, trainers/naflex.py
    return naflex.make_task(config, mesh, workdir)
  del workdir  # the tokenizer keeps nothing outside its checkpoints
  setup = make_setup(config, mesh)
  logging.info("Peak lr %.4g = base_lr %g x batch %d x frames %d / 256",
               optim.peak_lr(config.optim, config.input), config.optim.base_lr,
               config.input.batch_size, config.input.frames)
  frozen = load_frozen(config, mesh)

  def init_state():
    state = setup.init(jax.random.key(config.seed))
    if config.init_from:
      state = init_from_stage1(state, setup, config.init_from,
                               config.init_from_step)
      logging.info("Initialised params from %s", config.init_from)
    return state

  def train_step(state, local):
    batch = sh.put_global_batch(local["image"], setup.batch_sharding)
    return setup.step(state, batch, frozen)

  def log_line(m):
    return (f"loss {m['loss']:.4f} rec "
            f"{m.get(f'rec_{config.loss.rec}', np.nan):.4f} kl {m['kl']:.4f}")

  evals = evaluators.build_all(config.evals, predict_fns=predict_fns(setup),
                               mesh=mesh, input_config=config.input)
  # The picture shows the first evaluator's data (images the model does not
  # train on) when there is one, else the training data.
  preview = _preview_batch(
      evals[sorted(evals)[0]].data_config if evals else config.input,
      config, mesh)
  recon_fn = make_reconstruct_fn(setup)

  def pictures(params):
    recons = np.asarray(recon_fn(params, sh.put_global_batch(
        preview, setup.batch_sharding)))
    # Process 0's rows come first in the global batch.
    return {"reconstruction": evaluators.comparison_picture(
        preview, recons[:len(preview)])}

  return host_loop.Task(
      abstract_state=setup.abstract_state,
      state_sharding=setup.state_sharding, init_state=init_state,
      train_step=train_step,
      train_data=input_pipeline.make_train_dataset(config.input, config.seed),
      examples_per_step=config.input.batch_size * config.input.frames,
      log_line=log_line, evaluators=evals, pictures=pictures,
      eval_params=common.eval_params,
      max_bad_fraction=config.input.max_bad_fraction,
      flops_per_step=train_step_flops(config, setup),
      description=f"ViTok {config.model.variant} with "
      f"{u.count_params(setup.abstract_state['params']) / 1e6:.1f}M params")


def train_step_flops(config, setup: Setup) -> float:
  """The step's model FLOPs as tools/bench.py counts them (MFU): the ViTok's
  forward and backward, or with the encoder side frozen (stage 2) its
  forward and the decoder's forward and backward; LPIPS and the
  discriminator are not model FLOPs."""
  shape = input_shape(config)
  if encoder_is_frozen(setup.abstract_state["params"], config.optim.freeze):
    return flops.stage2_step_flops(setup.model, shape)
  return flops.train_step_flops(setup.model, shape)


def _preview_batch(data_config, config, mesh) -> np.ndarray:
  """A fixed set of evaluation crops of `data_config`'s data, as many as
  fit the mesh evenly."""
  n = max(config.num_preview // mesh.size, 1) * mesh.size
  ds = input_pipeline.make_eval_dataset(data_config, n, num_examples=n)
  images = next(iter(ds))["image"]
  if config.input.frames > 1 and images.ndim == 4:  # a still "video"
    images = np.repeat(images[:, None], config.input.frames, axis=1)
  return images
