"""The baseline every tokenizer must beat: bicubic resampling at the same
number of floats as the code.

A ViTok code holds E = tokens x c floats per image (paper §2.2). Down-sampling
an H x W x 3 image bicubically to s x s x 3 with 3 s^2 <= E, and up-sampling it
back, spends the same budget with no learning at all. The small image is kept
in float32 (not rounded to uint8), so the baseline gets exactly E floats.

At native resolution (NaFlex) each image has its own size and its own budget
(E = valid tokens x c): `reconstruct_native` goes through the largest image of
the same aspect ratio that the budget holds (`size_for_floats`).
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


def size_for_floats(floats: int, h: int, w: int, channels: int = 3):
  """(hs, ws): h x w scaled by the one factor s = sqrt(floats / (channels h
  w)) at which it holds exactly `floats` numbers, each side rounded down (so
  channels hs ws <= floats, and the aspect ratio is h : w up to that
  rounding; exactly when s h and s w are whole). Integer arithmetic:
  floor(s h) = isqrt(floats h // (channels w)). A square image gets
  side_for_floats. An image so elongated that its short side would round to
  0 keeps one pixel there and what the budget allows along the other."""
  floats, h, w = int(floats), int(h), int(w)
  if floats < channels:
    raise ValueError(f"{floats} floats cannot hold one {channels}-channel "
                     "pixel")
  hs = math.isqrt(floats * h // (channels * w))
  ws = math.isqrt(floats * w // (channels * h))
  if not hs:
    hs, ws = 1, floats // channels
  elif not ws:
    hs, ws = floats // channels, 1
  return hs, ws


def _resize_float(channel: np.ndarray, size) -> np.ndarray:
  img = Image.fromarray(channel.astype(np.float32), mode="F")
  return np.asarray(img.resize(size, Image.BICUBIC), np.float32)


def _down_up(image: np.ndarray, small_hw) -> np.ndarray:
  """[H, W, C] -> bicubic down to small_hw and back, channel by channel."""
  h, w, c = image.shape
  out = np.empty_like(image)
  for ch in range(c):
    small = _resize_float(image[:, :, ch], small_hw[::-1])
    out[:, :, ch] = _resize_float(small, (w, h))
  return out


def reconstruct(images: np.ndarray, floats: int) -> np.ndarray:
  """[N, H, W, C] float images -> the same after bicubic down/up-sampling
  through an s x s x C float image holding at most `floats` numbers."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"bicubic.reconstruct expects [N, H, W, C], got "
                     f"{images.shape}")
  s = side_for_floats(floats, images.shape[-1])
  out = np.empty_like(images)
  for i, img in enumerate(images):
    out[i] = _down_up(img, (s, s))
  return out


def reconstruct_native(images, floats) -> list:
  """Images of any sizes [h_i, w_i, C] (a list) -> each after bicubic
  down/up-sampling through `size_for_floats(floats_i, h_i, w_i)`; `floats`:
  one budget for all, or one per image (valid tokens x c)."""
  images = [np.asarray(x, np.float32) for x in images]
  budgets = np.broadcast_to(np.asarray(floats), (len(images),))
  return [_down_up(x, size_for_floats(f, *x.shape)) for x, f in
          zip(images, budgets)]
