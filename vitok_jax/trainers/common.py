"""What both trainers' steps share: the train state with its EMA, applying
gradients with the step's measurements and its finite flag, the batch check,
the jitted init and step, and the view of a restored run that the eval job
gets.

The host loop (trainers/host_loop.py) never imports this: it sees only the
`Task` a trainer builds from these pieces.
"""
from typing import Any, Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitok_jax import config_utils
from vitok_jax.evaluators import common as evaluators
from vitok_jax.parallel import sharding as sh
import vitok_jax.utils as u


def resolve_config(config, defaults, validators: dict):
  """A trainer's config as it runs: every key of `defaults` (its
  default_config()) present and no other, evaluator entries completed with
  their type's defaults, and every value satisfying `validators`. The result
  is a plain copy (placeholders resolved): the command line has been read.
  """
  config_utils.check_keys(config, defaults)
  missing = config_utils.missing_keys(config, defaults)
  if missing:
    raise ValueError(f"The config lacks {missing[:8]}: a config starts from "
                     f"its trainer's default_config() (docs/configs.md)")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.evals = evaluators.resolve_all(config.evals)
  config_utils.check_values(config, validators)
  return config


class EvalRun(NamedTuple):
  """A restored run as the eval job sees it, whatever its trainer."""
  step: int
  params: Any  # what evaluators score: the EMA when the run has one
  ema: bool
  mesh: Any
  predict_fns: Dict[str, Any]  # handed to the evaluators (evaluators/common.py)


def new_state(params, tx, ema_decay: float) -> dict:
  """{step, params, opt} and, when ema_decay (0 = no EMA), params_ema
  starting at the params."""
  state = dict(step=jnp.zeros((), jnp.int32), params=params,
               opt=tx.init(params))
  if ema_decay:
    state["params_ema"] = params
  return state


def apply_gradients(state: dict, grads, tx, schedule, ema_decay: float,
                    **terms):
  """One optimizer update of state["params"] (and its EMA).

  Returns (new state with step + 1, measurements: `terms` plus the norms of
  the gradients and params and the step's lr). The caller adds what else it
  measures, then `with_finite_flag`.
  """
  step = state["step"]
  updates, opt = tx.update(grads, state["opt"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new = dict(state, step=step + 1, params=params, opt=opt)
  if ema_decay:  # frozen params stay equal to themselves
    new["params_ema"] = ema_update(state["params_ema"], params, ema_decay)
  measurements = dict(terms, l2_grads=u.l2_norm(grads),
                      l2_params=u.l2_norm(params), lr=schedule(step))
  return new, measurements


def ema_update(ema, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def with_finite_flag(measurements: dict) -> dict:
  """measurements + "finite": one device bool per step (the host reads them
  in batches, no sync per step), true when every measurement is finite."""
  finite = jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(measurements)]))
  return dict(measurements, finite=finite)


def eval_params(state):
  """The params evaluators, pictures and sampling see: the EMA when there
  is one."""
  return state.get("params_ema", state["params"])


def check_batch(batch_size: int, mesh) -> None:
  """The global batch must split evenly over the mesh's data axes."""
  n = int(np.prod([mesh.shape[a] for a in sh.batch_axes(mesh)]))
  if batch_size % n:
    raise ValueError(f"config.input.batch_size={batch_size} is not divisible "
                     f"by the {n} devices of the data axes {dict(mesh.shape)}")


def jit_init(init: Callable, state_sharding):
  """rng -> a fresh state, laid out by `state_sharding`."""
  return jax.jit(init, out_shardings=state_sharding)


def jit_step(step: Callable, state_sharding, input_shardings, mesh):
  """(state, *inputs) -> (state, replicated measurements); the old state's
  buffers are donated to the new one. The step is traced under its mesh
  (sharding.traced_under): attention then picks for the mesh's devices and
  attn_impl="splash" can shard_map its Pallas kernel over the batch
  (models/attention.py); what the step computes is otherwise the same."""
  return jax.jit(sh.traced_under(mesh, step), in_shardings=(state_sharding, *input_shardings),
                 out_shardings=(state_sharding, sh.replicated(mesh)),
                 donate_argnums=(0,))
