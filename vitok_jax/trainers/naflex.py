"""The tokenizer trainer on NaFlex rows (config.input.naflex = True).

The same recipe as trainers/tokenizer.py -- L_REC + beta KL + eta LPIPS (+
lambda GAN), the same optimizer, state, shardings, host loop and checkpoints
-- but the step takes padded patch sequences {"patches", "coords", "valid"}
(data/naflex.py states the contract) instead of square images, and the model
runs its sequence path (Model.reconstruct_patches). The reconstruction term
counts valid pixels only; LPIPS and the discriminator see the rows un-packed
onto a square canvas (losses.canvas_pair). A square config is this with every
patch valid: the square trainer stays the one it was, untouched.

Not here yet: stage 2's shortcut of encoding outside the differentiated
function (a frozen encoder is frozen by the optimizer, as there, but its
backward is still computed), LeCam (refused at setup), and a FLOP count (no
MFU in the log line).

Kept apart from tokenizer.py so that the square trainer reads as before; the
tokenizer trainer hands over to this module when config.input.naflex is set
(make_task, restore_for_eval).
"""
import functools
import logging
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from vitok_jax.data import naflex_pipeline
from vitok_jax.evaluators import common as evaluators
from vitok_jax import losses
from vitok_jax.models import discriminator
from vitok_jax.models import lpips as lpips_lib
from vitok_jax.models import vitok
from vitok_jax import optim
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import common
from vitok_jax.trainers import host_loop
from vitok_jax.trainers import tokenizer_shared as shared
import vitok_jax.utils as u

ROW_KEYS = ("patches", "coords", "valid")


def check_config(config) -> None:
  """The sequence path's limits (vitok.Model._check_sequence_path) as a
  config error at start, naming the keys, rather than at the first trace."""
  m = config.model
  why = []
  if m.posemb == "learn":
    why.append("config.model.posemb='learn' (a table made for one grid: set "
               "--config.model.posemb=none, RoPE alone gives the positions)")
  if m.num_latent_tokens:
    why.append(f"config.model.num_latent_tokens={m.num_latent_tokens} "
               "(Latent ViTok: a fixed number of codes cannot follow each "
               "image's area)")
  if m.mask_lengths:
    why.append(f"config.model.mask_lengths={tuple(m.mask_lengths)} (Masked "
               "ViTok's lengths count the codes of one fixed grid)")
  if why:
    raise ValueError("config.input.naflex=True (native resolution, "
                     "docs/naflex.md) does not support " + "; ".join(why))


def geometry(model: vitok.Model) -> dict:
  """What the NaFlex data and evaluators need of the model."""
  return dict(patch=model.patch, tubelet=model.tubelet,
              code_channels=model.code_channels)


class Setup(NamedTuple):
  """As tokenizer.Setup, the step taking rows; canvas_hw: the loss canvas."""
  model: vitok.Model
  mesh: Any
  abstract_state: Any
  state_sharding: Any
  batch_sharding: Any
  init: Callable  # rng -> sharded state
  step: Callable  # (state, rows, frozen) -> (state, measurements)
  g_loss: Callable  # (params, state, rows, frozen, rng) -> (loss, (terms, recon))
  canvas_hw: Tuple[int, int]


