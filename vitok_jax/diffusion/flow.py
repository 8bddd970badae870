"""Flow matching for the latent DiT (`config.diffusion.kind="flow"`): beyond
the paper, which trains its DiTs with DDPM (diffusion.py), but what
ViTok-v2 and most current latent generators (SiT, LightningDiT) use.

Rectified flow: a straight path from data (t = 0) to noise (t = 1),

  x_t = (1 - t) x_0 + t eps,   dx_t/dt = v = eps - x_0,

the DiT predicts v (the same network; its output is read as a velocity),
with t ~ U(0, 1) or logit-normal (SD3: sigmoid of N(m, s)). Sampling
integrates the ODE dx/dt = v from t = 1 to 0 on a uniform grid with Euler or
Heun steps; classifier-free guidance mixes velocities as DDIM mixes eps
(diffusion.guided_eps). The DiT sees t * TIME_SCALE, so its sinusoidal time
embedding spans the same range as DDPM's integer timesteps 0 .. 999.
Pure functions of arrays; everything jits.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

TIME_SCALE = 1000.0
T_SAMPLING = ("uniform", "logit_normal")
SOLVERS = ("euler", "heun")


def _bcast(v, x):
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def interpolate(x0, noise, t):
  """x_t on the straight path, t [B] in [0, 1]."""
  t = _bcast(t, x0)
  return (1.0 - t) * x0 + t * noise


def sample_t(rng, n: int, kind: str = "uniform", logit_mean: float = 0.0,
             logit_std: float = 1.0):
  """Training times [n] in (0, 1)."""
  if kind == "uniform":
    return jax.random.uniform(rng, (n,), jnp.float32)
  if kind == "logit_normal":
    return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(
        rng, (n,), jnp.float32))
  raise ValueError(f"diffusion.t_sampling={kind!r}: expected one of "
                   f"{T_SAMPLING}")


def velocity_loss(v_fn: Callable, x0, rng, t_sampling: str = "uniform",
                  logit_mean: float = 0.0, logit_std: float = 1.0):
  """E ||(eps - x_0) - v_fn(x_t, t * TIME_SCALE)||^2 -> (loss, aux)."""
  rng_t, rng_n = jax.random.split(rng)
  x0 = x0.astype(jnp.float32)
  t = sample_t(rng_t, x0.shape[0], t_sampling, logit_mean, logit_std)
  noise = jax.random.normal(rng_n, x0.shape, jnp.float32)
  pred = v_fn(interpolate(x0, noise, t), t * TIME_SCALE).astype(jnp.float32)
  loss = jnp.mean((pred - (noise - x0)) ** 2)
  return loss, {"flow_loss": loss, "t": t}


def time_grid(num_steps: int) -> np.ndarray:
  """1 = t_0 > t_1 > ... > t_num_steps = 0, uniform."""
  if num_steps < 1:
    raise ValueError(f"flow sampling needs num_steps >= 1, got {num_steps}")
  return np.linspace(1.0, 0.0, num_steps + 1).astype(np.float32)


def ode_sample(v_fn: Callable, x_1, num_steps: int = 250,
               solver: str = "euler"):
  """Integrates dx/dt = v_fn(x, t * TIME_SCALE) from x_1 (noise, t = 1) to
  t = 0 with lax.scan; deterministic. Heun costs two DiT calls a step."""
  if solver not in SOLVERS:
    raise ValueError(f"sampling.solver={solver!r}: expected one of {SOLVERS}")
  ts = jnp.asarray(time_grid(num_steps))

  def v(x, t):
    return v_fn(x, jnp.full((x.shape[0],), t * TIME_SCALE,
                            jnp.float32)).astype(x.dtype)

  def body(x, times):
    t, t_next = times
    dt = t_next - t  # negative: towards the data
    v1 = v(x, t)
    x_euler = x + dt * v1
    if solver == "euler":
      return x_euler, None
    return x + dt * 0.5 * (v1 + v(x_euler, t_next)), None

  x0, _ = jax.lax.scan(body, x_1.astype(jnp.float32), (ts[:-1], ts[1:]))
  return x0
