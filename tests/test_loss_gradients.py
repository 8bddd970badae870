"""Every loss term reaches the gradient, by the right amount.

test_stage2 checks the terms in the reported loss; a stop_gradient on the
reconstruction inside a term, or a weight that multiplies the logged value
but not the differentiated one, leaves that loss intact. Here the gradient
of the loss the step differentiates (Setup.g_loss / Setup.d_loss) with a
term's weight w, minus the gradient with w = 0, must equal w x the gradient
of that term computed from the networks themselves: d term / d recon from
LPIPS or D, pulled back through the model's own VJP.

Stage 1 trains encoder and decoder; stage 2 freezes the encoder (the step
encodes outside the differentiated function). Also LeCam, R1 and rec="l1",
which nothing else runs. Float32, res 16, batch 4 on one device: the mesh
plays no part in a loss.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_stage2 import stage2_config
from vitok_jax.models import discriminator
from vitok_jax.models import lpips as lpips_lib
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u

RES, BATCH = 16, 4
# Weights that give each term's gradient about the size of the L2 term's, so
# that the difference of two gradients loses little to rounding.
WEIGHTS = dict(kl_weight=0.05, lpips_weight=10.0, gan_weight=0.1)
LECAM, LECAM_DECAY, R1 = 0.3, 0.6, 0.2
# The run that steps: stage 2 with every D option, and the Fig. 10 L1 loss.
GAN_RUN = dict(rec="l1", gan_weight=WEIGHTS["gan_weight"], lecam_weight=LECAM,
               lecam_decay=LECAM_DECAY, r1_weight=R1)


def _config(stage, rec="l2", **loss):
  """Only the named terms on (kl_weight 0 too), float32."""
  c = stage2_config(gan=0.0)
  if stage == 1:
    c.optim.freeze = ()
  c.model.dtype = "float32"
  c.input.update(res=RES, batch_size=BATCH)
  c.loss.update(rec=rec, kl_weight=0.0, lpips_weight=0.0, lpips_weights=None,
                lpips_allow_random=True, gan_weight=0.0)
  c.loss.update(loss)
  c.ema_decay = 0.0  # no EMA
  return tokenizer.resolve_config(c)


@functools.cache
def _mesh():
  return sh.make_mesh([("data", 1)], devices=jax.devices()[:1])


@functools.cache
def _setup(stage, rec="l2", **loss):
  return tokenizer.make_setup(_config(stage, rec, **loss), _mesh())


def _gan_setup():
  return _setup(2, **GAN_RUN)


def _random_lpips(seed=0):
  """A random VGG as with lpips_allow_random (numpy: jax's init of 15M
  weights costs seconds on 2 cores); lecun-normal kernels, w_l >= 0."""
  rng = np.random.default_rng(seed)
  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if "lin" in name:
      return rng.uniform(0, 1 / a.shape[0], a.shape).astype(np.float32)
    if "kernel" in name:
      fan_in = np.prod(a.shape[:-1])
      return (rng.standard_normal(a.shape) / np.sqrt(fan_in)).astype(np.float32)
    return np.zeros(a.shape, np.float32)
  return jax.tree_util.tree_map_with_path(
      draw, jax.eval_shape(lpips_lib.init_random))


_DISC = discriminator.Discriminator(channel_base=128, channel_max=16,
                                    mbstd_group=4)


@functools.cache
def _inputs():
  """Initial state (with D), images, the step-0 rng, LPIPS params."""
  state = jax.device_get(_gan_setup().init(jax.random.key(0)))
  x = np.random.default_rng(0).uniform(-1, 1, (BATCH, RES, RES, 3))
  # What the step samples the code with at step 0 (config.seed = 0).
  rng = jax.random.fold_in(jax.random.key(0), 0)
  return _gan_setup().model, state, x.astype(np.float32), rng, _random_lpips()


def _recon_fn(model, stage):
  """params -> the training-mode reconstruction; in stage 2 the code comes
  from `enc_params` and is a constant."""
  def recon(params, enc_params, x, rng):
    if stage == 1:
      return model.apply({"params": params}, x, train=True,
                         rngs={"sample": rng})[0]
    z = model.apply({"params": enc_params}, x, train=True,
                    rngs={"sample": rng}, method="encode")["z"]
    return model.apply({"params": params}, z, model.token_grid(x.shape),
                       method="decode")[:, 0]
  return recon


@jax.jit
def _lpips_cotangent(lp, recon, x):
  return jax.grad(lambda r: jnp.mean(
      lpips_lib.LPIPS().apply({"params": lp}, r, x)))(recon)


@jax.jit
def _hinge_g_cotangent(d_params, recon):
  return jax.grad(lambda r: -jnp.mean(
      _DISC.apply({"params": d_params}, r)))(recon)


@functools.cache
def _direct(stage):
  """Each term's gradient w.r.t. params, from the networks, not the trainer."""
  model, state, x, rng, lp = _inputs()
  p = state["params"]
  recon_fn = _recon_fn(model, stage)

  @jax.jit
  def pullback(cot):
    return jax.vjp(lambda q: recon_fn(q, p, x, rng), p)[1](cot)[0]

  @jax.jit
  def kl_grad(params):
    def kl(q):  # 0.5 E[mu^2 + sigma^2 - 1 - log sigma^2]
      e = model.apply({"params": q}, x, train=True, rngs={"sample": rng},
                      method="encode")
      return 0.5 * jnp.mean(e["mean"]**2 + jnp.exp(e["logvar"]) - 1.0 -
                            e["logvar"])
    return jax.grad(kl)(params)

  recon = np.asarray(jax.jit(recon_fn)(p, p, x, rng))
  diff = recon - x
  cot = dict(rec_l2=2 * diff / diff.size, rec_l1=np.sign(diff) / diff.size,
             lpips_weight=_lpips_cotangent(lp, recon, x),
             gan_weight=_hinge_g_cotangent(state["d_params"], recon))
  grads = {k: jax.device_get(pullback(c)) for k, c in cot.items()}
  grads["kl_weight"] = jax.device_get(
      kl_grad(p) if stage == 1 else jax.tree.map(jnp.zeros_like, p))
  return recon, grads


