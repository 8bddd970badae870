"""The diffusion mathematics: q(x_t | x_0), DDIM against diffusers, CFG,
class dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.diffusion import ddpm as dif

SCHED = dif.linear_schedule()


def _diffusers():
  pytest.importorskip("torch")
  return pytest.importorskip("diffusers")


def test_linear_schedule_is_ddpms():
  d = _diffusers().DDIMScheduler(clip_sample=False)
  np.testing.assert_allclose(SCHED.betas, d.betas.numpy(), rtol=1e-6)
  np.testing.assert_allclose(SCHED.alphas_cumprod, d.alphas_cumprod.numpy(), rtol=1e-5)
  assert float(SCHED.betas[0]) == pytest.approx(1e-4)
  assert float(SCHED.betas[-1]) == pytest.approx(0.02)
  with pytest.raises(ValueError, match="beta_start"):
    dif.linear_schedule(1000, 0.5, 0.1)


@pytest.mark.parametrize("t", [0, 300, 999])
def test_moments_of_q_xt_given_x0(t):
  x0 = jnp.linspace(-1.0, 1.0, 8)[None]  # one example, 8 values
  n = 20000
  noise = jax.random.normal(jax.random.key(t), (n, 8))
  xt = dif.q_sample(SCHED, jnp.broadcast_to(x0, (n, 8)), jnp.full((n,), t), noise)
  abar = float(SCHED.alphas_cumprod[t])
  np.testing.assert_allclose(xt.mean(0), np.sqrt(abar) * x0[0], atol=0.03)
  np.testing.assert_allclose(xt.var(0), 1 - abar, rtol=0.05, atol=1e-4)


def test_ddim_timesteps_match_diffusers():
  d = _diffusers().DDIMScheduler(clip_sample=False)
  d.set_timesteps(250)
  np.testing.assert_array_equal(dif.ddim_timesteps(1000, 250), d.timesteps.numpy())
  with pytest.raises(ValueError, match="num_sample_steps"):
    dif.ddim_timesteps(1000, 0)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("t", [996, 500, 0])
def test_one_ddim_step_matches_diffusers(eta, t):
  torch = pytest.importorskip("torch")
  d = _diffusers().DDIMScheduler(clip_sample=False)
  d.set_timesteps(250)
  rng = np.random.default_rng(t)
  x, eps, z = (rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(3))
  theirs = d.step(torch.from_numpy(eps), t, torch.from_numpy(x), eta=eta,
                  variance_noise=torch.from_numpy(z)).prev_sample.numpy()
  ours = dif.ddim_step(SCHED, x, eps, t, t - 4, eta, z if eta else None)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_ddim_eta0_is_deterministic_and_inverts_the_forward_process():
  x0 = jax.random.normal(jax.random.key(0), (3, 16, 4))
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  t_start = 996  # the first DDIM timestep: x_T is that step's forward draw
  x_T = dif.q_sample(SCHED, x0, jnp.full((3,), t_start), noise)

  def oracle(x, t):  # the exact noise of x under x0
    abar = SCHED.alphas_cumprod[t][:, None, None]
    return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

  out = jax.jit(lambda x: dif.ddim_sample(oracle, SCHED, x, num_steps=250))(x_T)
  np.testing.assert_allclose(out, x0, atol=2e-3)
  again = dif.ddim_sample(oracle, SCHED, x_T, rng=jax.random.key(9), num_steps=250)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  with pytest.raises(ValueError, match="rng"):
    dif.ddim_sample(oracle, SCHED, x_T, eta=1.0)


def test_cfg_scale_one_is_the_conditional_prediction():
  w = jax.random.normal(jax.random.key(0), (11, 5))

  def eps_fn(x, t, labels):  # depends on the label, the input and t
    return x * w[labels][:, None, :] + t[:, None, None] * 1e-3

  x = jax.random.normal(jax.random.key(1), (4, 7, 5))
  t = jnp.array([3, 500, 999, 0])
  labels = jnp.array([0, 3, 7, 9])
  np.testing.assert_allclose(dif.guided_eps(eps_fn, x, t, labels, 10, 1.0),
                             eps_fn(x, t, labels), rtol=1e-6)
  g3 = dif.guided_eps(eps_fn, x, t, labels, 10, 3.0)
  u = eps_fn(x, t, jnp.full_like(labels, 10))
  np.testing.assert_allclose(g3, u + 3.0 * (eps_fn(x, t, labels) - u), rtol=1e-5)


def test_class_dropout_at_the_configured_rate():
  labels = jnp.arange(100_000) % 1000
  out = dif.drop_labels(jax.random.key(0), labels, 0.1, 1000)
  dropped = np.asarray(out == 1000)
  assert abs(dropped.mean() - 0.1) < 0.005
  np.testing.assert_array_equal(np.asarray(out)[~dropped], np.asarray(labels)[~dropped])


def _numpy_abar():
  """DDPM's linear schedule computed here (betas 1e-4 .. 0.02, 1000 steps)
  in float64, rounded to float32 as the Schedule stores it
  (diffusion.linear_schedule: "computed in float64, stored float32"):
  unrounded, 1 - abar_0 = 1e-4 carries a 3e-4 relative error and the exact
  oracle below a loss of ~1e-8 at t = 0."""
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
  return abar.astype(np.float32).astype(np.float64)


def _true_noise_oracle(x0, shift=0):
  """An eps model that recovers the noise from what it is given:
  eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), in float64, at the t it
  receives (+ `shift`: an oracle one step off)."""
  abar = _numpy_abar()
  x0 = np.asarray(x0, np.float64)

  def eps_fn(x_t, t):
    t = np.clip(np.asarray(t) + shift, 0, 999)
    a = abar[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.asarray((np.asarray(x_t, np.float64) - np.sqrt(a) * x0) /
                       np.sqrt(1.0 - a), jnp.float32)

  return eps_fn


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_epsilon_loss_vanishes_only_for_the_true_noise_at_the_given_t(seed):
  # The oracle reads x_t and t, so this checks how epsilon_loss builds x_t
  # (sqrt(abar) x0 + sqrt(1 - abar) eps) and that it passes the same t.
  # Bound: x_t is float32 (relative rounding ~1e-7), amplified by
  # 1 / sqrt(1 - abar_t) <= 100, so an example at t ~ 0 has squared errors
  # <= ~1e-10 and the rest far less; the mean over 64 examples stays near
  # 1e-12 (measured ~1e-14). An oracle one step off in t scores >= 3e-5.
  x0 = jax.random.normal(jax.random.key(0), (64, 8, 4))
  rng = jax.random.key(seed)
  loss, aux = dif.epsilon_loss(_true_noise_oracle(x0), SCHED, x0, rng)
  assert float(loss) < 1e-10
  assert aux["t"].shape == (64,) and float(aux["diffusion_loss"]) == float(loss)
  assert 0 <= int(aux["t"].min()) and int(aux["t"].max()) < 1000
  for shift in (1, -1):
    off, _ = dif.epsilon_loss(_true_noise_oracle(x0, shift), SCHED, x0, rng)
    assert float(off) > 1e-6, (shift, float(off))


def test_epsilon_loss_is_the_numpy_mse_of_a_model():
  """The returned loss is mean((eps_fn(x_t, t) - eps)^2) over every element,
  with eps recovered from the x_t and t the model was given."""
  x0 = jax.random.normal(jax.random.key(0), (16, 8, 4))
  seen = {}

  def eps_fn(x_t, t):  # any model: depends on the input and on t
    seen["x_t"], seen["t"] = np.asarray(x_t, np.float64), np.asarray(t)
    return 0.5 * x_t + jnp.sin(t / 100.0)[:, None, None]

  loss, aux = dif.epsilon_loss(eps_fn, SCHED, x0, jax.random.key(4))
  t = seen["t"]
  np.testing.assert_array_equal(t, aux["t"])
  assert len(np.unique(t)) > 8  # t is drawn per example
  a = _numpy_abar()[t][:, None, None]
  eps = (seen["x_t"] - np.sqrt(a) * np.asarray(x0, np.float64)) / np.sqrt(1 - a)
  pred = 0.5 * seen["x_t"] + np.sin(t / 100.0)[:, None, None]
  want = np.mean((pred - eps) ** 2)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # A model that predicts 0 scores the mean square of the noise it drew
  # (E[eps^2] = 1 for eps ~ N(0, I)).
  zero, _ = dif.epsilon_loss(lambda x, t: jnp.zeros_like(x), SCHED, x0,
                             jax.random.key(4))
  assert float(zero) == pytest.approx(np.mean(eps ** 2), rel=1e-4)
  assert float(zero) == pytest.approx(1.0, abs=0.1)
