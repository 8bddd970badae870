"""Class labels -> images: DDIM with classifier-free guidance in the DiT's
latent space, then the frozen ViTok decodes (paper §2.3).

One jitted function serves the training pictures, the generation evaluator
and `python -m vitok_jax.sample`:

  x_T ~ N(0, I) [B, N, c] -> DDIM (num_steps, eta) on guided eps -> x_0
  (or, for a flow-matching DiT, the Euler/Heun ODE on guided velocities)
  -> z = x_0 * std + mean (the run's latent statistics) -> ViTok decode
"""
from typing import Callable

import jax
import jax.numpy as jnp

from vitok_jax.diffusion import ddpm
from vitok_jax.diffusion import flow
from vitok_jax.parallel import sharding as sh


def make_sample_fn(dit_model, codec, sched: ddpm.Schedule, *, mesh,
                   dit_params_sharding, num_steps: int = 250,
                   eta: float = 0.0, cfg_scale: float = 1.5,
                   grid=None, kind: str = "ddpm",
                   solver: str = "euler") -> Callable:
  """-> jitted fn(dit_params, tok_params, stats (mean, std), labels [B],
  index [B], seed) -> (images [B, H, W, 3] in [-1, 1], latents z [B, N, c]),
  sharded like the batch.

  Sample number i's noise (x_T and, with eta > 0, DDIM's) comes from
  fold_in(key(seed), i) alone, so one seed gives the same samples whatever
  the batch size, the mesh or the number of processes. cfg_scale 1 runs the
  conditional DiT alone (half the work); labels equal to
  dit_model.num_classes sample unconditionally.
  """
  null = dit_model.num_classes
  shape = (codec.num_tokens, codec.channels)
  if kind == "flow":
    flow.time_grid(num_steps)  # validates num_steps
  else:
    ddpm.ddim_timesteps(sched.num_steps, num_steps)

  def sample(dit_params, tok_params, stats, labels, index, seed):
    keys = jax.vmap(lambda i: jax.random.split(
        jax.random.fold_in(jax.random.key(seed), i)))(index)  # [B, 2]
    rng_ddim = keys[:, 1]
    x_t = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(
        keys[:, 0])
    dit = lambda x, t, y: dit_model.apply({"params": dit_params}, x, t, y,
                                          grid)
    if cfg_scale == 1.0:
      eps_fn = lambda x, t: dit(x, t, labels)
    else:
      eps_fn = lambda x, t: ddpm.guided_eps(dit, x, t, labels, null,
                                                 cfg_scale)
    if kind == "flow":  # eps_fn is the (guided) velocity
      x0 = flow.ode_sample(eps_fn, x_t, num_steps, solver)
    else:
      x0 = ddpm.ddim_sample(eps_fn, sched, x_t, rng_ddim,
                                 num_steps=num_steps, eta=eta)
    mean, std = stats
    z = x0 * std + mean
    return codec.decode(tok_params, z), z

  repl, batch = sh.replicated(mesh), sh.batch_sharding(mesh)
  return jax.jit(sample, in_shardings=(dit_params_sharding, repl, repl,
                                       batch, batch, None),
                 out_shardings=(batch, batch))