@functools.cache
def _trainer_grads(stage, rec="l2", term=None):
  """grad of Setup.g_loss (what the step differentiates), one term on."""
  setup = _setup(stage, rec, **({term: WEIGHTS[term]} if term else {}))
  _, state, x, rng, lp = _inputs()
  frozen = {"lpips": lp} if term == "lpips_weight" else {}
  grad = jax.jit(jax.grad(lambda p, s, x, f, r: setup.g_loss(p, s, x, f, r)[0]))
  return jax.device_get(grad(state["params"], state, x, frozen, rng))


def _assert_trees_close(actual, expected, rtol=1e-4, atol=0.0):
  """Leaf by leaf; atol scales with the largest gradient entry (or is the
  given one, when larger)."""
  scale = max(float(np.max(np.abs(e))) for e in jax.tree.leaves(expected))
  assert scale > 0, "the expected gradient is zero: nothing is tested"
  exp = dict(u.tree_flatten_with_names(expected))
  for name, a in u.tree_flatten_with_names(actual):
    np.testing.assert_allclose(a, exp[name], rtol=rtol,
                               atol=max(1e-5 * scale, atol), err_msg=name)


def _encode_side(tree):
  mask = u.make_mask(tree, tokenizer.ENCODE_PATTERNS)
  return [l for l, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask)) if m]


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("rec", ["l2", "l1"])
def test_reconstruction_gradient_is_the_error_gradient(stage, rec):
  """Alone, the loss is mean (recon - x)^2 or mean |recon - x|."""
  got = _trainer_grads(stage, rec)
  _assert_trees_close(got, _direct(stage)[1][f"rec_{rec}"])
  if stage == 2:  # the code is an input: no gradient reaches the encoder
    assert all(not np.any(g) for g in _encode_side(got))


@pytest.mark.parametrize("stage,term", [
    (1, "kl_weight"), (1, "lpips_weight"), (1, "gan_weight"),
    (2, "lpips_weight"), (2, "gan_weight")])
