"""NaFlex geometry: an image at its own aspect ratio as a padded patch sequence.

NaFlex (SigLIP 2; big_vision's pp/proj/image_text/ops_naflex.py) resizes each
image to the largest size, in whole patches, that keeps its aspect ratio as
closely as the patch grid allows and holds at most `max_patches` patches, then
cuts it into a sequence of patches with their grid positions. The model
(Model.encode_patches / decode_patches) takes that sequence:

  patches  float32 [B, N, q*p*p*3]  in [-1, 1], a patch flattened in
                                    (dt, dy, dx, channel) order, i.e. einops
      "b (t q) (h p1) (w p2) c -> b (t h w) (q p1 p2 c)"
  coords   int32   [B, N, 3]        (t, y, x) grid position; zeros on padding
  valid    bool    [B, N]           the image's patches first (t-major,
                                    row-major), padding after them
  N = config.input.max_patches

One image per sequence, padded at the end -- not several images packed into
one sequence (NaViT). NaFlex's resize makes every image nearly fill
max_patches (at N = 256 the padding is 2% of a sequence on average, at most
9%, over random sizes of aspect up to 4:1), so it costs little, and one image
per row keeps the rest simple: the losses,
LPIPS and the discriminator see one image per row of a canvas (`unpack`), the
batch shards over devices as before, and evaluation is per image.

Everything here is numpy on the host (grain workers) except `unpack`, which
the losses call inside the jitted step.
"""
from fractions import Fraction
import math
from typing import List, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from vitok_jax.data import preprocess as ops


