"""What the tokenizer trainer's two steps share -- on square images
(trainers/tokenizer.py) and on NaFlex rows (trainers/naflex.py): the
discriminator's optimizer, the frozen networks of the loss, and stage 2's
start from a stage-1 run."""
import jax
import jax.numpy as jnp
import optax

from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.models import lpips as lpips_lib
from vitok_jax import optim
from vitok_jax.parallel import sharding as sh
import vitok_jax.utils as u


def disc_schedule(dc) -> optax.Schedule:
  """Linear warm-up from 0 to dc.lr over dc.warmup_steps, then constant."""
  if not dc.warmup_steps:
    return optax.constant_schedule(dc.lr)
  return optax.linear_schedule(0.0, dc.lr, int(dc.warmup_steps))


def make_disc_tx(dc):
  sched = disc_schedule(dc)
  parts = [optax.clip_by_global_norm(dc.grad_clip)] if dc.grad_clip else []
  parts.append(optax.adamw(sched, b1=dc.b1, b2=dc.b2,
                           weight_decay=dc.weight_decay,
                           mask=optim.decay_mask))
  return optax.chain(*parts), sched


def load_frozen(config, mesh) -> dict:
  """The frozen networks the loss needs, replicated over the mesh."""
  frozen = {}
  if config.loss.lpips_weight:
    params = lpips_lib.load(config.loss.lpips_weights,
                            allow_random=config.loss.lpips_allow_random)
    frozen["lpips"] = jax.device_put(params, sh.replicated(mesh))
  return frozen


def init_from_stage1(state, setup, workdir: str, step=None):
  """Copies a stage-1 run's params (and into the EMA) into a fresh state;
  `setup`: a trainer's Setup (abstract_state, state_sharding)."""
  loaded = ckpt_lib.load_state_tree(workdir, step)["params"]
  expected = u.tree_flatten_with_names(setup.abstract_state["params"])
  got = dict(u.tree_flatten_with_names(loaded))
  missing = [n for n, _ in expected if n not in got]
  surplus = sorted(set(got) - {n for n, _ in expected})
  if missing or surplus:
    raise ValueError(f"config.init_from={workdir!r} does not fit the model: "
                     f"missing {missing[:10]}, surplus {surplus[:10]}")
  for n, a in expected:
    if tuple(got[n].shape) != tuple(a.shape):
      raise ValueError(f"config.init_from={workdir!r}: {n} has shape "
                       f"{got[n].shape}, the model wants {a.shape}")
  params = jax.device_put(jax.tree.map(jnp.asarray, loaded),
                          setup.state_sharding["params"])
  # The optimizer state of a fresh run is zeros/counters: keep it.
  state = dict(state, params=params)
  if "params_ema" in state:
    state["params_ema"] = jax.device_put(
        jax.tree.map(jnp.asarray, loaded), setup.state_sharding["params_ema"])
  return state