def test_weighted_term_reaches_the_gradient(stage, term):
  """grad(L with w) - grad(L with 0) = w grad(term), the term from the
  networks directly. (Stage 2's KL is a constant of the frozen code.)"""
  with_term = _trainer_grads(stage, term=term)
  without = _trainer_grads(stage)
  diff = jax.tree.map(np.subtract, with_term, without)
  expected = jax.tree.map(lambda g: WEIGHTS[term] * g,
                          _direct(stage)[1][term])
  # The tolerance is set by the terms' sum: rounding of the two gradients.
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(with_term))
  assert max(float(np.max(np.abs(e))) for e in jax.tree.leaves(expected)) > (
      0.05 * scale)
  exp = dict(u.tree_flatten_with_names(expected))
  for name, d in u.tree_flatten_with_names(diff):
    np.testing.assert_allclose(d, exp[name], rtol=1e-4, atol=1e-5 * scale,
                               err_msg=name)


# --------------------------------------------------------------------------
# The step itself: rec="l1", LeCam and R1
# --------------------------------------------------------------------------
@functools.cache
def _gan_run():
  """Two stage-2 steps with rec="l1", GAN, LeCam and R1 on."""
  setup = _gan_setup()
  model, _, x0, _, _ = _inputs()
  x1 = np.random.default_rng(1).uniform(-1, 1, x0.shape).astype(np.float32)
  state = setup.init(jax.random.key(0))
  hist, ms = [jax.device_get(state)], []
  for x in (x0, x1):
    state, m = setup.step(state, sh.put_global_batch(x, setup.batch_sharding),
                          {})
    hist.append(jax.device_get(state))
    ms.append(jax.device_get(m))
  recon_fn = jax.jit(_recon_fn(model, 2))
  recons = [np.asarray(recon_fn(h["params"], h["params"], x,
                                jax.random.fold_in(jax.random.key(0), i)))
            for i, (h, x) in enumerate(zip(hist, (x0, x1)))]
  return hist, ms, (x0, x1), recons


_logits = jax.jit(lambda d_params, x: _DISC.apply({"params": d_params}, x))


def _np_lecam(real, fake, ema_real, ema_fake):
  relu = lambda v: np.maximum(v, 0)
  return (np.mean(relu(real - ema_fake)**2) +
          np.mean(relu(ema_real - fake)**2))


def test_rec_l1_step_reports_mean_absolute_error():
  """The Fig. 10 sweep: rec_l1 is numpy's mean |recon - x| of the step's
  reconstruction, and the loss is built on it."""
  _, ms, xs, recons = _gan_run()
  for m, x, recon in zip(ms, xs, recons):
    np.testing.assert_allclose(m["rec_l1"], np.mean(np.abs(recon - x)),
                               rtol=1e-6)
    assert "rec_l2" not in m
    np.testing.assert_allclose(
        m["loss"], m["rec_l1"] + WEIGHTS["gan_weight"] * m["gan_g"], rtol=1e-6)


def test_lecam_emas_track_d_mean_logits():
  """ema <- decay ema + (1 - decay) mean D(x), for real and fake apart; the
  reported lecam is the regulariser on the EMAs before the step."""
  hist, ms, xs, recons = _gan_run()
  for i in range(2):
    dp, ema = hist[i]["d_params"], hist[i]["lecam"]
    real = np.asarray(_logits(dp, xs[i]), np.float64)
    fake = np.asarray(_logits(dp, recons[i]), np.float64)
    assert abs(real.mean() - fake.mean()) > 1e-3 * np.abs(real).mean()
    np.testing.assert_allclose(ms[i]["d_real"], real.mean(), rtol=1e-5)
    np.testing.assert_allclose(ms[i]["d_fake"], fake.mean(), rtol=1e-5)
    for k, logits in (("real", real), ("fake", fake)):
      np.testing.assert_allclose(
          hist[i + 1]["lecam"][k],
          LECAM_DECAY * ema[k] + (1 - LECAM_DECAY) * logits.mean(),
          rtol=1e-5, atol=1e-8, err_msg=f"step {i} {k}")
    np.testing.assert_allclose(
        ms[i]["lecam"], _np_lecam(real, fake, ema["real"], ema["fake"]),
        rtol=1e-5)
  assert hist[1]["lecam"]["real"] != 0 and hist[1]["lecam"]["fake"] != 0


@functools.cache
def _d_loss_grad(**loss):
  """Jitted value and grad of Setup.d_loss for a stage-2 config."""
  setup = _setup(2, **loss)
  return jax.jit(jax.value_and_grad(
      lambda dp, s, x, r: setup.d_loss(dp, s, x, r)[0]))