def make_setup(config, mesh) -> Setup:
  """The jitted init and step over `mesh`; the step is (state, rows,
  frozen) -> (state, measurements), rows = {"patches", "coords", "valid"}
  sharded over the batch axes like images."""
  check_config(config)
  model = vitok.from_config(config.model)
  ic = config.input
  common.check_batch(ic.batch_size, mesh)
  p, q = model.patch, model.tubelet
  side = naflex_pipeline.canvas_side(ic, p, q)
  canvas_hw = (side, side)
  frames = ic.frames
  base_rng = jax.random.key(config.seed)
  lc, dc = config.loss, config.disc
  use_gan = bool(lc.gan_weight)
  lpips_distance = lpips_lib.make_distance_fn(model.dtype)
  disc = None
  if use_gan:
    disc = discriminator.Discriminator(
        channel_base=dc.channel_base, channel_max=dc.channel_max,
        mbstd_group=dc.mbstd_group, dtype=model.dtype)
  if use_gan and lc.lecam_weight:
    raise ValueError("config.loss.lecam_weight > 0 is not supported with "
                     "config.input.naflex yet")
  d = q * p * p * 3

  def init_params(rng):
    rows = (jnp.zeros((1, ic.max_patches, d)),
            jnp.zeros((1, ic.max_patches, 3), jnp.int32),
            jnp.ones((1, ic.max_patches), bool))
    # The same params as an init through the grid path (test_naflex_model).
    return model.init({"params": rng, "sample": rng}, *rows,
                      method="reconstruct_patches")["params"]

  abstract_params = jax.eval_shape(init_params, base_rng)
  tx, schedule = optim.make(config.optim, abstract_params, config.total_steps,
                            optim.peak_lr(config.optim, ic))
  d_tx, d_sched = shared.make_disc_tx(dc) if use_gan else (None, None)
  frame_shape = disc_view(jnp.zeros((1,) + canvas_hw + (3,))).shape

  def init(rng):
    state = common.new_state(init_params(rng), tx, config.ema_decay)
    if use_gan:
      d_params = disc.init(jax.random.fold_in(rng, 1),
                           jnp.zeros(frame_shape))["params"]
      state.update(d_params=d_params, d_opt=d_tx.init(d_params))
    return state

  abstract_state = jax.eval_shape(init, base_rng)
  state_sharding = sh.state_sharding_from_config(abstract_state, mesh,
                                                 config.sharding)
  batch_sharding = sh.batch_sharding(mesh)
  gan_on = lambda step: (step >= lc.gan_start_step).astype(jnp.float32)

  def g_loss(params, state, rows, frozen, rng):
    lpips_fn = None
    if lc.lpips_weight:
      lpips_fn = functools.partial(lpips_distance, frozen["lpips"])
    recon, aux = model.apply({"params": params}, *(rows[k] for k in ROW_KEYS),
                             train=True, rngs={"sample": rng},
                             method="reconstruct_patches")
    gen_adv = None
    if use_gan:
      fake, _, _ = losses.canvas_pair(recon, rows["patches"], rows["coords"],
                                      rows["valid"], canvas_hw, p, frames)
      gen_adv = losses.generator_adversarial(
          disc.apply({"params": state["d_params"]}, disc_view(fake)),
          lc.gan_loss)
    loss, terms = losses.autoencoder_patches(
        recon, rows["patches"], aux, rows["coords"], rows["valid"],
        canvas_hw=canvas_hw, patch=p, frames=frames, rec=lc.rec,
        kl_weight=lc.kl_weight, lpips_weight=lc.lpips_weight,
        lpips_fn=lpips_fn, gen_adv_loss=gen_adv,
        gan_weight=lc.gan_weight * gan_on(state["step"]))
    return loss, (terms, recon)

  def train_step(state, rows, frozen):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    (_, (terms, recon)), grads = jax.value_and_grad(g_loss, has_aux=True)(
        state["params"], state, rows, frozen, rng)
    new, measurements = common.apply_gradients(
        state, grads, tx, schedule, config.ema_decay, **terms)
    if use_gan:  # D on canvases: real images vs the (stopped) reconstructions
      fake, real, _ = losses.canvas_pair(
          jax.lax.stop_gradient(recon), rows["patches"], rows["coords"],
          rows["valid"], canvas_hw, p, frames)

      def d_loss(d_params):
        d_fn = lambda x: disc.apply({"params": d_params}, disc_view(x))
        loss, t = losses.discriminator(d_fn(real), d_fn(fake), lc.gan_loss)
        if lc.r1_weight:
          r1, t_r1 = losses.r1_penalty(d_fn, real)
          loss, t = loss + lc.r1_weight * r1, {**t, **t_r1}
        return loss, t

      (_, d_terms), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
          state["d_params"])
      d_updates, d_opt = d_tx.update(d_grads, state["d_opt"],
                                     state["d_params"])
      new.update(d_params=optax.apply_updates(state["d_params"], d_updates),
                 d_opt=d_opt)
      measurements.update(d_terms, l2_d_grads=u.l2_norm(d_grads),
                          d_lr=d_sched(step), gan_on=gan_on(step))
    return new, common.with_finite_flag(measurements)

  frozen_sharding = {"lpips": sh.replicated(mesh)} if lc.lpips_weight else {}
  rows_sharding = {k: batch_sharding for k in ROW_KEYS}
  return Setup(model=model, mesh=mesh, abstract_state=abstract_state,
               state_sharding=state_sharding, batch_sharding=batch_sharding,
               init=common.jit_init(init, state_sharding),
               step=common.jit_step(train_step, state_sharding,
                                    (rows_sharding, frozen_sharding), mesh),
               g_loss=g_loss, canvas_hw=canvas_hw)


