"""The generation probe's DiT: a small class-conditional DiT trained in
memory, for a fixed budget, on a tokenizer checkpoint's latents
(evaluators/generation_probe.py scores its samples).

It is trainers/dit.py's model, step and sampler with a fixed recipe; what
differs is the data: latents [N, tokens, c] that every process holds whole,
batches drawn by a seeded generator (sample i of step s is the same on any
process count), and no checkpoints (a probe is a measurement, repeated
from scratch for every tokenizer checkpoint).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import common
from vitok_jax.trainers import dit

_SETUPS = {}  # (recipe, model, res, frames, mesh) -> (dit.Setup, sampler)


def dit_config(probe, num_classes: int):
  """The DiT config (trainers/dit.py, resolved) of a probe's recipe."""
  c = dit.default_config()
  c.total_steps, c.seed, c.num_classes = probe.steps, probe.seed, num_classes
  c.model.update(size=probe.dit_size, dtype=probe.dtype)
  c.latents.source = "shards:in-memory"  # the step takes latents
  c.input.batch_size = probe.batch_size
  c.diffusion.kind = probe.kind
  c.optim.update(base_lr=probe.base_lr, warmup_steps=probe.warmup_steps)
  c.ema_decay = probe.ema_decay
  c.sampling.update(num_steps=probe.sample_steps, cfg_scale=probe.cfg_scale)
  return dit.resolve_config(c)


def fit(probe, mesh, codec: codec_lib.Codec, tok_params, latents: np.ndarray,
        labels: np.ndarray, num_classes: int):
  """Trains the probe DiT on `latents` [N, tokens, c] with `labels` [N]
  (-1: unconditional), the same arrays on every process. Returns (sample,
  loss): sample(labels, index, seed) -> images of the EMA params (the
  generation evaluator's sampler), loss the mean loss of the last 10% of
  the steps."""
  config = dit_config(probe, num_classes)
  # Jitted once per recipe, model and mesh: a periodic probe, or several
  # probes of one checkpoint, compile the DiT step and sampler once.
  key = (config.to_json(), repr(codec.model), codec.res, codec.frames, mesh)
  if key not in _SETUPS:
    setup = dit.make_setup(config, mesh, codec)
    _SETUPS[key] = (setup, dit.make_sampler(config, setup))
  setup, sampler = _SETUPS[key]
  moments = codec_lib.RunningMoments()
  moments.update(latents)  # the whole set, on every process alike
  stats = moments.result()
  state = setup.init(jax.random.key(config.seed))
  state["latent_stats"] = jax.device_put(
      dict(mean=jnp.asarray(stats.mean), std=jnp.asarray(stats.std)),
      setup.state_sharding["latent_stats"])
  rows = config.input.batch_size // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  draw = np.random.default_rng(config.seed)
  losses = []
  for _ in range(config.total_steps):
    pick = draw.integers(0, len(latents), config.input.batch_size)[mine]
    x, y = sh.put_global_batch((latents[pick], labels[pick].astype(np.int32)),
                               setup.batch_sharding)
    state, m = setup.step(state, x, y, tok_params)
    losses.append(m["loss"])
  tail = losses[-max(len(losses) // 10, 1):]
  loss = float(np.mean(jax.device_get(tail)))  # replicated scalars
  params, latent_stats = common.eval_params(state), dit.stats_of(state)
  sample: Callable = lambda y, i, seed: sampler(
      params, tok_params, latent_stats, y, i, seed)[0]
  return sample, loss
