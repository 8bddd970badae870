"""The packed-sequence (NaFlex) path of ViTok: images of any grid, one per
sequence, padded at the end (models/patches.py's contract).

What is checked: padding never reaches a valid output (a padded batch
equals each image alone; garbage in the padding changes nothing); the
per-example RoPE angles against an independent loop and against the
static grid's; on a full square grid the sequence path computes what
__call__ does (tolerances below); the PyTorch export agrees on padded
batches; errors. (Splash with segment ids compiling for a TPU topology:
tests/test_aot_tpu.py, where one worker holds libtpu.)
"""
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.models import attention
from vitok_jax.models import patches as P
from vitok_jax.models import vit
from vitok_jax.models import vitok

C = 8  # code channels
# Two blocks each side, so that a leak into the padding in block 0 would
# come back through the keys of block 1.
TINY = dict(enc_depth=2, dec_depth=2, posemb="none")
# Square equivalence: the grid path embeds with a 3D convolution, the
# sequence path with the same kernel as a matmul, so XLA sums the q*p*p*3
# products in another order: the codes and reconstructions agree to this
# relative error (max |a - b| / max |a|), float32 (measured: about 1e-6 for
# the codes, 3e-6 for the reconstructions). The decoder's un-tubelet is the
# same einsum on both paths: decoding the same codes agrees to DECODE_RTOL
# (bit for bit on XLA:CPU today).
SQUARE_RTOL = 1e-5
DECODE_RTOL = 1e-6


def _model(variant="mu-mu/4", **kw):
  return vitok.create(variant, C, **{**TINY, **kw})


def _init(model, *args, method=None, seed=0):
  """model.init jitted (an eager init dispatches op by op, slower here)."""
  return jax.jit(functools.partial(model.init, method=method))(
      jax.random.key(seed), *args)["params"]


def _perturb(params, seed=1):
  """Every leaf perturbed (numpy: no compile) so nothing is trivially 0."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: np.asarray(l) + 0.05 * rng.normal(
      size=l.shape).astype(np.float32), params)


def _params(model, x, seed=0):
  return _perturb(_init(model, x, seed=seed), seed + 1)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(a).max()


def _pack(seqs, n, garbage=None):
  """[(patches [L, d], coords [L, 3])] -> a padded batch of length n; the
  padding holds `garbage` (a seed) or zeros."""
  d = seqs[0][0].shape[-1]
  rng = np.random.default_rng(garbage)
  patches = np.zeros((len(seqs), n, d), np.float32)
  coords = np.zeros((len(seqs), n, 3), np.int32)
  valid = np.zeros((len(seqs), n), bool)
  for i, (p, c) in enumerate(seqs):
    patches[i, :len(p)], coords[i, :len(p)], valid[i, :len(p)] = p, c, True
    if garbage is not None:
      patches[i, len(p):] = rng.normal(0, 100, (n - len(p), d))
      coords[i, len(p):] = rng.integers(0, n, (n - len(p), 3))
  return patches, coords, valid


def _images(grids, patch=4, seed=0):
  """One random image per (h, w) patch grid, as (patches, coords) alone."""
  rng = np.random.default_rng(seed)
  out = []
  for h, w in grids:
    x = rng.uniform(-1, 1, (1, h * patch, w * patch, 3)).astype(np.float32)
    p, c, _ = P.patchify(x, patch)
    out.append((p[0], c[0]))
  return out


def _runner(model, method="reconstruct_patches"):
  """model.apply(method) jitted once, params an argument (each new shape
  compiles once; the tiny models' compiles are most of the tests' time)."""
  return jax.jit(lambda params, *a: model.apply({"params": params}, *a,
                                                method=method))


def test_patchify_layout_and_round_trip():
  """The flattening is einops' "b (t q) (h p1) (w p2) c -> b (t h w)
  (q p1 p2 c)", written out here as loops; unpatchify inverts it."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 4, 8, 12, 3)).astype(np.float32)
  patches, coords, valid = P.patchify(x, 4, tubelet=2)
  assert patches.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3) and valid.all()
  i = 0
  for t in range(2):
    for y in range(2):
      for w in range(3):
        block = x[:, 2 * t:2 * t + 2, 4 * y:4 * y + 4, 4 * w:4 * w + 4]
        np.testing.assert_array_equal(patches[:, i], block.reshape(2, -1))
        np.testing.assert_array_equal(coords[:, i], [[t, y, w]] * 2)
        i += 1
  np.testing.assert_array_equal(P.unpatchify(patches, (2, 2, 3), 4, 2), x)
  img = x[:, 0]
  p2, c2, _ = P.patchify(img, 4)
  assert (c2[..., 0] == 0).all()
  np.testing.assert_array_equal(P.unpatchify(p2, (2, 3), 4), img)


