"""Reconstruction metrics with an explicit protocol.

* rPSNR / rSSIM: per image on [0, 255] after rounding to uint8, then averaged
  over images (never a PSNR of the batch-mean MSE). SSIM: Gaussian window 11,
  sigma 1.5, K1 0.01, K2 0.03, data range 255, over the valid region (no
  padding), channels averaged -- skimage's `structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255, channel_axis=-1)`.
* rFID: Frechet distance between Gaussians fitted to Inception pool features;
  statistics are accumulated as running sums (float64, on the host), never by
  keeping all features; on N processes each adds its own examples and the
  sums are added across processes at the end (parallel/multihost.py).
* rIS: exp(E KL(p(y|x) || p(y))) over 10 contiguous splits, also accumulated
  as per-split sums.
"""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from vitok_jax.io import fileio
from vitok_jax.parallel import multihost


def quantize(x):
  """[-1, 1] float -> float32 values on the uint8 grid [0, 255]."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255)


def psnr(a, b, data_range: float = 255.0):
  """Per-image PSNR [N] of images on [0, 255] (any leading batch shape)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  mse = jnp.mean((a - b)**2, axis=tuple(range(1, a.ndim)))
  return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-x**2 / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _filter_valid(x, g):
  """Separable Gaussian filter, valid region: [N, H, W, C] -> smaller."""
  c = x.shape[-1]
  kh = jnp.tile(jnp.asarray(g)[:, None, None, None], (1, 1, 1, c))
  kw = jnp.tile(jnp.asarray(g)[None, :, None, None], (1, 1, 1, c))
  dn = ("NHWC", "HWIO", "NHWC")
  hp = jax.lax.Precision.HIGHEST
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                   feature_group_count=c, precision=hp)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID",
                                      dimension_numbers=dn,
                                      feature_group_count=c, precision=hp)


