"""Per-example preprocessing ops (numpy + PIL), run inside grain workers.

Images arrive as uint8 [H, W, 3] and leave as float32 [res, res, 3] in
[-1, 1]. Random ops take a numpy Generator that grain derives from the
record index and the seed, so a resumed run sees the same crops.
"""
import math

import numpy as np
from PIL import Image


def to_rgb_uint8(img) -> np.ndarray:
  img = np.asarray(img)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3:
    raise ValueError(f"Expected an image [H, W, C], got shape {img.shape}")
  if img.shape[-1] == 4:
    img = img[..., :3]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  if img.shape[-1] != 3:
    raise ValueError(f"Expected 1, 3 or 4 channels, got shape {img.shape}")
  if img.dtype == np.uint16:  # 16-bit data: scale, don't clip to white
    img = np.round(img / 257.0)
  if img.dtype != np.uint8:
    img = np.clip(img, 0, 255).astype(np.uint8)
  return img


_HIGH_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def pil_to_rgb_uint8(im) -> np.ndarray:
  """Any decoded PIL image -> uint8 [H, W, 3] with the right values.

  16-bit (and 32-bit integer) grey is scaled to 8 bits, not clipped (a plain
  convert("RGB") turns a 16-bit PNG nearly white); palette and CMYK images
  are converted; alpha (RGBA, LA, palette transparency) is composited over
  white instead of exposing whatever colour transparent pixels store.
  """
  if im.mode in _HIGH_BIT_GREY:
    a = np.asarray(im).astype(np.float64)
    peak = 65535.0 if im.mode != "I" or a.max() > 255 else 255.0
    grey = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if im.mode == "F":
    grey = np.clip(np.round(np.asarray(im)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if "A" in im.mode or "transparency" in im.info:
    im = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(white, im)
  return np.asarray(im.convert("RGB"))


def resize(img: np.ndarray, size) -> np.ndarray:
  """Bicubic (antialiased) resize of a uint8 image to (h, w).

  A shrink by more than 3x first box-reduces by an integer factor (PIL's
  reducing_gap): much faster on large photos, and within a quarter of a
  grey level of the one-step filter (BENCHMARKS.md).
  """
  h, w = size
  if img.shape[:2] == (h, w):
    return img
  return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC,
                                                reducing_gap=3.0))


def random_resized_crop(img: np.ndarray, res: int, rng: np.random.Generator,
                        scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop of a random area/aspect, resized to res x res."""
  h, w = img.shape[:2]
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return resize(img[top:top + ch, left:left + cw], (res, res))
  return center_crop(img, res)  # fallback, as torchvision does


def center_crop(img: np.ndarray, res: int) -> np.ndarray:
  """Resize the shorter side to res, then take the central res x res."""
  h, w = img.shape[:2]
  s = res / min(h, w)
  nh, nw = max(res, int(round(h * s))), max(res, int(round(w * s)))
  img = resize(img, (nh, nw))
  top, left = (nh - res) // 2, (nw - res) // 2
  return img[top:top + res, left:left + res]


def random_flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return img[:, ::-1] if rng.uniform() < 0.5 else img


def value_range(img: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
  """uint8 [0, 255] -> float32 [lo, hi]."""
  return (img.astype(np.float32) / 255.0) * (hi - lo) + lo


def to_uint8(x) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] with rounding (the evaluation protocol)."""
  x = np.asarray(x, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
