"""The mixed-precision policy is what the config says: bf16 matmuls with a
float32 residual stream, norms and loss (the paper's autocast, the default),
or bf16 everywhere but the loss (stream_dtype=bfloat16)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.vitok import s_b16_256
from vitok_jax import losses
from vitok_jax.models import vitok
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u


def test_defaults_are_autocast():
  for c in (tokenizer.default_config(), s_b16_256.get_config()):
    assert (c.model.dtype, c.model.stream_dtype) == ("bfloat16", "float32")


@pytest.mark.parametrize("stream", ["float32", "bfloat16"])
def test_dtypes_of_stream_norms_matmuls_and_loss(stream):
  c = s_b16_256.get_config("variant=mu-mu/8")
  c.model.stream_dtype = stream
  model = vitok.from_config(tokenizer.resolve_config(c).model)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = model.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x)
  (recon, aux), state = model.apply(variables, x, train=True,
                                    rngs={"sample": jax.random.key(3)},
                                    capture_intermediates=True,
                                    mutable=["intermediates"])
  out = {n.rsplit("/__call__", 1)[0]: v for n, v in
         u.tree_flatten_with_names(state["intermediates"])}
  for side in ("encoder", "decoder"):
    assert out[f"{side}/block_0"].dtype == jnp.dtype(stream)  # residual stream
    assert out[f"{side}/block_0/norm1"].dtype == jnp.dtype(stream)
    assert out[f"{side}/norm"].dtype == jnp.dtype(stream)
    assert out[f"{side}/block_0/attn/qkv"].dtype == jnp.bfloat16  # matmuls
    assert out[f"{side}/block_0/mlp/down"].dtype == jnp.bfloat16
  assert recon.dtype == jnp.float32 and aux["mean"].dtype == jnp.float32
  total, terms = losses.autoencoder(recon, x, aux)
  assert total.dtype == jnp.float32 and terms["kl"].dtype == jnp.float32
  assert np.isfinite(float(total))
