"""Metric protocol: PSNR/SSIM per image, FID and IS against references."""
import numpy as np
import pytest
import scipy.linalg
from skimage.metrics import structural_similarity

from tests import helpers
from vitok_jax.evaluators import metrics


def _images(n=3, h=32, w=40, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, (n, h, w, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).round().astype(np.float32)
  return a, b


def test_psnr_closed_form_per_image():
  a, b = _images()
  got = np.asarray(metrics.psnr(a, b))
  mse = ((a.astype(np.float64) - b) ** 2).reshape(3, -1).mean(1)
  np.testing.assert_allclose(got, 10 * np.log10(255**2 / mse), rtol=1e-5)
  # The average of per-image PSNRs, not the PSNR of the average MSE.
  assert not np.isclose(got.mean(), 10 * np.log10(255**2 / mse.mean()))


def test_ssim_matches_skimage():
  a, b = _images()
  got = np.asarray(metrics.ssim(a, b))
  ref = [structural_similarity(a[i], b[i], data_range=255, channel_axis=-1,
                               gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, win_size=11)
         for i in range(3)]
  np.testing.assert_allclose(got, ref, atol=1e-4)
  np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)


def test_quantize_rounds_to_uint8_grid():
  x = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2])
  np.testing.assert_array_equal(metrics.quantize(x), [0, 0, 128, 191, 255, 255])


def _fid_reference(f1, f2):
  f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)


def test_fid_from_streamed_stats_matches_float64_reference():
  rng = np.random.default_rng(0)
  f1 = rng.normal(0, 1, (300, 16)).astype(np.float32)
  f2 = (rng.normal(0.3, 1.2, (300, 16)) + 0.1 * f1).astype(np.float32)
  s1, s2 = metrics.GaussianStats(16), metrics.GaussianStats(16)
  for chunk in np.array_split(np.arange(300), 7):  # streamed in batches
    s1.update(f1[chunk])
    s2.update(f2[chunk])
  got = metrics.frechet_distance(*s1.mean_cov(), *s2.mean_cov())
  np.testing.assert_allclose(got, _fid_reference(f1, f2), rtol=1e-6)
  assert abs(metrics.frechet_distance(*s1.mean_cov(), *s1.mean_cov())) < 1e-6


def test_inception_score_matches_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (103, 20))
  n, splits = len(logits), 10
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  ref = []
  for part in np.array_split(p, splits):
    py = part.mean(0, keepdims=True)
    ref.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  score = metrics.InceptionScore(n, splits, classes=20)
  for chunk in np.array_split(np.arange(n), 6):
    score.update(logits[chunk])
  mean, std = score.result()
  np.testing.assert_allclose([mean, std], [np.mean(ref), np.std(ref)], rtol=1e-8)
  with pytest.raises(ValueError, match="more than the 103"):
    score.update(logits[:1])


def test_frechet_distance_refuses_a_significant_imaginary_root():
  # sigma1 is no covariance (a negative eigenvalue): sqrt(sigma1 sigma2) is
  # complex with an imaginary diagonal of 1 -- pytorch-fid raises, so do we.
  mu = np.zeros(2)
  with pytest.raises(ValueError, match="imaginary component"):
    metrics.frechet_distance(mu, np.diag([1.0, -1.0]), mu, np.eye(2))
  # A nearly singular covariance (round-off makes sqrtm's root complex):
  # identical statistics are still at distance 0.
  for s in ([[1.0, 0.999999], [0.999999, 1.0]], [[1.0, 1 - 1e-12], [1 - 1e-12, 1.0]]):
    assert abs(metrics.frechet_distance(mu, np.array(s), mu, np.array(s))) < 1e-6


def test_fid_closed_forms_for_rank_deficient_pool_statistics():
  # 200 examples of 512 ReLU features (rank 199 < 512), as Inception pool
  # features of a small evaluation set: the covariance is singular, where
  # sqrtm of the product is least accurate (-1e-3 for identical 2048-dim
  # statistics). Closed forms for S2 = S1 and S2 = a^2 S1:
  # FID = |mu1 - mu2|^2 + (1 - a)^2 Tr S1.
  rng = np.random.default_rng(0)
  f = np.maximum(rng.normal(size=(200, 512)) @ rng.normal(size=(512, 512)) * 0.05, 0)
  stats = metrics.GaussianStats(512)
  stats.update(f)
  mu, s = stats.mean_cov()
  assert np.linalg.matrix_rank(s) < 512
  assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-6
  shift = rng.normal(size=512) * 0.1
  np.testing.assert_allclose(metrics.frechet_distance(mu, s, mu + shift, s),
                             shift @ shift, rtol=1e-6)
  np.testing.assert_allclose(metrics.frechet_distance(mu, s, mu, 2.25 * s),
                             0.25 * np.trace(s), rtol=1e-6)


def test_fid_of_few_examples_is_the_exact_closed_form():
  # 10 and 17 examples of 64 features: both covariances singular (ranks 9
  # and 16), their null spaces in different directions; frechet_distance
  # leaves out the zero rows and columns of its SVD. Against the exact
  # n1 x n2 closed form of tests/helpers.frechet_np (which differs by the
  # round-off of eigh in the null spaces: 5e-9 here).
  rng = np.random.default_rng(1)
  mix = rng.normal(size=(64, 64))
  f1 = np.maximum(rng.normal(size=(10, 64)) @ mix, 0)
  f2 = np.maximum(rng.normal(0.2, 1.3, size=(17, 64)) @ mix, 0)
  s1, s2 = metrics.GaussianStats(64), metrics.GaussianStats(64)
  s1.update(f1)
  s2.update(f2)
  got = metrics.frechet_distance(*s1.mean_cov(), *s2.mean_cov())
  np.testing.assert_allclose(got, helpers.frechet_np(f1, f2), rtol=1e-7)
  np.testing.assert_allclose(
      metrics.frechet_distance(*s2.mean_cov(), *s1.mean_cov()), got,
      rtol=1e-10)


def test_bicubic_baseline_spends_the_same_floats():
  from vitok_jax.evaluators import bicubic
  assert bicubic.side_for_floats(64 * 16) == 18  # 3 * 18^2 = 972 <= 1024
  assert bicubic.side_for_floats(3 * 19 * 19) == 19
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  # Enough floats for every pixel: the round trip is the identity.
  np.testing.assert_allclose(bicubic.reconstruct(x, 32 * 32 * 3), x, atol=1e-5)
  # Fewer floats lose detail, more so the fewer there are.
  err = [np.mean((bicubic.reconstruct(x, f) - x) ** 2) for f in (768, 192)]
  assert 0 < err[0] < err[1]
  smooth = np.broadcast_to(np.linspace(-1, 1, 32)[None, :, None, None],
                           (1, 32, 32, 3)).transpose(0, 2, 1, 3)
  assert np.abs(bicubic.reconstruct(smooth, 192) - smooth)[:, 4:-4, 4:-4].max() < 0.05
  with pytest.raises(ValueError, match="cannot hold"):
    bicubic.reconstruct(x, 2)


def test_summary_distances_keep_three_digits_below_one():
  # A random network's tiny distances must not all print as "0.00".
  assert [metrics.format_distance(x) for x in (0.00024044, 0.5, 1.0, 12.345,
                                               0.0)] == [
      "0.00024", "0.5", "1.00", "12.35", "0.00"]
