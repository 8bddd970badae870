"""Reconstruction metrics at native resolution (NaFlex rows, data/naflex.py).

Each image is scored at its own size -- the NaFlex size it was encoded at, its
own aspect ratio -- never resized to a common square first:

  * rPSNR / rSSIM: per image on the uint8 grid (metrics.py's protocol: PSNR of
    the image's own MSE, SSIM with an 11-pixel Gaussian window over the
    image's valid region), then averaged over images;
  * the bicubic baseline at the same number of floats *per image*: an image
    whose code holds n_valid x c floats goes bicubically through the largest
    image of its aspect ratio holding at most that many
    (bicubic.size_for_floats) and back;
  * rFID cannot take differently shaped images, so both originals and
    reconstructions are brought to one shape the same way: shorter side
    resized to FID_SIDE = 256 (bicubic, antialiased, on the uint8 grid) and
    the central 256 x 256 kept, as the square evaluation's originals are
    (input.res = 256); Inception then resizes to 299 itself (the pytorch-fid
    input). Results carry the protocol in their name, `fid_key()` ->
    "rfid_native_cc256", so that they are never read as the square rFID.
"""
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from vitok_jax.data import naflex
from vitok_jax.data import preprocess as ops
from vitok_jax.evaluators import bicubic
from vitok_jax.evaluators import metrics

FID_SIDE = 256


def fid_key(side: int = FID_SIDE) -> str:
  """The result name of rFID under this module's protocol."""
  return f"rfid_native_cc{side}"


def fid_protocol(side: int = FID_SIDE) -> str:
  """The protocol in words, for summaries and docs."""
  return (f"native-size images, shorter side resized to {side} (bicubic, "
          f"antialiased, uint8) + centre crop {side}x{side}, then Inception's "
          "299 bilinear resize (pytorch-fid input)")


def fid_view(img, side: int = FID_SIDE) -> np.ndarray:
  """An image [h, w, 3] in [-1, 1] -> uint8 [side, side, 3] as rFID sees it
  (quantized first, as every metric here is)."""
  return ops.center_crop(ops.to_uint8(img), side)


def fid_batch(images: Sequence[np.ndarray], side: int = FID_SIDE
              ) -> np.ndarray:
  """Images of any sizes -> float32 [n, side, side, 3] in [0, 1]: the input
  inception.FIDInceptionV3 takes (the reconstruction evaluator's)."""
  return np.stack([fid_view(x, side) for x in images]).astype(
      np.float32) / 255.0


def psnr_ssim(originals: Sequence[np.ndarray],
              reconstructions: Sequence[np.ndarray]):
  """Per-image (psnr [n], ssim [n]) of two lists of images [h_i, w_i, 3] in
  [-1, 1], each pair at its own size (a clip [T, h, w, 3] gives one value
  per frame)."""
  psnr, ssim = [], []
  for a, b in zip(originals, reconstructions, strict=True):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
      raise ValueError(f"original {a.shape} and reconstruction {b.shape} "
                       "differ in size")
    qa = metrics.quantize(jnp.asarray(a).reshape((-1,) + a.shape[-3:]))
    qb = metrics.quantize(jnp.asarray(b).reshape((-1,) + b.shape[-3:]))
    psnr.extend(np.asarray(metrics.psnr(qa, qb), np.float64))
    ssim.extend(np.asarray(metrics.ssim(qa, qb), np.float64))
  return np.asarray(psnr), np.asarray(ssim)


def code_floats(valid, code_channels: int) -> np.ndarray:
  """Floats each row's code holds: its valid tokens x c ([B] int)."""
  return np.sum(np.asarray(valid), axis=-1).astype(np.int64) * code_channels


def score_rows(target, recon, coords, valid, patch: int,
               code_channels: Optional[int] = None) -> dict:
  """Per-image scores of one batch of NaFlex rows (images): the rows the
  data gave (`target` patches) and the model's reconstruction of them, both
  cropped to each image's own size. Rows without valid patches (batch
  padding) are left out. With `code_channels`, also the bicubic baseline at
  each image's own code size.

  Returns {"psnr": [n], "ssim": [n]} (+ "bicubic_psnr", "bicubic_ssim",
  "code_floats"), numpy."""
  originals = naflex.crop_native(target, coords, valid, patch)
  recons = naflex.crop_native(recon, coords, valid, patch)
  out = dict(zip(("psnr", "ssim"), psnr_ssim(originals, recons)))
  if code_channels:
    rows = np.asarray(valid).any(-1)
    floats = code_floats(np.asarray(valid)[rows], code_channels)
    bic = bicubic.reconstruct_native(originals, floats)
    out.update(zip(("bicubic_psnr", "bicubic_ssim"), psnr_ssim(originals, bic)))
    out["code_floats"] = floats
  return out


def averages(per_image: dict) -> dict:
  """{"rpsnr", "rssim" (and "bicubic_rpsnr", "bicubic_rssim"), "num_examples"}
  means over images of score_rows' outputs (concatenated over batches)."""
  out = {"num_examples": float(len(per_image["psnr"]))}
  for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
    if k in per_image:
      name = k.replace("psnr", "rpsnr").replace("ssim", "rssim")
      out[name] = float(np.mean(per_image[k]))
  return out