def _d_value_and_grad(state, x, recon, **loss):
  return jax.device_get(_d_loss_grad(**loss)(state["d_params"], state, x,
                                             recon))


def _assert_d_difference(with_term, without, weight, value, grad):
  """D loss and gradient moved by weight x (value, grad)."""
  np.testing.assert_allclose(with_term[0] - without[0], weight * value,
                             rtol=1e-4, atol=1e-6)
  diff = jax.tree.map(np.subtract, with_term[1], without[1])
  # 1e-3: the R1 gradient is second order and smaller than the hinge one it
  # is told apart from (measured 7e-5). The difference of two float32
  # gradients carries their round-off: a few ulps of the larger (it was
  # once 1.4e-8 on a 5e-8 entry, against an atol of 9e-9: a flaky test).
  roundoff = 4 * np.finfo(np.float32).eps * max(
      float(np.max(np.abs(g))) for g in jax.tree.leaves(with_term[1]))
  _assert_trees_close(diff, jax.tree.map(lambda g: weight * g, grad),
                      rtol=1e-3, atol=roundoff)


def test_lecam_adds_its_loss_and_gradient_to_d():
  """D loss += lecam_weight LeCam(D(x), D(recon), EMAs of the state)."""
  hist, _, xs, recons = _gan_run()
  state, x, recon = hist[1], xs[1], recons[1]
  real = np.asarray(_logits(state["d_params"], x), np.float64)
  fake = np.asarray(_logits(state["d_params"], recon), np.float64)
  # EMAs that make both halves active for half of the examples.
  ema_real, ema_fake = np.float32(np.median(fake)), np.float32(np.median(real))
  state = dict(state, lecam=dict(real=ema_real, fake=ema_fake))

  def lecam(dp):
    r, f = _DISC.apply({"params": dp}, x), _DISC.apply({"params": dp}, recon)
    return (jnp.mean(jnp.maximum(r - ema_fake, 0)**2) +
            jnp.mean(jnp.maximum(ema_real - f, 0)**2))

  _assert_d_difference(
      _d_value_and_grad(state, x, recon, gan_weight=1.0, lecam_weight=LECAM),
      _d_value_and_grad(state, x, recon, gan_weight=1.0), LECAM,
      _np_lecam(real, fake, ema_real, ema_fake),
      jax.device_get(jax.jit(jax.grad(lecam))(state["d_params"])))


def test_r1_adds_the_gradient_penalty_to_d():
  """D loss += r1_weight E ||grad_x D(x)||^2 on real images, with its
  gradient; the step reports the same penalty."""
  hist, ms, xs, recons = _gan_run()
  state, x, recon = hist[0], xs[0], recons[0]

  def penalty(dp):  # grad of the summed logits: mbstd couples the examples
    gx = jax.grad(lambda v: jnp.sum(_DISC.apply({"params": dp}, v)))(x)
    return jnp.mean(jnp.sum(gx**2, axis=(1, 2, 3)))

  gx = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(
      _DISC.apply({"params": state["d_params"]}, v))))(x), np.float64)
  value = np.mean(np.sum(gx**2, axis=(1, 2, 3)))
  np.testing.assert_allclose(ms[0]["r1"], value, rtol=1e-5)
  _assert_d_difference(
      _d_value_and_grad(state, x, recon, gan_weight=1.0, r1_weight=R1),
      _d_value_and_grad(state, x, recon, gan_weight=1.0), R1, value,
      jax.device_get(jax.jit(jax.grad(penalty))(state["d_params"])))


def test_step_differentiates_the_exposed_losses():
  """The step's gradient norms are those of g_loss (= L1 + lambda GAN from
  the networks directly) and of d_loss at the step's inputs."""
  hist, ms, xs, recons = _gan_run()
  _, direct = _direct(2)
  grad = jax.tree.map(lambda a, b: a + WEIGHTS["gan_weight"] * b,
                      direct["rec_l1"], direct["gan_weight"])
  np.testing.assert_allclose(ms[0]["l2_grads"], u.l2_norm(grad), rtol=1e-4)
  for i in range(2):
    _, d_grad = _d_value_and_grad(hist[i], xs[i], recons[i], **GAN_RUN)
    np.testing.assert_allclose(ms[i]["l2_d_grads"], u.l2_norm(d_grad),
                               rtol=1e-4)
