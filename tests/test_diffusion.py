"""The diffusion mathematics: q(x_t | x_0), DDIM against diffusers, CFG,
class dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax import diffusion as dif

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


def test_epsilon_loss_is_zero_for_the_oracle_and_positive_otherwise():
  x0 = jax.random.normal(jax.random.key(0), (64, 8, 4))
  rng = jax.random.key(1)
  rng_t, rng_n = jax.random.split(rng)
  noise = jax.random.normal(rng_n, x0.shape)  # what epsilon_loss will draw
  loss, aux = dif.epsilon_loss(lambda x, t: noise, SCHED, x0, rng)
  assert float(loss) < 1e-12 and aux["t"].shape == (64,)
  assert 0 <= int(aux["t"].min()) and int(aux["t"].max()) < 1000
  loss0, _ = dif.epsilon_loss(lambda x, t: jnp.zeros_like(x), SCHED, x0, rng)
  assert float(loss0) == pytest.approx(1.0, rel=0.1)
