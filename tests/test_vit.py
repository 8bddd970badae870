"""RoPE and transformer-block mechanics."""
import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.models import vit


def _rand(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def test_swiglu_hidden_matches_spec():
  assert vit.swiglu_hidden(768) == 2048
  assert vit.swiglu_hidden(1152) == 3072


def test_rope_dims_split_equally_over_axes():
  assert vit.rope_dims_per_axis(64) == 20   # 60 rotated, 4 pass through
  assert vit.rope_dims_per_axis(72) == 24   # L: 72 = 3 x 24, all rotated
  angles = vit.rope_angles(vit.token_coords((2, 3, 4)), 64)
  assert angles.shape == (24, 30)


def test_rope_is_a_rotation():
  coords = vit.token_coords((2, 4, 4))
  x = _rand((2, coords.shape[0], 3, 64))
  y = vit.apply_rope(x, jnp.asarray(vit.rope_angles(coords, 64)))
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  # Unrotated tail passes unchanged; rotated part does change.
  np.testing.assert_array_equal(y[..., 60:], x[..., 60:])
  assert not np.allclose(y[..., :60], x[..., :60])


def test_rope_logits_depend_only_on_coordinate_differences():
  hd = 48
  q, k = _rand((1, 1, 1, hd), 1), _rand((1, 1, 1, hd), 2)

  def logit(cq, ck):
    aq = jnp.asarray(vit.rope_angles(np.array([cq]), hd))
    ak = jnp.asarray(vit.rope_angles(np.array([ck]), hd))
    return float(jnp.sum(vit.apply_rope(q, aq) * vit.apply_rope(k, ak)))

  base = logit((1, 2, 3), (0, 5, 1))
  shifted = logit((4, 9, 10), (3, 12, 8))  # same difference (1, -3, 2)
  other = logit((1, 2, 3), (0, 5, 2))      # different difference
  np.testing.assert_allclose(base, shifted, rtol=1e-4, atol=1e-4)
  assert abs(base - other) > 1e-3


def test_time_axis_matters_for_video_not_images():
  hd, n = 64, vit.rope_dims_per_axis(64)
  x = _rand((1, 16, 2, hd))
  # Image: every token has t = 0, so the t-frequencies rotate nothing.
  img = vit.apply_rope(x, jnp.asarray(vit.rope_angles(vit.token_coords((1, 4, 4)), hd)))
  np.testing.assert_allclose(img[..., :n], x[..., :n], rtol=1e-6)
  # Video: tokens of later frames are rotated in the t dims.
  coords = vit.token_coords((4, 2, 2))
  vid = vit.apply_rope(x, jnp.asarray(vit.rope_angles(coords, hd)))
  later = coords[:, 0] > 0
  assert not np.allclose(vid[:, later, :, :n], x[:, later, :, :n])
  # ... so a block's output changes if only the frame index changes.
  block = vit.Block(num_heads=2, mlp_dim=64)
  h = _rand((1, 8, 2 * hd), 3)
  ang_a = jnp.asarray(vit.rope_angles(vit.token_coords((2, 2, 2)), hd))
  c_b = vit.token_coords((2, 2, 2))
  c_b[:, 0] *= 3
  ang_b = jnp.asarray(vit.rope_angles(c_b, hd))
  params = block.init(jax.random.key(0), h, ang_a)
  assert not np.allclose(block.apply(params, h, ang_a), block.apply(params, h, ang_b))


def test_transformer_bf16_compute_keeps_f32_params():
  t = vit.Transformer(width=64, depth=2, num_heads=2, mlp_dim=128,
                      dtype=jnp.bfloat16, remat=True)
  x = _rand((2, 8, 64))
  coords = vit.token_coords((1, 2, 4))
  params = t.init(jax.random.key(0), x, coords)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  y = t.apply(params, x, coords)  # bf16 matmuls, float32 stream (autocast)
  assert y.dtype == jnp.float32 and y.shape == x.shape
  t16 = vit.Transformer(width=64, depth=2, num_heads=2, mlp_dim=128,
                        dtype=jnp.bfloat16, stream_dtype=jnp.bfloat16)
  assert t16.apply(params, x, coords).dtype == jnp.bfloat16  # all-bf16
  # remat changes memory, not the function.
  t32 = vit.Transformer(width=64, depth=2, num_heads=2, mlp_dim=128)
  t32r = vit.Transformer(width=64, depth=2, num_heads=2, mlp_dim=128, remat=True)
  np.testing.assert_allclose(t32.apply(params, x, coords),
                             t32r.apply(params, x, coords), rtol=1e-5, atol=1e-5)
