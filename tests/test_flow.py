"""Flow matching (diffusion/flow.py) next to DDPM (diffusion/ddpm.py): both objectives,
with their samplers, recover a small 2-D distribution; the path, the
training times and the solvers are what they say."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitok_jax.diffusion import ddpm
from vitok_jax.diffusion import flow
from vitok_jax.models import dit as dit_lib

MODES = np.array([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]],
                 np.float32)
SPREAD = 0.15


def draw_data(rng, n):
  k1, k2 = jax.random.split(rng)
  mode = jax.random.randint(k1, (n,), 0, len(MODES))
  return jnp.asarray(MODES)[mode] + SPREAD * jax.random.normal(k2, (n, 2))


def mlp_init(rng, width=128):
  sizes = [(2 + 32, width), (width, width), (width, 2)]
  keys = jax.random.split(rng, len(sizes))
  return [(jax.random.normal(k, s) / np.sqrt(s[0]), jnp.zeros(s[1]))
          for k, s in zip(keys, sizes)]


def mlp(params, x, t):
  """A time-conditioned MLP: t in DDPM's 0..999 range (flow passes t*1000)."""
  h = jnp.concatenate([x, dit_lib.timestep_embedding(t, 32)], -1)
  for i, (w, b) in enumerate(params):
    h = h @ w + b
    if i < len(params) - 1:
      h = jax.nn.silu(h)
  return h


