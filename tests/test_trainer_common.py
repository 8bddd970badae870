"""What both trainers' steps share (trainers/common.py), against optax and
the EMA formula computed here."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import common


def test_new_state_has_an_ema_only_when_asked():
  params = {"w": jnp.arange(3.0)}
  tx = optax.sgd(0.1)
  assert "params_ema" not in common.new_state(params, tx, 0.0)
  state = common.new_state(params, tx, 0.99)
  np.testing.assert_array_equal(state["params_ema"]["w"], params["w"])
  assert int(state["step"]) == 0
  assert common.eval_params(state) is state["params_ema"]


def test_apply_gradients_is_one_optax_step_and_the_ema():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.25, -1.0])}
  tx = optax.adamw(1e-2, weight_decay=1e-3)
  sched = lambda step: 1e-2 * (step + 1)
  state = common.new_state(params, tx, 0.9)
  state["params_ema"] = {"w": jnp.array([0.0, 0.0, 0.0])}
  new, m = common.apply_gradients(state, grads, tx, sched, 0.9,
                                  loss=jnp.float32(7.0))
  updates, _ = tx.update(grads, tx.init(params), params)
  want = np.asarray(params["w"] + updates["w"])
  np.testing.assert_allclose(new["params"]["w"], want, rtol=1e-6)
  np.testing.assert_allclose(new["params_ema"]["w"], 0.1 * want, rtol=1e-6)
  assert int(new["step"]) == 1
  assert float(m["loss"]) == 7.0 and float(m["lr"]) == pytest.approx(1e-2)
  assert float(m["l2_grads"]) == pytest.approx(np.sqrt(0.25 + 0.0625 + 1.0))
  assert float(m["l2_params"]) == pytest.approx(np.linalg.norm(want))


def test_the_finite_flag_sees_any_non_finite_measurement():
  ok = common.with_finite_flag(dict(a=jnp.float32(1), b=jnp.ones(3)))
  assert bool(ok["finite"])
  bad = common.with_finite_flag(dict(a=jnp.float32(1),
                                     b=jnp.array([1.0, jnp.inf, 0.0])))
  assert not bool(bad["finite"])


def test_batch_check_names_the_key_and_the_mesh():
  mesh = sh.make_mesh([("data", -1)])
  common.check_batch(2 * jax.device_count(), mesh)
  if jax.device_count() > 1:
    with pytest.raises(ValueError, match="config.input.batch_size=1 is not "
                       "divisible"):
      common.check_batch(1, mesh)