def disc_view(canvas):
  """Canvases (frames) zero-padded at the bottom and right to the square
  power-of-two side the discriminator takes: zeros in real and fake alike,
  as around each image already, so D cannot tell them apart by it."""
  x = losses.frames(canvas)
  h, w = x.shape[1:3]
  side = max(8, 1 << (max(h, w) - 1).bit_length())
  return jnp.pad(x, ((0, 0), (0, side - h), (0, side - w), (0, 0)))


def predict_fns(setup: Setup) -> dict:
  """What the evaluators get: `reconstruct_patches` (params, patches,
  coords, valid) -> evaluation-mode reconstructions of the rows, `geometry`
  (patch, tubelet, code_channels), and the square `reconstruct` /
  `code_floats` (without a learned table the model takes any square
  grid too)."""
  from vitok_jax.evaluators import reconstruction  # pylint: disable=g-import-not-at-top
  model = setup.model
  return dict(
      reconstruct_patches=lambda params, pt, co, va: model.apply(
          {"params": params}, pt, co, va, method="reconstruct_patches")[0],
      geometry=geometry(model),
      reconstruct=lambda params, images: model.apply({"params": params},
                                                     images)[0],
      code_floats=lambda data_config: reconstruction.code_floats_per_frame(
          model, data_config))


def default_evals() -> dict:
  """The eval job's evaluator when a run has none: its own data, natively."""
  return {"recon": dict(type="reconstruction_native", batch_size=8,
                        num_examples=None)}


def make_task(config, mesh, workdir) -> host_loop.Task:
  del workdir
  from vitok_jax.evaluators import reconstruction_native as native_eval  # pylint: disable=g-import-not-at-top
  setup = make_setup(config, mesh)
  frozen = shared.load_frozen(config, mesh)
  ic = config.input
  logging.info("NaFlex: rows of %d patches, loss canvas %s",
               ic.max_patches, setup.canvas_hw)

  def init_state():
    state = setup.init(jax.random.key(config.seed))
    if config.init_from:
      state = shared.init_from_stage1(state, setup, config.init_from,
                                         config.init_from_step)
    return state

  def train_step(state, local):
    rows = sh.put_global_batch({k: local[k] for k in ROW_KEYS},
                               setup.batch_sharding)
    return setup.step(state, rows, frozen)

  def log_line(m):
    return (f"loss {m['loss']:.4f} rec "
            f"{m.get(f'rec_{config.loss.rec}', float('nan')):.4f} "
            f"kl {m['kl']:.4f}")

  fns = predict_fns(setup)
  evals = evaluators.build_all(config.evals, predict_fns=fns, mesh=mesh,
                               input_config=ic)
  natives = [e for _, e in sorted(evals.items())
             if isinstance(e, native_eval.Evaluator)]
  preview = native_eval.Preview(
      natives[0].data_config if natives else native_eval.native_data(ic),
      max(config.num_preview // mesh.size, 1) * mesh.size, fns, mesh)
  return host_loop.Task(
      abstract_state=setup.abstract_state,
      state_sharding=setup.state_sharding, init_state=init_state,
      train_step=train_step,
      train_data=naflex_pipeline.make_train_dataset(
          ic, config.seed, setup.model.patch, setup.model.tubelet),
      examples_per_step=ic.batch_size * ic.frames,
      log_line=log_line, evaluators=evals,
      pictures=lambda params: {"reconstruction": preview(params)},
      eval_params=common.eval_params,
      max_bad_fraction=ic.max_bad_fraction,
      flops_per_step=0.0,  # flops.py counts square grids only: no MFU here
      description=f"NaFlex ViTok {config.model.variant} with "
      f"{u.count_params(setup.abstract_state['params']) / 1e6:.1f}M params")
