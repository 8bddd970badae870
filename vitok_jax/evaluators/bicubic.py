"""The baseline every tokenizer must beat: bicubic resampling at the same
number of floats as the code.

A ViTok code holds E = tokens x c floats per image (paper §2.2). Down-sampling
an H x W x 3 image bicubically to s x s x 3 with 3 s^2 <= E, and up-sampling it
back, spends the same budget with no learning at all. The small image is kept
in float32 (not rounded to uint8), so the baseline gets exactly E floats.
"""
import math

import numpy as np
from PIL import Image


def side_for_floats(floats: int, channels: int = 3) -> int:
  """The largest square side s with channels * s^2 <= floats."""
  s = int(math.isqrt(int(floats) // channels))
  if s < 1:
    raise ValueError(f"{floats} floats cannot hold one {channels}-channel pixel")
  return s


def _resize_float(channel: np.ndarray, size) -> np.ndarray:
  img = Image.fromarray(channel.astype(np.float32), mode="F")
  return np.asarray(img.resize(size, Image.BICUBIC), np.float32)


def reconstruct(images: np.ndarray, floats: int) -> np.ndarray:
  """[N, H, W, C] float images -> the same after bicubic down/up-sampling
  through an s x s x C float image holding at most `floats` numbers."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"bicubic.reconstruct expects [N, H, W, C], got "
                     f"{images.shape}")
  n, h, w, c = images.shape
  s = side_for_floats(floats, c)
  out = np.empty_like(images)
  for i in range(n):
    for ch in range(c):
      small = _resize_float(images[i, :, :, ch], (s, s))
      out[i, :, :, ch] = _resize_float(small, (w, h))
  return out