def test_padded_batch_equals_each_image_alone():
  """Grids 2x3, 3x2 and 1x4 padded to N=8 give, per image, the codes, KL
  and reconstruction of that image run alone with no padding; the outputs
  are zero on padding and keep = valid."""
  model = _model()
  seqs = _images([(2, 3), (3, 2), (1, 4)])
  batch = _pack(seqs, 8)
  params = _params(model, np.zeros((1, 8, 8, 3), np.float32))
  run = _runner(model)
  out, aux = run(params, *batch)
  valid = batch[2]
  np.testing.assert_array_equal(aux["keep"], valid)
  for name in ("z", "mean", "logvar"):
    assert (np.asarray(aux[name])[~valid] == 0).all()
  assert (np.asarray(out)[~valid] == 0).all()
  for i, (p, c) in enumerate(seqs):
    alone_out, alone = run(params, p[None], c[None],
                           np.ones((1, len(p)), bool))
    n = len(p)
    np.testing.assert_allclose(aux["z"][i, :n], alone["z"][0], atol=1e-5)
    np.testing.assert_allclose(aux["kl"][i], alone["kl"][0], rtol=1e-5)
    np.testing.assert_allclose(out[i, :n], alone_out[0], atol=1e-5)
    # kl is the mean over the valid tokens of the closed form.
    m, lv = np.asarray(alone["mean"][0]), np.asarray(alone["logvar"][0])
    kl = 0.5 * np.mean(m**2 + np.exp(lv) - 1 - lv)
    np.testing.assert_allclose(aux["kl"][i], kl, rtol=1e-5)


def test_padding_contents_change_no_valid_output():
  """Huge random patches and random coords in the padding: every valid
  output is bit for bit the same (padding is zeroed on the way in and
  never attended to). And attend() alone: garbage q, k, v at padding
  positions leave the valid rows unchanged."""
  model = _model()
  seqs = _images([(2, 3), (1, 4)], seed=1)
  params = _params(model, np.zeros((1, 8, 8, 3), np.float32))
  run = _runner(model)
  clean = run(params, *_pack(seqs, 9))
  dirty = run(params, *_pack(seqs, 9, garbage=3))
  valid = _pack(seqs, 9)[2]
  np.testing.assert_array_equal(np.asarray(clean[0])[valid],
                                np.asarray(dirty[0])[valid])
  for name in ("z", "kl"):
    np.testing.assert_array_equal(clean[1][name], dirty[1][name])

  keys = jax.random.split(jax.random.key(0), 6)
  shape = (2, 16, 2, 8)
  q, k, v = (jax.random.normal(kk, shape) for kk in keys[:3])
  valid = np.arange(16)[None] < np.array([[11], [16]])
  m = valid[:, :, None, None]
  q2, k2, v2 = (jnp.where(m, a, 1e3 * jax.random.normal(kk, shape))
                for a, kk in zip((q, k, v), keys[3:]))
  a = attention.attend(q, k, v, None, valid=valid)
  b = attention.attend(q2, k2, v2, None, valid=valid)
  np.testing.assert_array_equal(np.asarray(a)[valid], np.asarray(b)[valid])
  # splash off TPU is XLA's masked attention; cuDNN's key lengths mean the
  # same mask (valid tokens first), checked here through XLA's lengths.
  np.testing.assert_array_equal(attention.attend(q, k, v, "splash",
                                                 valid=valid), a)
  np.testing.assert_allclose(jax.nn.dot_product_attention(
      q, k, v, key_value_seq_lengths=jnp.asarray([11, 16], jnp.int32))[valid],
                             np.asarray(a)[valid], atol=1e-6)
  # valid=None is today's call exactly.
  np.testing.assert_array_equal(attention.attend(q, k, v, None),
                                jax.nn.dot_product_attention(q, k, v))


