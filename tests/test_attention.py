"""models/attention.py: "auto" picks per platform; on CPU it is exactly
today's default, and "splash" off TPU computes XLA's numbers."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.models import attention
from vitok_jax.models import vitok


def _qkv(shape=(2, 256, 4, 64), dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, shape, dtype) for k in keys]


def test_auto_on_cpu_is_todays_default_bit_for_bit():
  """A whole ViTok forward with attn_impl="auto" equals attn_impl=None."""
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1)
  outs = []
  for impl in (None, "auto"):
    model = vitok.create("mu-mu/8", 16, attn_impl=impl)
    params = model.init(jax.random.key(0), x)["params"]
    outs.append(model.apply({"params": params}, x)[0])
  np.testing.assert_array_equal(outs[0], outs[1])
  assert attention.resolve("auto", dtype=jnp.bfloat16, head_dim=64) is None


@pytest.mark.parametrize("platform,kind,dtype,head_dim,want", [
    ("gpu", "NVIDIA H100 80GB HBM3", jnp.bfloat16, 64, "cudnn"),
    ("gpu", "NVIDIA H100 80GB HBM3", jnp.float16, 128, "cudnn"),
    ("gpu", "NVIDIA H100 80GB HBM3", jnp.bfloat16, 72, "cudnn"),
    ("gpu", "NVIDIA H100 80GB HBM3", jnp.float32, 64, None),
    ("gpu", "NVIDIA H100 80GB HBM3", jnp.bfloat16, 256, None),
    ("gpu", "AMD Instinct MI300X", jnp.bfloat16, 64, None),
    # TPU: XLA; splash is an explicit choice (models/attention.py says why).
    ("tpu", "TPU v5 lite", jnp.bfloat16, 64, None),
])
def test_auto_rules(monkeypatch, platform, kind, dtype, head_dim, want):
  monkeypatch.setattr(attention, "context", lambda: (platform, kind, None))
  assert attention.resolve("auto", dtype=dtype, head_dim=head_dim) == want
  # Explicit choices are kept as they are.
  for impl in (None, "xla", "cudnn", "splash"):
    assert attention.resolve(impl, dtype=dtype, head_dim=head_dim) == impl


def test_splash_needs_a_tpu_mesh_a_multiple_of_128_and_a_split_batch(
    monkeypatch):
  class Mesh:  # what splash_unavailable reads of a context mesh
    size, _any_axis_manual = 4, False

  monkeypatch.setattr(attention, "context", lambda: ("tpu", "TPU v5", None))
  assert "no mesh while tracing" in attention.splash_unavailable(1024, 8)
  monkeypatch.setattr(attention, "context", lambda: ("tpu", "TPU v5", Mesh()))
  assert attention.splash_unavailable(1024, 8) is None
  assert "not a multiple of 128" in attention.splash_unavailable(1088, 8)
  assert "does not split over 4" in attention.splash_unavailable(1024, 6)


def test_splash_off_tpu_is_xla_with_a_warning(caplog):
  attention._log_once.cache_clear()  # pylint: disable=protected-access
  q, k, v = _qkv()
  with caplog.at_level(logging.WARNING):
    got = jax.jit(lambda q, k, v: attention.attend(q, k, v, "splash"))(q, k, v)
  np.testing.assert_array_equal(
      got, jax.jit(jax.nn.dot_product_attention)(q, k, v))
  assert "not tpu" in caplog.text


def test_unknown_impl_names_the_choices():
  with pytest.raises(ValueError, match="'flash'.*'splash'"):
    attention.resolve("flash", dtype=jnp.float32, head_dim=64)
