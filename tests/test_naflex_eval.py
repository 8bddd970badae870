"""Evaluation at native resolution (evaluators/native.py) and the bicubic
baseline at each image's own number of floats (evaluators/bicubic.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio
from skimage.metrics import structural_similarity

from vitok_jax import losses
from vitok_jax.data import input_pipeline
from vitok_jax.data import naflex
from vitok_jax.data import naflex_pipeline
from vitok_jax.data import preprocess as ops
from vitok_jax.evaluators import bicubic
from vitok_jax.evaluators import native

SHAPES = [(16, 24), (24, 12), (20, 20)]


def pairs(seed=0, shapes=SHAPES, noise=0.1):
  rng = np.random.default_rng(seed)
  orig = [rng.uniform(-1, 1, s + (3,)).astype(np.float32) for s in shapes]
  recon = [np.clip(x + rng.normal(0, noise, x.shape), -1, 1).astype(
      np.float32) for x in orig]
  return orig, recon


def reference(orig, recon):
  """skimage on the uint8 grid, image by image."""
  u8 = ops.to_uint8
  psnr = [peak_signal_noise_ratio(u8(a), u8(b), data_range=255)
          for a, b in zip(orig, recon)]
  ssim = [structural_similarity(u8(a), u8(b), data_range=255, channel_axis=-1,
                                gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
          for a, b in zip(orig, recon)]
  return np.asarray(psnr), np.asarray(ssim)


def test_per_image_psnr_ssim_match_skimage_at_each_size():
  orig, recon = pairs()
  psnr, ssim = native.psnr_ssim(orig, recon)
  ref_psnr, ref_ssim = reference(orig, recon)
  np.testing.assert_allclose(psnr, ref_psnr, rtol=1e-5)
  np.testing.assert_allclose(ssim, ref_ssim, atol=1e-4)
  avg = native.averages({"psnr": psnr, "ssim": ssim})
  assert avg["num_examples"] == 3
  np.testing.assert_allclose(avg["rpsnr"], ref_psnr.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="differ in size"):
    native.psnr_ssim(orig[:1], recon[1:2])


def test_score_rows_crops_each_image_and_skips_padding_rows():
  p, n = 4, 40
  orig, _ = pairs(1)
  seqs = [naflex.patchify_to_sequence(x, p, 1, n) for x in orig]
  seqs.append(tuple(np.zeros_like(a) for a in seqs[0]))  # a padding row
  target, coords, valid = (np.stack(a) for a in zip(*seqs))
  # A stand-in model: damped, with garbage in the padding.
  recon = np.where(valid[..., None], 0.9 * target + 0.05, 5.0)
  got = native.score_rows(target, recon, coords, valid, p, code_channels=4)
  natives = [0.9 * x + 0.05 for x in orig]
  ref_psnr, ref_ssim = reference(orig, natives)
  np.testing.assert_allclose(got["psnr"], ref_psnr, rtol=1e-5)
  np.testing.assert_allclose(got["ssim"], ref_ssim, atol=1e-4)
  want_floats = [h * w // p**2 * 4 for h, w in SHAPES]
  np.testing.assert_array_equal(got["code_floats"], want_floats)
  bic = bicubic.reconstruct_native(orig, want_floats)
  np.testing.assert_allclose(got["bicubic_psnr"], reference(orig, bic)[0],
                             rtol=1e-5)
  assert set(native.averages(got)) == {"num_examples", "rpsnr", "rssim",
                                       "bicubic_rpsnr", "bicubic_rssim"}


# --------------------------------------------------------------------------
# Bicubic at each image's own budget
# --------------------------------------------------------------------------
def test_bicubic_sizes_respect_the_budget_and_the_aspect():
  rng = np.random.default_rng(0)
  for _ in range(2000):
    h, w = (int(v) for v in rng.integers(1, 600, 2))
    floats = int(rng.integers(3, 20000))
    hs, ws = bicubic.size_for_floats(floats, h, w)
    assert hs >= 1 and ws >= 1 and 3 * hs * ws <= floats, (floats, h, w)
    s = math.sqrt(floats / (3 * h * w))
    if s * min(h, w) >= 1:  # each side is s x its own, rounded down
      assert hs <= s * h + 1e-9 < hs + 1 and ws <= s * w + 1e-9 < ws + 1


def test_bicubic_sizes_exact_cases():
  # Whole-number scales keep the aspect ratio exactly.
  assert bicubic.size_for_floats(3 * 12 * 16, 300, 400) == (12, 16)
  assert bicubic.size_for_floats(3 * 12 * 16 + 5, 300, 400) == (12, 16)
  assert bicubic.size_for_floats(4096, 224, 288) == (32, 41)
  for f in (100, 1024, 3 * 19 * 19, 4096):  # a square is side_for_floats
    s = bicubic.side_for_floats(f)
    assert bicubic.size_for_floats(f, 50, 50) == (s, s)
  assert bicubic.size_for_floats(30, 1, 1000) == (1, 10)  # one row of pixels
  with pytest.raises(ValueError, match="cannot hold"):
    bicubic.size_for_floats(2, 10, 10)


def test_bicubic_native_goes_through_that_size_at_each_budget():
  rng = np.random.default_rng(0)
  imgs = [rng.uniform(-1, 1, s + (3,)).astype(np.float32)
          for s in [(24, 32), (16, 16)]]
  floats = [3 * 6 * 8, 300]
  out = bicubic.reconstruct_native(imgs, floats)
  assert [o.shape for o in out] == [x.shape for x in imgs]
  # By hand: PIL float images down to 8 x 6 and back to 32 x 24.
  want = np.stack([np.asarray(Image.fromarray(imgs[0][..., c], "F").resize(
      (8, 6), Image.BICUBIC).resize((32, 24), Image.BICUBIC))
                   for c in range(3)], -1)
  np.testing.assert_allclose(out[0], want, atol=1e-6)
  # A square image is the square baseline.
  np.testing.assert_allclose(out[1], bicubic.reconstruct(imgs[1][None], 300)[0])
  # One budget for all images broadcasts.
  assert len(bicubic.reconstruct_native(imgs, 300)) == 2


# --------------------------------------------------------------------------
# rFID's view of native images
# --------------------------------------------------------------------------
def test_fid_view_resizes_the_short_side_and_crops_the_centre():
  rng = np.random.default_rng(0)
  wide = rng.uniform(-1, 1, (100, 200, 3)).astype(np.float32)
  got = native.fid_view(wide, 64)
  want = ops.resize(ops.to_uint8(wide), (64, 128))[:, 32:96]
  np.testing.assert_array_equal(got, want)
  tall = rng.uniform(-1, 1, (90, 30, 3)).astype(np.float32)
  want = ops.resize(ops.to_uint8(tall), (192, 64))[64:128]
  np.testing.assert_array_equal(native.fid_view(tall, 64), want)
  square = rng.uniform(-1, 1, (64, 64, 3)).astype(np.float32)
  np.testing.assert_array_equal(native.fid_view(square, 64),
                                ops.to_uint8(square))
  batch = native.fid_batch([wide, tall, square], 64)
  assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.float32
  assert 0 <= batch.min() and batch.max() <= 1
  assert native.fid_key() == "rfid_native_cc256"
  assert "256" in native.fid_protocol()


def test_pipeline_loss_and_scores_fit_together_with_a_stand_in_model(
    tmp_path):
  """Data -> a stand-in for encode_patches/decode_patches -> the training
  loss on the canvas and the native scores: the pieces meet on the
  contract."""
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate([(40, 24), (24, 56), (32, 32)]):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        tmp_path / f"{i}.png")
  c = input_pipeline.default_config(data=f"folder:{tmp_path}", batch_size=2,
                                    naflex=True, max_patches=24)
  p = 4
  model = lambda x: 0.8 * x  # decode_patches(encode_patches(x)["z"])
  side = naflex_pipeline.canvas_side(c, p)
  b = next(iter(naflex_pipeline.make_train_dataset(c, seed=0, patch=p)))

  @jax.jit
  def loss_fn(batch):
    recon = model(batch["patches"])
    return losses.autoencoder_patches(
        recon, batch["patches"], {"kl": jnp.zeros(2)}, batch["coords"],
        batch["valid"], canvas_hw=(side, side), patch=p, lpips_weight=1.0,
        lpips_fn=lambda x, y: jnp.mean(jnp.abs(x - y), axis=(1, 2, 3)))

  total, terms = loss_fn({k: b[k] for k in ("patches", "coords", "valid")})
  assert np.isfinite(total) and terms["rec_l2"] > 0
  scores = []
  for e in naflex_pipeline.make_eval_dataset(c, 2, patch=p):
    scores.append(native.score_rows(e["patches"], model(e["patches"]),
                                    e["coords"], e["valid"], p,
                                    code_channels=4))
  per_image = {k: np.concatenate([s[k] for s in scores]) for k in scores[0]}
  avg = native.averages(per_image)
  assert avg["num_examples"] == 3
  assert 0 < avg["rpsnr"] < 100 and 0 < avg["rssim"] < 1