def test_rope_angles_per_example_against_a_loop_and_the_static_grid():
  head_dim, base = 32, 10000.0
  n = vit.rope_dims_per_axis(head_dim)
  rng = np.random.default_rng(0)
  coords = rng.integers(0, 12, (3, 12, 3)).astype(np.int32)
  got = np.asarray(jax.jit(lambda c: vit.rope_angles(c, head_dim, base))(
      coords))
  want = np.zeros((3, 12, 3 * n // 2), np.float32)
  for b in range(3):
    for l in range(12):
      for axis in range(3):
        for i in range(n // 2):
          inv = 1.0 / base ** (2 * i / n)  # Python floats: float64
          want[b, l, axis * n // 2 + i] = np.float32(coords[b, l, axis] * inv)
  np.testing.assert_array_equal(got, want)
  # A full grid: exactly the static path's numbers, for every example.
  grid = (2, 3, 4)
  static = vit.rope_angles(vit.token_coords(grid), head_dim)
  per_ex = vit.rope_angles(np.stack([vit.token_coords(grid)] * 2), head_dim)
  np.testing.assert_array_equal(per_ex, np.stack([static] * 2))
  # apply_rope with per-example angles equals the shared ones.
  x = jax.random.normal(jax.random.key(0), (2, 24, 2, head_dim))
  np.testing.assert_array_equal(vit.apply_rope(x, per_ex),
                                vit.apply_rope(x, jnp.asarray(static)))
  # A coordinate outside [0, L) breaks the contract: NaN, not a wrong angle.
  bad = np.zeros((1, 4, 3), np.int32)
  bad[0, 1, 2] = 4
  assert np.isnan(np.asarray(vit.rope_angles(bad, head_dim))[0, 1]).any()


@pytest.mark.parametrize("variant,shape", [
    ("mu-mu/4", (2, 16, 12, 3)),       # an image, a 4x3 grid
    ("mu-mu/2x4", (2, 4, 8, 12, 3)),   # a video, tubelet q=2
])
def test_square_inputs_match_the_grid_path(variant, shape):
  """patchify -> reconstruct_patches -> unpatchify equals __call__ with the
  same params, and the init through either path makes the same params."""
  model = _model(variant, enc_depth=1, dec_depth=1)
  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  patches, coords, valid = P.patchify(x, model.patch, model.tubelet)
  init_grid = _init(model, x)
  jax.tree.map(np.testing.assert_array_equal, init_grid,
               _init(model, patches, coords, valid,
                     method="reconstruct_patches"))
  params = _perturb(init_grid)

  grid = model.token_grid(shape)
  recon, aux = _runner(model, "__call__")(params, x)
  out, aux_p = _runner(model)(params, patches, coords, valid)
  y = P.unpatchify(np.asarray(out), grid if len(shape) == 5 else grid[1:],
                   model.patch, model.tubelet)
  assert _rel(aux["z"], aux_p["z"]) < SQUARE_RTOL
  assert _rel(recon, y) < SQUARE_RTOL
  np.testing.assert_allclose(aux["kl"], aux_p["kl"], rtol=SQUARE_RTOL)
  # The decoder alone, on the same codes: the same function.
  dec_grid = jax.jit(lambda p, z: model.apply(
      {"params": p}, z, grid, method="decode"))(params, aux["z"])
  dec_seq = _runner(model, "decode_patches")(params, aux["z"], coords, valid)
  y = P.unpatchify(np.asarray(dec_seq), grid, model.patch, model.tubelet)
  assert _rel(dec_grid, y) < DECODE_RTOL


def test_no_gradient_reaches_padding_and_an_empty_sequence_is_zero():
  """With activation checkpointing (remat="block"): the gradient of a loss
  over the outputs is zero on padding patches, finite everywhere; a
  sequence of padding only gives zero outputs and zero KL, no NaN."""
  model = _model(remat="block", enc_depth=1, dec_depth=1)
  params = _params(model, np.zeros((1, 8, 8, 3), np.float32))
  p, c, v = _pack(_images([(2, 2)]) * 2, 6, garbage=1)
  v[1] = False  # the second sequence is all padding

  def loss(x, params):
    out, aux = model.apply({"params": params}, x, c, v,
                           method="reconstruct_patches")
    return jnp.sum(out**2) + jnp.sum(aux["kl"]), (out, aux)

  (gx, gp), (out, aux) = jax.jit(jax.grad(loss, argnums=(0, 1),
                                          has_aux=True))(p, params)
  assert (np.asarray(gx)[~v] == 0).all() and np.abs(gx[0, :4]).max() > 0
  assert all(np.isfinite(l).all() for l in jax.tree.leaves(gp))
  assert (np.asarray(out[1]) == 0).all() and aux["kl"][1] == 0
  assert np.isfinite(out).all() and aux["kl"][0] > 0


def test_training_samples_z_only_on_valid_tokens():
  model = _model(enc_depth=1)
  batch = _pack(_images([(2, 2)]), 6)
  params = _params(model, np.zeros((1, 8, 8, 3), np.float32))
  aux = jax.jit(lambda p, *a: model.apply(
      {"params": p}, *a, train=True, method="encode_patches",
      rngs={"sample": jax.random.key(3)}))(params, *batch)
  z, mean, valid = map(np.asarray, (aux["z"], aux["mean"], batch[2]))
  assert (z[~valid] == 0).all() and not np.allclose(z[valid], mean[valid])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed")
def test_pytorch_export_matches_on_padded_batches():
  """The torch module's encode_patches/decode_patches, masked through
  scaled_dot_product_attention's attn_mask, on the same padded batch."""
  import torch  # pylint: disable=g-import-not-at-top
  from vitok_jax import export  # pylint: disable=g-import-not-at-top
  from vitok_jax.torch import vitok as tv  # pylint: disable=g-import-not-at-top
  model = _model("mu-mu/2x4", enc_depth=1, dec_depth=1)
  rng = np.random.default_rng(0)
  seqs = []
  for t, h, w in ((1, 2, 3), (2, 1, 2)):
    x = rng.uniform(-1, 1, (1, 2 * t, 4 * h, 4 * w, 3)).astype(np.float32)
    p, c, _ = P.patchify(x, 4, 2)
    seqs.append((p[0], c[0]))
  patches, coords, valid = _pack(seqs, 8, garbage=0)
  params = _params(model, np.zeros((1, 2, 8, 8, 3), np.float32))
  out, aux = _runner(model)(params, patches, coords, valid)
  tm = tv.ViTok(**export.model_config(model, params))
  tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                      export.convert.flax_to_torch(params).items()})
  args = [torch.from_numpy(a) for a in (patches, coords, valid)]
  with torch.no_grad():
    t_aux = tm.encode_patches(*args)
    t_out = tm.decode_patches(t_aux["z"], *args[1:]).numpy()
  assert _rel(aux["z"], t_aux["z"].numpy()) < 1e-5
  assert _rel(aux["logvar"], t_aux["logvar"].numpy()) < 1e-5
  assert _rel(out, t_out) < 1e-5
  assert (t_out[~valid] == 0).all()
  with pytest.raises(ValueError, match=r"expected patches \[B, N, 96\]"):
    tm.encode_patches(args[0][..., :90], *args[1:])
  with pytest.raises(ValueError, match="needs posemb='none'"):
    tv.ViTok(C, 64, 1, 2, 64, 1, 2, 4, posemb="learn", posemb_length=4
             ).encode_patches(*args)


def test_errors_name_the_problem():
  model = _model(enc_depth=1, dec_depth=1)
  params = _params(model, np.zeros((1, 8, 8, 3), np.float32))
  apply = lambda m, *a, method="encode_patches": m.apply(
      {"params": params}, *a, method=method)
  p, c, v = _pack(_images([(2, 2)]), 4)
  with pytest.raises(ValueError, match=r"patches must be \[B, N, 48\]"):
    apply(model, p[..., :40], c, v)
  with pytest.raises(ValueError, match=r"coords must be \[B, N, 3\]"):
    apply(model, p, c[:, :3], v)
  with pytest.raises(ValueError, match="coords must be integers"):
    apply(model, p, c.astype(np.float32), v)
  with pytest.raises(ValueError, match=r"valid must be \[B, N\]"):
    apply(model, p, c, v[:, :2])
  with pytest.raises(ValueError, match="valid must be bool"):
    apply(model, p, c, v.astype(np.int32))
  with pytest.raises(ValueError, match=r"z must be \[B, N, 8\]"):
    apply(model, np.zeros((1, 4, 5), np.float32), c, v,
          method="decode_patches")
  for kw, match in ((dict(posemb="learn"), "posemb='learn'.*posemb='none'"),
                    (dict(num_latent_tokens=4), "Latent ViTok"),
                    (dict(mask_lengths=(2,)), "Masked ViTok")):
    with pytest.raises(ValueError, match=match):
      _model(**kw).init(jax.random.key(0), p, c, v,
                        method="reconstruct_patches")
  with pytest.raises(ValueError, match="not divisible by 4"):
    P.patchify(np.zeros((1, 6, 8, 3)), 4)
  with pytest.raises(ValueError, match="do not hold the grid"):
    P.unpatchify(p, (3, 2), 4)
