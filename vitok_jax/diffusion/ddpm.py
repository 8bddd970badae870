"""Gaussian diffusion for the latent DiT (paper §2.3: DiT-L/XL with DDPM, 1000
steps, sampled with DDIM at 250 steps and CFG 1.5 or 3.0): DDPM training
with a linear beta schedule and an epsilon-prediction loss, a DDIM sampler,
classifier-free guidance. Pure functions of arrays; everything jits.

  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  abar_t = prod_{s<=t} (1 - beta_s)

Timesteps are integers 0 .. T-1 (T = 1000), as in DDPM/ADM/diffusers. DDIM
uses diffusers' default "leading" spacing (t = 996, 992, ..., 0 for 250
steps) and abar = 1 beyond the last step, so one step here equals
`diffusers.DDIMScheduler(clip_sample=False).step` (the tests check it).
Latents are not clipped: unlike pixels they have no [-1, 1] range.
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class Schedule(NamedTuple):
  betas: jax.Array  # [T] float32
  alphas_cumprod: jax.Array  # [T] float32: abar_t

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]


def linear_schedule(num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Schedule:
  """DDPM's linear betas (computed in float64, stored float32)."""
  if num_steps < 1 or not 0 < beta_start <= beta_end < 1:
    raise ValueError(f"linear_schedule needs num_steps >= 1 and 0 < "
                     f"beta_start <= beta_end < 1, got {num_steps}, "
                     f"{beta_start}, {beta_end}")
  betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  abar = np.cumprod(1.0 - betas)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(abar, jnp.float32))


def _bcast(v, x):
  """[B] -> [B, 1, ..., 1] to broadcast against x."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(sched: Schedule, x0, t, noise):
  """A draw of q(x_t | x_0) for integer timesteps t [B]."""
  abar = _bcast(sched.alphas_cumprod[t], x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def drop_labels(rng, labels, rate: float, null_class: int):
  """Classifier-free guidance training: each label becomes the null class
  with probability `rate` (10% in DiT)."""
  drop = jax.random.bernoulli(rng, rate, labels.shape)
  return jnp.where(drop, null_class, labels)


def epsilon_loss(eps_fn: Callable, sched: Schedule, x0, rng):
  """DDPM's simple loss: E ||eps - eps_fn(x_t, t)||^2 with t ~ U{0..T-1}.

  eps_fn(x_t, t) -> predicted noise (the DiT with its labels bound).
  Returns (loss, aux) with the per-example t.
  """
  rng_t, rng_n = jax.random.split(rng)
  t = jax.random.randint(rng_t, (x0.shape[0],), 0, sched.num_steps)
  noise = jax.random.normal(rng_n, x0.shape, jnp.float32)
  x_t = q_sample(sched, x0.astype(jnp.float32), t, noise)
  pred = eps_fn(x_t, t).astype(jnp.float32)
  loss = jnp.mean((pred - noise) ** 2)
  return loss, {"diffusion_loss": loss, "t": t}


def guided_eps(eps_fn: Callable, x, t, labels, null_class: int, scale: float):
  """Classifier-free guidance: eps_u + scale (eps_c - eps_u), with the
  conditional and unconditional halves in one batch.

  eps_fn(x, t, labels) -> eps. scale 1 is the conditional prediction.
  """
  b = x.shape[0]
  both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                jnp.concatenate([labels, jnp.full_like(labels, null_class)]))
  cond, uncond = both[:b], both[b:]
  return uncond + scale * (cond - uncond)


def ddim_timesteps(num_train_steps: int = 1000,
                   num_sample_steps: int = 250) -> np.ndarray:
  """Descending timesteps, diffusers' "leading" spacing."""
  if not 0 < num_sample_steps <= num_train_steps:
    raise ValueError(f"DDIM needs 0 < num_sample_steps <= {num_train_steps}, "
                     f"got {num_sample_steps}")
  ratio = num_train_steps // num_sample_steps
  return (np.arange(num_sample_steps) * ratio)[::-1].astype(np.int32)


def ddim_step(sched: Schedule, x_t, eps, t, t_prev, eta: float = 0.0,
              noise: Optional[jax.Array] = None):
  """x_t -> x_{t_prev} (Song et al. 2021, eq. 12); t_prev < 0 means abar 1.

  t, t_prev are scalars (the whole batch is at one timestep).
  """
  abar_t = sched.alphas_cumprod[t]
  abar_prev = jnp.where(t_prev >= 0,
                        sched.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
  x0 = (x_t - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)
  var = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
  sigma = eta * jnp.sqrt(var)
  x_prev = (jnp.sqrt(abar_prev) * x0 +
            jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps)
  if noise is not None:
    x_prev = x_prev + sigma * noise
  return x_prev


def ddim_sample(eps_fn: Callable, sched: Schedule, x_T, rng=None,
                num_steps: int = 250, eta: float = 0.0):
  """Runs DDIM from x_T down to x_0 with lax.scan.

  eps_fn(x, t [B]) -> eps. With eta = 0 no randomness is used (rng may be
  None) and the map x_T -> x_0 is deterministic. `rng` is one key for the
  batch, or a key per example ([B] keys), so that an example's noise does
  not depend on the batch it was sampled in.
  """
  if eta and rng is None:
    raise ValueError("ddim_sample with eta > 0 needs an rng")
  ts = jnp.asarray(ddim_timesteps(sched.num_steps, num_steps))
  ratio = sched.num_steps // num_steps
  per_example = eta and rng.shape != ()
  if not eta:
    rngs = jnp.zeros((num_steps,), jnp.uint32)
  elif per_example:  # [num_steps, B]
    rngs = jax.vmap(lambda k: jax.random.split(k, num_steps), out_axes=1)(rng)
  else:
    rngs = jax.random.split(rng, num_steps)

  def noise_like(key, x):
    if per_example:
      return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)
    return jax.random.normal(key, x.shape, x.dtype)

  def body(x, inp):
    t, key = inp
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32)).astype(x.dtype)
    noise = noise_like(key, x) if eta else None
    return ddim_step(sched, x, eps, t, t - ratio, eta, noise), None

  x0, _ = jax.lax.scan(body, x_T.astype(jnp.float32), (ts, rngs))
  return x0
