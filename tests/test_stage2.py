"""Stage 2: frozen encoder, trained decoder + discriminator, EMA, and config
values that demonstrably reach the step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.vitok import s_b16_256
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.models import discriminator
from vitok_jax.models import lpips as lpips_lib
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u


def stage1_config(steps=4, lpips=True):
  c = s_b16_256.get_config("runlocal")
  c.total_steps, c.log_every, c.ckpt_every, c.image_every = steps, 2, steps, 0
  c.input.update(res=32, batch_size=8)
  c.evals = {}
  if lpips:  # a random VGG: the same computation as the real LPIPS
    c.loss.update(lpips_weight=1.0, lpips_weights=None, lpips_allow_random=True)
  else:  # the unit tests below: faster to compile
    c.loss.lpips_weight = 0.0
  return c


def stage2_config(init_from=None, steps=4, gan=0.5, dlr=1e-3, warmup=0,
                  ema=0.5, start=0, lpips=False):
  c = stage1_config(steps, lpips)
  c.init_from = init_from
  c.optim.freeze = tokenizer.ENCODER_PATTERNS
  c.loss.update(gan_weight=gan, gan_start_step=start)
  c.disc.update(lr=dlr, warmup_steps=warmup, channel_base=128, channel_max=16)
  c.ema_decay = ema
  return c


def _is_encoder(name):
  return any(name.startswith(p.split("/")[0]) for p in tokenizer.ENCODER_PATTERNS)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
  s1 = str(tmp_path_factory.mktemp("stage1"))
  # Without LPIPS: stage 2 (which runs it) needs only stage 1's params.
  tokenizer.train_and_evaluate(stage1_config(lpips=False), s1)
  return s1


def test_stage1_to_stage2_chain(stage1_run, tmp_path):
  s1, s2 = stage1_run, str(tmp_path / "s2")
  tokenizer.train_and_evaluate(stage2_config(init_from=s1, steps=4, lpips=True), s2)
  p1 = dict(u.tree_flatten_with_names(ckpt_lib.load_state_tree(s1)["params"]))
  st2 = ckpt_lib.load_state_tree(s2)
  p2 = dict(u.tree_flatten_with_names(st2["params"]))
  assert set(p1) == set(p2)
  enc = [n for n in p1 if _is_encoder(n)]
  dec = [n for n in p1 if not _is_encoder(n)]
  assert enc and dec
  for n in enc:  # bit-identical
    np.testing.assert_array_equal(p1[n], p2[n], err_msg=n)
  changed = [n for n in dec if not np.array_equal(p1[n], p2[n])]
  assert len(changed) == len(dec), set(dec) - set(changed)
  # The discriminator trained and the EMA is in the checkpoint.
  assert "d_params" in st2 and "params_ema" in st2
  c2 = tokenizer.resolve_config(stage2_config(init_from=s1, lpips=True))
  fresh = tokenizer.make_setup(c2, sh.make_mesh(c2.mesh)).init(jax.random.key(c2.seed))
  d0 = dict(u.tree_flatten_with_names(jax.device_get(fresh["d_params"])))
  d2 = dict(u.tree_flatten_with_names(st2["d_params"]))
  assert any(not np.array_equal(d0[n], d2[n]) for n in d0)
  # The EMA of frozen params is the frozen params.
  e2 = dict(u.tree_flatten_with_names(st2["params_ema"]))
  for n in enc:
    np.testing.assert_allclose(e2[n], p1[n], rtol=1e-6)


def _steps(config, n):
  """Runs n steps on fixed random batches; returns states after each step."""
  config = tokenizer.resolve_config(config)
  mesh = sh.make_mesh(config.mesh)
  setup = tokenizer.make_setup(config, mesh)
  frozen = tokenizer.load_frozen(config, mesh)
  state = setup.init(jax.random.key(0))
  history, ms = [jax.device_get(state)], []
  rng = np.random.default_rng(0)
  for _ in range(n):
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    state, m = setup.step(state, sh.put_global_batch(x, setup.batch_sharding), frozen)
    history.append(jax.device_get(state))
    ms.append(jax.device_get(m))
  return config, history, ms


def test_ema_matches_closed_form():
  d = 0.7
  _, hist, _ = _steps(stage2_config(ema=d), 3)
  p = [h["params"] for h in hist]  # p0 (init) .. p3
  expected = jax.tree.map(
      lambda p0, p1, p2, p3: d**3 * p0 + (1 - d) * (d**2 * p1 + d * p2 + p3),
      *p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               hist[-1]["params_ema"], expected)


def test_gan_weight_reaches_the_loss():
  c, _, ms = _steps(stage2_config(gan=0.37), 2)
  for m in ms:
    rest = m["rec_l2"] + c.loss.kl_weight * m["kl"]
    np.testing.assert_allclose(m["loss"] - rest, 0.37 * m["gan_g"], rtol=1e-4, atol=1e-6)
    assert m["gan_g"] != 0


def test_gan_start_step_switches_the_term_on():
  _, _, ms = _steps(stage2_config(gan=0.5, start=2), 3)
  assert [float(m["gan_on"]) for m in ms] == [0.0, 0.0, 1.0]
  m = ms[0]
  np.testing.assert_allclose(m["loss"], m["rec_l2"] + 1e-3 * m["kl"], rtol=1e-5)


def test_disc_lr_and_warmup_reach_the_optimizer():
  # Linear warm-up from 0: the first update of D has lr 0 and changes nothing.
  _, hist, ms = _steps(stage2_config(dlr=4e-3, warmup=4), 2)
  np.testing.assert_allclose([float(m["d_lr"]) for m in ms], [0.0, 1e-3], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, hist[1]["d_params"], hist[0]["d_params"])
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(hist[2]["d_params"]), jax.tree.leaves(hist[1]["d_params"])))
  # Without warm-up, D's first Adam step (b1 = 0) moves every weight with a
  # non-zero gradient by exactly the configured lr.
  _, h, _ = _steps(stage2_config(dlr=3e-3, warmup=0), 1)
  moves = np.concatenate([np.abs(a - b).ravel() for a, b in zip(
      jax.tree.leaves(h[1]["d_params"]), jax.tree.leaves(h[0]["d_params"]))])
  np.testing.assert_allclose(np.max(moves), 3e-3, rtol=1e-3)
  assert np.mean(np.isclose(moves, 3e-3, rtol=1e-2)) > 0.9


def test_init_from_mismatch_names_parameters(stage1_run, tmp_path):
  c = stage2_config(init_from=stage1_run)
  c.model.num_latent_tokens = 4  # a different architecture
  with pytest.raises(ValueError, match="surplus|missing.*latent_tokens|dec_mask_token"):
    tokenizer.train_and_evaluate(c, str(tmp_path / "s2"))


def _flops(lowered) -> float:
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_frozen_encoder_pays_no_backward_pass():
  """XLA's cost analysis of the stage-2 step is at most encoder forward +
  decoder, LPIPS and D forward+backward (+10%); with the encoder trained
  too (full fine-tuning) the step is clearly above that bound."""
  def setup_for(freeze):
    c = stage2_config(gan=0.5, lpips=True)
    c.model.variant = "S-mu/8"  # an encoder heavy enough for its backward to show
    c.optim.freeze = freeze
    c = tokenizer.resolve_config(c)
    mesh = sh.make_mesh(c.mesh, devices=jax.devices()[:1])
    return c, tokenizer.make_setup(c, mesh), tokenizer.load_frozen(c, mesh)

  c, setup, frozen = setup_for(tokenizer.ENCODER_PATTERNS)
  assert tokenizer.encoder_is_frozen(setup.abstract_state["params"], c.optim.freeze)
  x = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
  step = _flops(setup.step.lower(setup.abstract_state, x, frozen))

  model = setup.model
  grid = model.token_grid(x.shape)
  lpips_fn = lpips_lib.make_distance_fn(model.dtype)
  disc = discriminator.Discriminator(
      channel_base=c.disc.channel_base, channel_max=c.disc.channel_max,
      mbstd_group=c.disc.mbstd_group, dtype=model.dtype)
  params, d_params = setup.abstract_state["params"], setup.abstract_state["d_params"]
  rngs = {"sample": jax.random.key(0)}

  def encode(p, x):
    return model.apply({"params": p}, x, train=True, rngs=rngs, method="encode")

  def decoder_grads(p, dp, z, x, lp):
    def loss(p):
      y = model.apply({"params": p}, z, grid, method="decode")[:, 0]
      return (jnp.mean((y - x)**2) + jnp.mean(lpips_fn(lp, y, x)) -
              jnp.mean(disc.apply({"params": dp}, y)))
    return jax.grad(loss)(p)

  def disc_grads(dp, real_and_fake):  # one call: the same FLOPs as two
    sign = jnp.concatenate([-jnp.ones(8), jnp.ones(8)])
    return jax.grad(lambda dp: jnp.mean(jax.nn.relu(
        1 + sign * disc.apply({"params": dp}, real_and_fake))))(dp)

  z = jax.ShapeDtypeStruct((8, model.num_codes(grid), model.code_channels), jnp.float32)
  bound = (_flops(jax.jit(encode).lower(params, x)) +
           _flops(jax.jit(decoder_grads).lower(params, d_params, z, x, frozen["lpips"])) +
           _flops(jax.jit(disc_grads).lower(
               d_params, jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32))))
  assert step <= 1.1 * bound, (step, bound)

  c_full, setup_full, frozen_full = setup_for(())
  assert not tokenizer.encoder_is_frozen(setup_full.abstract_state["params"], ())
  full = _flops(setup_full.step.lower(setup_full.abstract_state, x, frozen_full))
  assert full > 1.3 * bound, (full, bound)


def test_split_step_equals_differentiating_through_a_frozen_encoder(monkeypatch):
  """Encoding outside the gradient changes the cost, not the result."""
  c = stage2_config(gan=0.5)
  _, split, _ = _steps(c, 2)
  monkeypatch.setattr(tokenizer, "encoder_is_frozen", lambda *a: False)
  _, through, _ = _steps(c, 2)
  for a, b in ((split[-1]["params"], through[-1]["params"]),
               (split[-1]["d_params"], through[-1]["d_params"])):
    jax.tree.map(lambda u_, v: np.testing.assert_allclose(u_, v, rtol=2e-4, atol=1e-6),
                 a, b)
