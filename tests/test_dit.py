"""The DiT: adaLN-Zero starts as the identity, conditioning reaches the
output, sizes match the DiT paper, bad shapes are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.models import dit
import vitok_jax.utils as u


def _init(model, x, grid=(1, 4, 4)):
  t = jnp.array([10, 500])
  y = jnp.array([1, 3])
  params = model.init(jax.random.key(0), x, t, y, grid)["params"]
  return params, t, y


def test_fresh_dit_is_the_identity_on_its_residual_stream():
  model = dit.create("mu", 8, 5)
  x = jax.random.normal(jax.random.key(1), (2, 16, 8))
  params, t, y = _init(model, x)
  out, state = model.apply({"params": params}, x, t, y, (1, 4, 4),
                           capture_intermediates=True, mutable=["intermediates"])
  inter = {n.rsplit("/__call__", 1)[0]: v for n, v in
           u.tree_flatten_with_names(state["intermediates"])}
  # The stream starts as embed(x) + the fixed sin-cos position embedding.
  embedded = inter["embed"] + dit.sincos_posemb(dit.latent_coords(16, (1, 4, 4)),
                                                model.width)[None]
  for i in range(model.depth):  # zero gates: every block passes x through
    np.testing.assert_array_equal(inter[f"block_{i}"], embedded)
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised final layer


def test_conditioning_reaches_the_prediction_once_trained():
  model = dit.create("mu", 8, 5)
  x = jax.random.normal(jax.random.key(1), (2, 16, 8))
  params, t, y = _init(model, x)
  # Stand-in for training: random weights where adaLN-Zero put zeros.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [
      0.05 * jax.random.normal(k, l.shape) if not np.any(l) else l
      for k, l in zip(keys, leaves)])
  f = lambda t, y: model.apply({"params": params}, x, t, y, (1, 4, 4))
  base = f(t, y)
  assert base.shape == (2, 16, 8) and np.abs(base).max() > 0
  assert np.abs(f(t, jnp.array([2, 5])) - base).max() > 1e-4  # class (and null)
  assert np.abs(f(t + 100, y) - base).max() > 1e-4  # timestep


@pytest.mark.parametrize("size,paper_m", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_parameter_counts_match_the_dit_paper(size, paper_m):
  model = dit.create(size, 16, 1000)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 256, 16)), jnp.zeros((1,), jnp.int32),
      jnp.zeros((1,), jnp.int32), (1, 16, 16)))["params"]
  assert abs(u.count_params(params) / 1e6 - paper_m) / paper_m < 0.01


def test_sincos_posemb_tells_positions_apart():
  coords = dit.latent_coords(16, (1, 4, 4))
  emb = dit.sincos_posemb(coords, 64)
  assert emb.shape == (16, 64)
  # Distinct positions, distinct embeddings; position 0 is [0, 1, 0, 1...].
  d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  assert np.all(d[~np.eye(16, dtype=bool)] > 1e-3)
  # 64 wide: 20 dims per axis (10 sin, 10 cos), t then h then w, 4 zeros.
  np.testing.assert_allclose(emb[:, 0:10], 0.0)  # sin(0): one frame
  np.testing.assert_allclose(emb[:, 10:20], 1.0)  # cos(0)
  np.testing.assert_allclose(emb[:, 60:], 0.0)
  # Tokens 0 and 1 share a row (h) and differ in column (w); 0 and 4 the
  # other way round.
  np.testing.assert_array_equal(emb[0, 20:40], emb[1, 20:40])
  assert not np.allclose(emb[0, 40:60], emb[1, 40:60])
  np.testing.assert_array_equal(emb[0, 40:60], emb[4, 40:60])
  assert not np.allclose(emb[0, 20:40], emb[4, 20:40])


def test_latent_coordinates_grid_or_1d():
  np.testing.assert_array_equal(dit.latent_coords(4, None)[:, 2], np.arange(4))
  assert dit.latent_coords(8, (2, 2, 2)).shape == (8, 3)
  with pytest.raises(ValueError, match="do not fill the token grid"):
    dit.latent_coords(10, (1, 4, 4))


def test_bad_shapes_and_sizes_are_named():
  model = dit.create("mu", 8, 5)
  with pytest.raises(ValueError, match=r"latents \[B, N, 8\]"):
    model.init(jax.random.key(0), jnp.zeros((2, 16, 4)), jnp.zeros((2,)),
               jnp.zeros((2,), jnp.int32), (1, 4, 4))
  with pytest.raises(ValueError, match="Unknown DiT size 'XXL'"):
    dit.create("XXL", 8, 5)
  # 1D codes (Latent ViTok) need no grid.
  params = model.init(jax.random.key(0), jnp.zeros((2, 12, 8)), jnp.zeros((2,)),
                      jnp.zeros((2,), jnp.int32))["params"]
  assert model.apply({"params": params}, jnp.ones((2, 12, 8)), jnp.zeros((2,)),
                     jnp.zeros((2,), jnp.int32)).shape == (2, 12, 8)
