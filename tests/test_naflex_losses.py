"""The NaFlex loss terms (losses.py): over the image's pixels only."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax import losses
from vitok_jax.data import naflex
from vitok_jax.models import lpips

P, N = 4, 12
SHAPES = [(8, 12), (12, 4), (4, 4)]  # pixel sizes: 6, 3 and 1 patches


def rows(seed=0, shapes=SHAPES, p=P, n=N):
  """(recon, target, coords, valid) of images of `shapes`."""
  rng = np.random.default_rng(seed)
  seqs, imgs = [], []
  for h, w in shapes:
    x = rng.uniform(-1, 1, (h, w, 3)).astype(np.float32)
    imgs.append(x)
    seqs.append(naflex.patchify_to_sequence(x, p, 1, n))
  target, coords, valid = (np.stack(a) for a in zip(*seqs))
  recon = np.where(valid[..., None],
                   target + rng.normal(0, 0.3, target.shape), 0.0)
  return recon.astype(np.float32), target, coords, valid


def scramble_padding(recon, target, valid, seed=1):
  """Garbage in every padding patch (coords of padding stay zero)."""
  rng = np.random.default_rng(seed)
  r, t = recon.copy(), target.copy()
  r[~valid] = rng.normal(0, 50, r[~valid].shape)
  t[~valid] = rng.normal(0, 50, t[~valid].shape)
  return r, t


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_masked_reconstruction_is_the_mean_over_valid_values(kind):
  recon, target, _, valid = rows()
  diff = (recon - target)[valid]  # [valid patches, D]
  want = np.mean(diff**2 if kind == "l2" else np.abs(diff))
  loss, aux = losses.masked_reconstruction(recon, target, valid, kind)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert aux == {f"rec_{kind}": loss}


def test_padding_contents_change_neither_loss_nor_gradient():
  recon, target, coords, valid = rows()
  r2, t2 = scramble_padding(recon, target, valid)
  r2[0, -1, 0] = np.nan  # even a NaN in padding stays out

  def f(r, t):
    return losses.masked_reconstruction(r, t, valid)[0]

  np.testing.assert_allclose(f(r2, t2), f(recon, target), rtol=1e-6)
  g1, g2 = jax.grad(f)(recon, target), jax.grad(f)(r2, t2)
  np.testing.assert_allclose(g2, g1, rtol=1e-6)
  assert not np.asarray(g2)[~valid].any()
  a = losses.canvas_pair(recon, target, coords, valid, (12, 12), P)
  b = losses.canvas_pair(r2, t2, coords, valid, (12, 12), P)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_all_valid_rows_are_the_square_loss():
  recon, target, coords, valid = rows(shapes=[(8, 8)] * 2)
  valid = valid & (np.arange(N) < 4)  # 4 patches = the whole 8 x 8 image
  canvas = lambda s: naflex.unpack(s, coords, valid, (8, 8), P)[0]
  for kind in ("l1", "l2"):
    got = losses.masked_reconstruction(recon, target, valid, kind)[0]
    want = losses.reconstruction(canvas(recon), canvas(target), kind)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_canvas_pair_takes_the_target_outside_each_image():
  recon, target, coords, valid = rows()
  r_img, t_img, mask = losses.canvas_pair(recon, target, coords, valid,
                                          (12, 12), P)
  outside = ~np.asarray(mask)
  np.testing.assert_array_equal(np.asarray(r_img)[outside],
                                np.asarray(t_img)[outside])
  for i, (h, w) in enumerate(SHAPES):
    np.testing.assert_array_equal(
        r_img[i, :h, :w], naflex.crop_native(recon, coords, valid, P)[i])


def test_masked_lpips_averages_over_the_image_area():
  # A distance that is a plain spatial mean, as each LPIPS layer is: the
  # masked version must then be the mean over the image's pixels alone.
  recon, target, coords, valid = rows()
  dist = lambda x, y: jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))
  loss, _ = losses.masked_lpips(
      *losses.canvas_pair(recon, target, coords, valid, (12, 12), P), dist)
  natives = [naflex.crop_native(s, coords, valid, P) for s in (recon, target)]
  want = np.mean([np.mean(np.abs(r - t)) for r, t in zip(*natives)])
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_masked_lpips_with_the_network():
  params = lpips.init_random(res=32)
  dist = lambda x, y: lpips.make_distance_fn()(params, x, y)
  recon, target, coords, valid = rows(shapes=[(32, 32), (16, 32)], p=8, n=20)
  r2, t2 = scramble_padding(recon, target, valid)
  pair = lambda r, t: losses.canvas_pair(r, t, coords, valid, (32, 32), 8)
  a = losses.masked_lpips(*pair(recon, target), dist)[0]
  b = losses.masked_lpips(*pair(r2, t2), dist)[0]
  np.testing.assert_allclose(a, b, rtol=1e-5)  # padding changes nothing
  # The image filling its canvas: plain LPIPS.
  r_img, t_img, _ = pair(recon, target)
  full = losses.masked_lpips(r_img[:1], t_img[:1], jnp.ones((1, 32, 32), bool),
                             dist)[0]
  np.testing.assert_allclose(full, dist(r_img[:1], t_img[:1])[0], rtol=1e-6)


def test_autoencoder_patches_adds_the_weighted_terms():
  recon, target, coords, valid = rows()
  aux = {"kl": jnp.array([1.0, 2.0, 3.0])}
  dist = lambda x, y: jnp.mean((x - y)**2, axis=(1, 2, 3))
  total, terms = losses.autoencoder_patches(
      recon, target, aux, coords, valid, canvas_hw=(12, 12), patch=P,
      kl_weight=0.1, lpips_weight=0.5, lpips_fn=dist, gen_adv_loss=2.0,
      gan_weight=0.25)
  want = terms["rec_l2"] + 0.1 * 2.0 + 0.5 * terms["lpips"] + 0.25 * 2.0
  np.testing.assert_allclose(total, want, rtol=1e-6)
  assert terms["loss"] == total and terms["kl"] == 2.0
