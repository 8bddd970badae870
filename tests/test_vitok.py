"""ViTok auto-encoder: shapes, sampling, KL, variants, input validation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.models import vitok

TINY = dict(enc_width=48, enc_depth=1, enc_heads=2, dec_width=48, dec_depth=1,
            dec_heads=2)


def tiny(variant="S-B/8", c=4, **kw):
  return vitok.create(variant, c, **{**TINY, **kw})


def _x(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)


def test_decode_variant_reads_paper_notation():
  assert vitok.decode_variant("S-B/16") == dict(
      enc_width=768, enc_depth=6, enc_heads=12, dec_width=768, dec_depth=12,
      dec_heads=12, tubelet=1, patch=16)
  v = vitok.decode_variant("B-L/4x8")
  assert (v["tubelet"], v["patch"], v["dec_width"], v["dec_depth"]) == (4, 8, 1152, 24)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (2, 1, 16, 16, 3)])
def test_image_round_trip_keeps_rank(shape):
  m = tiny()
  x = _x(shape)
  params = m.init(jax.random.key(0), x)
  y, aux = m.apply(params, x)
  assert y.shape == x.shape
  assert aux["z"].shape == aux["mean"].shape == (2, 4, 4)
  assert aux["kl"].shape == (2,)


def test_video_round_trip_and_encode_decode_methods():
  m = tiny("S-B/2x8")
  x = _x((2, 4, 16, 24, 3))
  params = m.init(jax.random.key(0), x)
  grid = m.token_grid(x.shape)
  assert grid == (2, 2, 3)
  enc = m.apply(params, x, method="encode")
  assert enc["z"].shape == (2, 12, 4)
  y = m.apply(params, enc["z"], grid, method="decode")
  assert y.shape == x.shape
  y2, _ = m.apply(params, x)
  np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-5)


class _DrawEps(nn.Module):
  """Draws N(0, 1) from the first key of the "sample" stream, as a root
  module's first `make_rng("sample")` does (public flax API only)."""
  shape: tuple

  @nn.compact
  def __call__(self):
    return jax.random.normal(self.make_rng("sample"), self.shape)


def test_z_sampled_in_training_equals_mean_in_eval():
  m = tiny(c=16)
  x = _x((8, 32, 32, 3))  # 8 x 16 tokens x 16 channels = 2048 draws
  params = m.init(jax.random.key(0), x)
  ev = m.apply(params, x, method="encode")
  np.testing.assert_array_equal(ev["z"], ev["mean"])
  tr1 = m.apply(params, x, train=True, method="encode", rngs={"sample": jax.random.key(1)})
  tr2 = m.apply(params, x, train=True, method="encode", rngs={"sample": jax.random.key(2)})
  np.testing.assert_allclose(tr1["mean"], ev["mean"], rtol=1e-6)
  assert not np.allclose(tr1["z"], tr2["z"])
  # The posterior's variances are far from 1, so a wrong std shows.
  lv = np.asarray(tr1["logvar"], np.float64)
  assert lv.min() < -2 and lv.max() > 2
  # Exactly the reparameterisation z = mean + exp(logvar / 2) * eps, with
  # eps the draw of the same key.
  eps = np.asarray(_DrawEps(tr1["mean"].shape).apply(
      {}, rngs={"sample": jax.random.key(1)}), np.float64)
  want = np.asarray(tr1["mean"], np.float64) + np.exp(0.5 * lv) * eps
  np.testing.assert_allclose(tr1["z"], want, rtol=1e-5, atol=1e-6)
  # And independently of the key: (z - mean) / std is N(0, 1) over 2048
  # draws (std within 3%, mean within 3 standard errors).
  e = (np.asarray(tr1["z"], np.float64) - np.asarray(tr1["mean"])) * np.exp(-0.5 * lv)
  assert abs(e.std() - 1.0) < 0.03 and abs(e.mean()) < 3 / np.sqrt(e.size)


def test_kl_matches_closed_form():
  m = tiny()
  x = _x((3, 16, 16, 3))
  params = m.init(jax.random.key(0), x)
  # Make the posterior far from N(0, 1) so the test is not trivial.
  params = jax.tree.map(lambda p: p * 3.0, params)
  aux = m.apply(params, x, method="encode")
  mu = np.asarray(aux["mean"], np.float64)
  lv = np.asarray(aux["logvar"], np.float64)
  expected = 0.5 * np.mean(mu**2 + np.exp(lv) - 1 - lv, axis=(1, 2))
  np.testing.assert_allclose(aux["kl"], expected, rtol=1e-5)
  assert np.all(expected > 0.01)