def ssim(a, b, data_range: float = 255.0, win: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03):
  """Per-image SSIM [N] of [N, H, W, C] images on [0, data_range]."""
  if a.shape[1] < win or a.shape[2] < win:
    raise ValueError(f"SSIM needs images of at least {win}x{win}, got "
                     f"{a.shape[1:3]}")
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  g = _gaussian_window(win, sigma)
  mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
  saa = _filter_valid(a * a, g) - mu_a**2
  sbb = _filter_valid(b * b, g) - mu_b**2
  sab = _filter_valid(a * b, g) - mu_a * mu_b
  c1, c2 = (k1 * data_range)**2, (k2 * data_range)**2
  s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / (
      (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
  return jnp.mean(s, axis=(1, 2, 3))


# --------------------------------------------------------------------------
# FID / IS from streamed statistics
# --------------------------------------------------------------------------
class GaussianStats:
  """Running mean/covariance of feature vectors (float64 sums)."""

  def __init__(self, dim: int = 2048):
    self.n = 0
    self.s1 = np.zeros(dim, np.float64)
    self.s2 = np.zeros((dim, dim), np.float64)

  def update(self, feats: np.ndarray) -> None:
    f = np.asarray(feats, np.float64)
    self.n += f.shape[0]
    self.s1 += f.sum(0)
    self.s2 += f.T @ f

  def sum_over_processes(self) -> "GaussianStats":
    """Adds every process's sums (each process fed its own examples)."""
    self.n, self.s1, self.s2 = multihost.sum_over_processes(
        (self.n, self.s1, self.s2))
    self.n = int(round(float(self.n)))
    return self

  def mean_cov(self):
    if self.n < 2:
      raise ValueError(f"FID needs at least 2 examples, got {self.n}")
    mu = self.s1 / self.n
    cov = (self.s2 - self.n * np.outer(mu, mu)) / (self.n - 1)
    return mu, cov

  def save(self, path: str) -> None:
    """Atomically (a partly written file is never found as a cache)."""
    mu, cov = self.mean_cov()
    fileio.save_npz(path, mu=mu, sigma=cov, n=self.n)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), pytorch-fid's formula.

  Tr sqrt(S1 S2) is computed as the sum of the singular values of
  sqrt(S1) sqrt(S2) (symmetric roots from eigh), not as the trace of
  scipy's sqrtm of the product (pytorch-fid): the same value for
  well-conditioned statistics, but accurate for the singular covariances of
  fewer examples than features (sqrtm gives -1e-3 for the FID of identical
  2048-dim statistics of rank < 2048). With S = V W V', sqrt(S1) sqrt(S2)
  is V1 [W1^1/2 (V1' V2) W2^1/2] V2', and the orthogonal factors leave the
  singular values as they are, so only the bracket is formed. Its rows and
  columns of a zero W^1/2 (eigenvalues clamped at 0) are zero and add no
  singular value, so they are left out: for the statistics of n examples
  of d > n features, whose null-space eigenvalues round to negative about
  half the time, an SVD of about (d + n) / 2 rows and columns instead of d.
  `eps` is kept for compatibility.
  """
  del eps
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
    raise ValueError("Frechet distance: the covariances are not finite (NaN "
                     "or Inf features?)")
  diff = mu1 - mu2
  halves = []  # (V, W^1/2) of each covariance
  for s in (sigma1, sigma2):
    w, v = np.linalg.eigh((s + s.T) / 2)
    # A real PSD product has a real root; a negative eigenvalue beyond
    # round-off makes sqrt(sigma1 sigma2) complex: the statistics are broken
    # (too few samples, NaNs): refuse, as pytorch-fid does.
    if w.min() < -1e-6 * max(np.abs(w).max(), 1.0):
      raise ValueError(
          f"Frechet distance: sqrt(sigma1 sigma2) has an imaginary component "
          f"(a covariance has the eigenvalue {w.min():.3g}); the feature "
          "statistics are not valid covariances (too few examples for the "
          "feature size?)")
    r = np.sqrt(np.maximum(w, 0.0))
    halves.append((v[:, r > 0], r[r > 0]))
  (v1, r1), (v2, r2) = halves
  tr_covmean = (np.linalg.svd(r1[:, None] * (v1.T @ v2) * r2[None, :],
                              compute_uv=False).sum()
                if len(r1) and len(r2) else 0.0)
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) -
               2 * tr_covmean)


class InceptionScore:
  """IS over `splits` contiguous chunks of a stream of known length n (as
  np.array_split places them: torch-fidelity's and pytorch-fid's 10), or,
  with `split_size`, over chunks of that many (ADM's evaluator: 5,000, the
  last chunk shorter; 10k samples give 2 splits, 50k give 10).

  Each example belongs to the split of its index in the stream: by default
  the order of `update` calls; on N processes, pass each example's global
  index (`index=`) so that the splits, and the score, do not depend on how
  many processes computed them, then call `sum_over_processes`.
  """

  def __init__(self, n: int, splits: int = 10, classes: int = 1008,
               split_size: int = 0):
    self.n = int(n)
    if split_size:
      self.bounds = np.append(np.arange(0, self.n, int(split_size)), self.n)
      self.splits = len(self.bounds) - 1
    else:  # chunk boundaries as np.array_split places them
      self.splits = int(splits)
      self.bounds = np.cumsum([0] + [len(c) for c in np.array_split(
          np.arange(self.n), self.splits)])
    self.p_sum = np.zeros((self.splits, classes), np.float64)
    self.plogp = np.zeros(self.splits, np.float64)
    self.count = np.zeros(self.splits, np.int64)
    self.seen = 0

  def update(self, logits: np.ndarray, index=None) -> None:
    logits = np.asarray(logits, np.float64)
    if not len(logits):
      return
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    p = np.exp(logp)
    idx = (np.arange(self.seen, self.seen + len(p)) if index is None
           else np.asarray(index))
    if idx.max() >= self.n or idx.min() < 0:
      raise ValueError(f"InceptionScore got example index {idx.max()}: more "
                       f"than the {self.n} examples it was set up for")
    split = np.searchsorted(self.bounds, idx, side="right") - 1
    for s in np.unique(split):
      m = split == s
      self.p_sum[s] += p[m].sum(0)
      self.plogp[s] += np.sum(p[m] * logp[m])
      self.count[s] += m.sum()
    self.seen += len(p)

  def sum_over_processes(self) -> "InceptionScore":
    """Adds every process's per-split sums."""
    self.p_sum, self.plogp, count = multihost.sum_over_processes(
        (self.p_sum, self.plogp, self.count))
    self.count = np.round(count).astype(np.int64)
    return self

  def result(self):
    """(mean, std) of exp(mean KL) over the splits."""
    scores = []
    for s in range(self.splits):
      if not self.count[s]:
        continue
      py = self.p_sum[s] / self.count[s]
      kl = (self.plogp[s] - np.sum(self.p_sum[s] * np.log(py + 1e-30))) / (
          self.count[s])
      scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def format_distance(x: float) -> str:
  """A Frechet distance for a summary line: two decimals, or three
  significant digits below 1 (a random network's distances are tiny, and
  "0.00" would hide whether two runs differ)."""
  return f"{x:.3g}" if 0 < abs(x) < 1 else f"{x:.2f}"