def train(loss_of, steps=2500, batch=512, seed=0):
  params = mlp_init(jax.random.key(seed))
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, rng):
    k_data, k_loss = jax.random.split(rng)
    x0 = draw_data(k_data, batch)
    loss, grads = jax.value_and_grad(
        lambda p: loss_of(lambda x, t: mlp(p, x, t), x0, k_loss)[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  rngs = jax.random.split(jax.random.key(seed + 1), steps)
  for r in rngs:
    params, opt, loss = step(params, opt, r)
  return params, float(loss)


def assert_recovers_the_modes(samples):
  samples = np.asarray(samples)
  d = np.linalg.norm(samples[:, None] - MODES[None], axis=-1)
  nearest, dist = d.argmin(1), d.min(1)
  assert np.mean(dist < 4 * SPREAD) > 0.9, np.mean(dist < 4 * SPREAD)
  share = np.bincount(nearest, minlength=len(MODES)) / len(samples)
  assert share.min() > 0.15, share  # every mode, none collapsed
  # The spread within a mode, not a point mass.
  within = np.sqrt(np.mean(dist[dist < 4 * SPREAD] ** 2) / 2)
  assert 0.5 * SPREAD < within < 2.0 * SPREAD, within


@pytest.fixture(scope="module")
def flow_params():
  return train(lambda f, x0, rng: flow.velocity_loss(f, x0, rng))[0]


def test_ddpm_recovers_a_2d_mixture():
  sched = ddpm.linear_schedule()
  params, _ = train(lambda f, x0, rng: ddpm.epsilon_loss(f, sched, x0,
                                                              rng))
  x_T = jax.random.normal(jax.random.key(5), (2000, 2))
  x0 = jax.jit(lambda x: ddpm.ddim_sample(
      lambda x, t: mlp(params, x, t), sched, x, num_steps=50))(x_T)
  assert_recovers_the_modes(x0)


@pytest.mark.parametrize("solver,steps", [("euler", 50), ("heun", 25)])
def test_flow_matching_recovers_a_2d_mixture(flow_params, solver, steps):
  x_1 = jax.random.normal(jax.random.key(5), (2000, 2))
  x0 = jax.jit(lambda x: flow.ode_sample(
      lambda x, t: mlp(flow_params, x, t), x, steps, solver))(x_1)
  assert_recovers_the_modes(x0)


def test_path_target_and_times():
  x0, noise = jnp.ones((3, 2)), jnp.full((3, 2), -1.0)
  t = jnp.array([0.0, 0.25, 1.0])
  np.testing.assert_allclose(flow.interpolate(x0, noise, t)[:, 0],
                             [1.0, 0.5, -1.0])
  # The loss of the exact velocity eps - x0 is 0, whatever x_t and t.
  seen = {}

  def oracle(x_t, t_scaled):
    seen["t"] = t_scaled
    tt = (t_scaled / flow.TIME_SCALE)[:, None]
    # x_t = (1 - t) x0 + t eps with x0 = 0.5: eps = (x_t - (1 - t) 0.5) / t
    return (x_t - (1 - tt) * 0.5) / tt - 0.5

  loss, aux = flow.velocity_loss(oracle, jnp.full((64, 2), 0.5),
                                 jax.random.key(0))
  assert float(loss) < 1e-6
  np.testing.assert_allclose(seen["t"], aux["t"] * 1000, rtol=1e-6)
  t = flow.sample_t(jax.random.key(1), 20000, "logit_normal", 0.0, 1.0)
  logit = np.log(np.asarray(t) / (1 - np.asarray(t)))
  assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03
  u = np.asarray(flow.sample_t(jax.random.key(1), 20000))
  assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1
  with pytest.raises(ValueError, match="t_sampling='beta'"):
    flow.sample_t(jax.random.key(1), 4, "beta")
  with pytest.raises(ValueError, match="solver='rk4'"):
    flow.ode_sample(oracle, jnp.zeros((2, 2)), 4, "rk4")


def test_solvers_take_their_closed_form_steps():
  """dx/dt = x from x(1) = e towards t = 0 in n steps of h = 1/n: Euler
  multiplies by (1 - h) each step, Heun by (1 - h + h^2 / 2)."""
  v = lambda x, t: x
  x1 = jnp.full((1, 1), np.e, jnp.float32)
  for n in (10, 20):
    h = 1.0 / n
    want = dict(euler=np.e * (1 - h) ** n, heun=np.e * (1 - h + h * h / 2) ** n)
    for solver in flow.SOLVERS:
      got = float(flow.ode_sample(v, x1, n, solver)[0, 0])
      assert got == pytest.approx(want[solver], rel=1e-5), (solver, n)
  # Heun is the closer to the exact x(0) = 1.
  assert abs(want["heun"] - 1) < 0.1 * abs(want["euler"] - 1)


def test_velocity_loss_samples_t_from_the_given_logit_normal():
  """The t velocity_loss trains at (those it gives the model) are
  sigmoid(N(mean, std)) for a non-default (mean, std): a KS test of their
  logits against scipy's normal, with a fixed seed; the same draws fail
  against the default N(0, 1), against the swapped N(std, mean) and as
  uniforms."""
  scipy_stats = pytest.importorskip("scipy.stats")

  def times(*args):
    def f(rng):
      seen = {}

      def v_fn(x_t, t_scaled):
        seen["t"] = t_scaled / flow.TIME_SCALE
        return jnp.zeros_like(x_t)

      _, aux = flow.velocity_loss(v_fn, jnp.zeros((4000, 1)), rng, *args)
      return seen["t"], aux["t"]
    given, aux_t = jax.jit(f)(jax.random.key(3))
    np.testing.assert_allclose(given, aux_t, rtol=1e-6)
    return np.asarray(given, np.float64)

  mean, std = 0.8, 0.4
  t = times("logit_normal", mean, std)
  logit = np.log(t / (1 - t))
  assert scipy_stats.kstest(logit, "norm", (mean, std)).pvalue > 0.01
  for other in ((0.0, 1.0), (std, mean)):
    assert scipy_stats.kstest(logit, "norm", other).pvalue < 1e-6, other
  assert scipy_stats.kstest(t, "uniform").pvalue < 1e-6
  # And "uniform" is uniform.
  assert scipy_stats.kstest(times("uniform"), "uniform").pvalue > 0.01


def test_solvers_on_a_time_dependent_field():
  """dx/dt = t x from x(1) = 1 to t = 0: x(0) = exp(-1/2). Each step is the
  numpy recursion written here (Heun's corrector at the step's end time),
  Euler's error halves and Heun's quarters when the steps double."""
  v = lambda x, t: (t / flow.TIME_SCALE)[:, None] * x
  x1 = jnp.ones((1, 1), jnp.float32)
  exact = np.exp(-0.5)
  err = {}
  for n in (16, 32, 64):
    ts = np.linspace(1.0, 0.0, n + 1)
    want = dict(euler=1.0, heun=1.0)
    for t, t_next in zip(ts[:-1], ts[1:]):
      h = t_next - t
      x = want["euler"]
      want["euler"] = x + h * t * x
      x = want["heun"]
      pred = x + h * t * x
      want["heun"] = x + h / 2 * (t * x + t_next * pred)
    for solver in flow.SOLVERS:
      got = float(flow.ode_sample(v, x1, n, solver)[0, 0])
      assert got == pytest.approx(want[solver], rel=1e-5), (solver, n)
      err[solver, n] = abs(got - exact)
  for solver, order in (("euler", 1), ("heun", 2)):
    for n in (16, 32):
      ratio = err[solver, n] / err[solver, 2 * n]
      assert 2 ** order * 0.8 < ratio < 2 ** order * 1.2, (solver, n, ratio)


def test_the_dit_step_passes_the_configured_logit_normal_on(monkeypatch):
  """The DiT trainer passes config.diffusion's t_sampling, logit_mean and
  logit_std to velocity_loss, in their places (the step is traced, not
  compiled: cheap)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from configs.dit import dit_l_vitok_s_b16_256  # pylint: disable=g-import-not-at-top
  from vitok_jax.diffusion import codec as codec_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.parallel import sharding as sh  # pylint: disable=g-import-not-at-top
  from vitok_jax.models import vitok  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  calls = []
  real = flow.velocity_loss

  def spy(*args, **kwargs):
    bound = inspect.signature(real).bind(*args, **kwargs)
    bound.apply_defaults()
    calls.append(bound.arguments)
    return real(*args, **kwargs)

  monkeypatch.setattr(flow, "velocity_loss", spy)
  c = dit.resolve_config(dit_l_vitok_s_b16_256.get_config(
      "runlocal,tokenizer=/runs/t,batch=8,res=16,tokens=1,c=4"))
  c.latents.source = "shards:unused"  # the step takes latents
  c.diffusion.update(kind="flow", t_sampling="logit_normal", logit_mean=0.8,
                     logit_std=0.4)
  codec = codec_lib.Codec(vitok.create("mu-mu/16", 4), None, 16)
  setup = dit.make_setup(c, sh.make_mesh([("data", 1)], jax.devices()[:1]),
                         codec)
  jax.eval_shape(setup.step, setup.abstract_state,
                 jax.ShapeDtypeStruct((8, codec.num_tokens, 4), jnp.float32),
                 jax.ShapeDtypeStruct((8,), jnp.int32), {})
  (args,) = calls
  assert (args["t_sampling"], args["logit_mean"], args["logit_std"]) == (
      "logit_normal", 0.8, 0.4)
  # test_velocity_loss_samples_t_from_the_given_logit_normal: with these
  # arguments velocity_loss trains at sigmoid(N(0.8, 0.4)).