# --------------------------------------------------------------------------
# The resize rule
# --------------------------------------------------------------------------
def naflex_grid(h: int, w: int, max_patches: int) -> Tuple[int, int]:
  """The patch grid (gh, gw) NaFlex resizes an h x w image to.

  SigLIP 2's rule: the largest scale s with ceil(s h / p) * ceil(s w / p) <=
  max_patches, each side at least one patch; sides are rounded *up* to whole
  patches so that no pixel is dropped. big_vision finds s by bisection in
  float32; here it is exact. With t = s / p the grid is (ceil(t h), ceil(t w)),
  independent of p, and the patch count only grows with t and jumps just after
  t = k / h or t = k / w: the largest feasible t is one of those, where that
  side holds exactly k patches and the other ceil(k other / side) (integers,
  no rounding error).
  """
  h, w, max_patches = int(h), int(w), int(max_patches)
  if min(h, w, max_patches) < 1:
    raise ValueError(f"naflex_grid: image {h}x{w}, max_patches {max_patches}: "
                     "all must be positive")
  best_t, best = Fraction(0), (1, 1)
  for side, other, is_h in ((h, w, True), (w, h, False)):
    for k in range(1, max_patches + 1):
      g_other = max(1, -(-k * other // side))
      if k * g_other > max_patches:
        break  # the count only grows with k
      if Fraction(k, side) > best_t:
        best_t = Fraction(k, side)
        best = (k, g_other) if is_h else (g_other, k)
  return best


def naflex_size(h: int, w: int, patch: int, max_patches: int
                ) -> Tuple[int, int]:
  """The pixel size (h', w'), multiples of `patch`, of `naflex_grid`."""
  gh, gw = naflex_grid(h, w, max_patches)
  return gh * patch, gw * patch


def spatial_budget(frames: int, tubelet: int, max_patches: int) -> int:
  """Patches per frame-group a clip of `frames` may use (all T/q share N)."""
  if frames % tubelet:
    raise ValueError(f"{frames} frames do not split into tubelets of "
                     f"{tubelet}")
  budget = max_patches // (frames // tubelet)
  if budget < 1:
    raise ValueError(f"max_patches={max_patches} cannot hold one patch per "
                     f"tubelet of a {frames}-frame clip")
  return budget


def resize_to_sequence(img: np.ndarray, patch: int, max_patches: int,
                       tubelet: int = 1, max_grid: Optional[int] = None
                       ) -> np.ndarray:
  """uint8 image [H, W, 3] (or clip [T, H, W, 3]) -> NaFlex-resized (bicubic,
  antialiased). `max_grid` caps each side's patches (the loss canvas,
  `canvas_grid`): an image beyond it is squeezed, breaking its aspect."""
  clip = img.ndim == 4
  h, w = img.shape[-3:-1]
  budget = spatial_budget(img.shape[0] if clip else 1, tubelet, max_patches)
  gh, gw = naflex_grid(h, w, budget)
  if max_grid:
    gh, gw = min(gh, max_grid), min(gw, max_grid)
  size = (gh * patch, gw * patch)
  if clip:
    return np.stack([ops.resize(f, size) for f in img])
  return ops.resize(img, size)


def canvas_grid(max_patches: int, max_aspect: float) -> int:
  """The side G (in patches) of a square canvas that holds every NaFlex grid
  of an image whose aspect ratio (long / short side) is at most max_aspect.

  For a tall image (h = r w, r >= 1) at scale t: gh <= t h + 1 and gw >= t w
  = t h / r >= (gh - 1) / r, so gh (gh - 1) <= r gh gw <= r N, i.e.
  gh <= (1 + sqrt(1 + 4 r N)) / 2 (and the short side is smaller).
  """
  r = max(float(max_aspect), 1.0)
  g = int(math.floor((1 + math.sqrt(1 + 4 * r * max_patches)) / 2 + 1e-9))
  return max(1, min(g, int(max_patches)))


# --------------------------------------------------------------------------
# Training crops
# --------------------------------------------------------------------------
def random_aspect_crop(img: np.ndarray, rng: np.random.Generator,
                       aspect: Sequence[float], area: Sequence[float]
                       ) -> np.ndarray:
  """A random crop of aspect ratio (width / height) log-uniform in `aspect`
  and area a uniform fraction `area` of the image, at a random place; a clip
  [T, H, W, C] is cropped in the same place in every frame.

  Unlike Inception's crop (retry, then fall back to a centre crop) a crop that
  does not fit is shrunk, keeping its aspect: every crop's aspect stays in the
  range (up to rounding to whole pixels), so the loss canvas bounds every
  training grid; the area is then below the drawn one.
  """
  h, w = img.shape[-3:-1]
  r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
  a = rng.uniform(*area) * h * w
  cw, ch = math.sqrt(a * r), math.sqrt(a / r)
  s = min(1.0, w / cw, h / ch)
  cw, ch = max(1, min(w, int(cw * s))), max(1, min(h, int(ch * s)))
  top = int(rng.integers(0, h - ch + 1))
  left = int(rng.integers(0, w - cw + 1))
  return img[..., top:top + ch, left:left + cw, :]


def random_flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A horizontal flip half the time, of an image or of every frame of a
  clip (preprocess.random_flip's draw)."""
  return img[..., ::-1, :] if rng.uniform() < 0.5 else img


# --------------------------------------------------------------------------
# Sequences <-> images
# --------------------------------------------------------------------------
def patchify_to_sequence(x, patch: int, tubelet: int, max_patches: int):
  """Image [H, W, C] or clip [T, H, W, C] (sides multiples of the patch, T of
  the tubelet) -> (patches [N, q*p*p*C] float32, coords [N, 3] int32, valid
  [N] bool), N = max_patches, the image's patches first."""
  x = np.asarray(x, np.float32)
  if x.ndim == 3:
    if tubelet != 1:
      raise ValueError(f"an image needs tubelet 1, got {tubelet}")
    x = x[None]
  t_, h_, w_, c = x.shape
  p, q = patch, tubelet
  if t_ % q or h_ % p or w_ % p:
    raise ValueError(f"input {x.shape} does not split into {q}x{p}x{p} "
                     "patches (resize_to_sequence first)")
  gt, gh, gw = t_ // q, h_ // p, w_ // p
  n = gt * gh * gw
  if n > max_patches:
    raise ValueError(f"{n} patches ({gt}x{gh}x{gw}) exceed max_patches="
                     f"{max_patches}")
  seq = x.reshape(gt, q, gh, p, gw, p, c).transpose(0, 2, 4, 1, 3, 5, 6)
  patches = np.zeros((max_patches, q * p * p * c), np.float32)
  patches[:n] = seq.reshape(n, -1)
  coords = np.zeros((max_patches, 3), np.int32)
  coords[:n] = np.stack(np.meshgrid(np.arange(gt), np.arange(gh),
                                    np.arange(gw), indexing="ij"),
                        -1).reshape(n, 3)
  valid = np.arange(max_patches) < n
  return patches, coords, valid


def unpack(patches, coords, valid, canvas_hw: Tuple[int, int], patch: int,
           frames: int = 1):
  """Each row's patches placed at their (t, y, x) on a canvas (jnp, jittable).

  Returns (images [B, Hc, Wc, 3], mask [B, Hc, Wc] bool: the image's pixels),
  or [B, T, Hc, Wc, 3] and [B, T, Hc, Wc] for clips of `frames` frames (the
  tubelet follows from the patch size). Pixels no patch covers are 0; a patch
  beyond the canvas is dropped (and absent from the mask): size the canvas
  with `canvas_grid`.
  """
  patches, coords, valid = (jnp.asarray(patches), jnp.asarray(coords),
                            jnp.asarray(valid))
  b, n, d = patches.shape
  p = patch
  q = d // (p * p * 3)
  hc, wc = canvas_hw
  if q * p * p * 3 != d or frames % q or hc % p or wc % p:
    raise ValueError(f"unpack: patches of {d} values, patch {p}, {frames} "
                     f"frames, canvas {canvas_hw}: inconsistent")
  gt, gh, gw = frames // q, hc // p, wc // p
  t, y, x = coords[..., 0], coords[..., 1], coords[..., 2]
  inside = valid & (t < gt) & (y < gh) & (x < gw)
  cells = gt * gh * gw
  idx = jnp.where(inside, (t * gh + y) * gw + x, cells)  # cells: dropped
  rows = jnp.arange(b)[:, None]
  canvas = jnp.zeros((b, cells, d), patches.dtype).at[rows, idx].set(
      patches, mode="drop")
  hit = jnp.zeros((b, cells), bool).at[rows, idx].set(inside, mode="drop")
  images = canvas.reshape(b, gt, gh, gw, q, p, p, 3).transpose(
      0, 1, 4, 2, 5, 3, 6, 7).reshape(b, gt * q, hc, wc, 3)
  mask = jnp.broadcast_to(hit.reshape(b, gt, 1, gh, 1, gw, 1),
                          (b, gt, q, gh, p, gw, p)).reshape(b, gt * q, hc, wc)
  if frames == 1:
    return images[:, 0], mask[:, 0]
  return images, mask


def native_grid(coords, valid) -> Tuple[int, int, int]:
  """(gt, gh, gw) of one row's image, read from its valid coords."""
  c = np.asarray(coords)[np.asarray(valid)]
  if not len(c):
    raise ValueError("a row without valid patches has no image")
  return tuple(int(v) + 1 for v in c.max(0))


def crop_native(patches, coords, valid, patch: int, frames: int = 1
                ) -> List[np.ndarray]:
  """Each row's image at its own size, numpy: [h, w, 3] (or [T, h, w, 3]),
  placed by coords. Rows without valid patches (batch padding) are left
  out."""
  patches, coords, valid = (np.asarray(patches), np.asarray(coords),
                            np.asarray(valid))
  p, d = patch, patches.shape[-1]
  q = d // (p * p * 3)
  out = []
  for pt, co, va in zip(patches, coords, valid):
    if not va.any():
      continue
    gt, gh, gw = native_grid(co, va)
    grid = np.zeros((gt, gh, gw, d), patches.dtype)
    grid[co[va, 0], co[va, 1], co[va, 2]] = pt[va]
    img = grid.reshape(gt, gh, gw, q, p, p, 3).transpose(
        0, 3, 1, 4, 2, 5, 6).reshape(gt * q, gh * p, gw * p, 3)
    out.append(img[0] if frames == 1 else img)
  return out