def test_logvar_is_clamped():
  m = tiny(logvar_range=(-1.0, 1.0))
  x = _x((2, 16, 16, 3))
  params = jax.tree.map(lambda p: p * 50.0, m.init(jax.random.key(0), x))
  aux = m.apply(params, x, method="encode")
  assert float(aux["logvar"].min()) >= -1.0 and float(aux["logvar"].max()) <= 1.0


def test_masked_variant_honours_eval_length():
  m = tiny(mask_lengths=(1, 2), eval_length=3)
  x = _x((2, 16, 16, 3))
  params = m.init(jax.random.key(0), x)
  aux = m.apply(params, x, method="encode")
  mt = params["params"]["mask_token"]
  np.testing.assert_array_equal(aux["z"][:, 3:], jnp.broadcast_to(mt, (2, 1, 4)))
  np.testing.assert_array_equal(aux["z"][:, :3], aux["mean"][:, :3])
  np.testing.assert_array_equal(aux["keep"], [[1, 1, 1, 0]] * 2)
  # Training draws l per example from mask_lengths: only 1 or 2 codes kept.
  tr = m.apply(params, x, train=True, method="encode", rngs={"sample": jax.random.key(3)})
  kept = np.asarray(tr["keep"]).sum(-1)
  assert set(kept.tolist()) <= {1, 2}
  # In the forward pass the tail codes are the mask token, whatever the
  # encoder said; the decoder does read the tail (so masking matters).
  y, aux = m.apply(params, x)
  grid = m.token_grid(x.shape)
  z_other = aux["z"].at[:, 3:].set(7.0)  # a different tail changes the output
  assert not np.allclose(m.apply(params, z_other, grid, method="decode")[:, 0], y)
  m4 = tiny(mask_lengths=(1, 2), eval_length=4)
  y4, _ = m4.apply(params, x)
  assert not np.allclose(y, y4)


def test_latent_variant_codes_and_shapes():
  m = tiny(num_latent_tokens=3)
  x = _x((2, 16, 24, 3))
  params = m.init(jax.random.key(0), x)
  y, aux = m.apply(params, x)
  assert y.shape == x.shape
  assert aux["z"].shape == (2, 3, 4)  # E = l_latent * c, independent of p
  # Latent tokens start from a 1D sincos embedding (appendix 8.3).
  lt = np.asarray(params["params"]["latent_tokens"])
  np.testing.assert_allclose(lt[0, :24], 0.0, atol=1e-7)  # sin(0)
  np.testing.assert_allclose(lt[0, 24:], 1.0, atol=1e-7)  # cos(0)


@pytest.mark.parametrize("variant,shape,match", [
    ("S-B/8", (1, 20, 16, 3), "height H=20 is not divisible"),
    ("S-B/8", (1, 16, 12, 3), "width W=12 is not divisible"),
    ("S-B/2x8", (1, 3, 16, 16, 3), "frame count T=3 is not divisible"),
    ("S-B/8", (1, 16, 16, 1), "3 \\(RGB\\) channels"),
    ("S-B/8", (16, 16, 3), "must be \\[B, H, W, 3\\]"),
])
def test_bad_input_shapes_raise(variant, shape, match):
  m = tiny(variant)
  with pytest.raises(ValueError, match=match):
    m.init(jax.random.key(0), jnp.zeros(shape))


def test_bad_variant_and_fields_raise():
  with pytest.raises(ValueError, match="Unknown ViTok variant 'S-X/16'"):
    vitok.create("S-X/16", 16)
  with pytest.raises(ValueError, match="Unknown ViTok variant"):
    vitok.create("S-B16", 16)
  with pytest.raises(ValueError, match="Unknown ViTok field.*'enc_widht'"):
    vitok.create("S-B/16", 16, enc_widht=3)
  m = tiny(enc_heads=5)
  with pytest.raises(ValueError, match="encoder width 48 is not divisible by its 5 heads"):
    m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_learned_posemb_rejects_other_resolution():
  m = tiny()
  params = m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="position embedding was created for 4 tokens"):
    m.apply(params, jnp.zeros((1, 32, 32, 3)))
  # Without it (RoPE only) other resolutions work.
  m2 = tiny(posemb="none")
  p2 = m2.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert m2.apply(p2, jnp.zeros((1, 32, 32, 3)))[0].shape == (1, 32, 32, 3)
