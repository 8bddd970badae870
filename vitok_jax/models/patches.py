"""Packed patch sequences: the NaFlex input of ViTok (native resolution and
aspect ratio), and the full-grid conversions to and from it.

One image (or clip) per sequence, its patches first, padding after them:

  patches  float32 [B, N, q*p*p*3] in [-1, 1]; a patch flattened in
           (dt, dy, dx, channel) order, i.e. einops
           "b (t q) (h p1) (w p2) c -> b (t h w) (q p1 p2 c)"
  coords   int32 [B, N, 3]: (t, y, x) patch-grid position; zeros on padding
  valid    bool [B, N]: True for the image's patches (t-major, row-major),
           which come first; padding after them

That flattening order is the tubelet conv kernel's (DHWI of DHWIO), so the
embedding of a patch is the flattened patch times the conv kernel reshaped
to [q*p*p*3, D] (models/vitok.py). The resizing and packing of images of
variable size belongs to the data pipeline; here are only the full-grid
versions (tests, and the square path's equivalence).

Functions use array methods only, so numpy in gives numpy out (data
pipelines) and jax arrays give jax arrays.
"""
from typing import Sequence

import numpy as np

from vitok_jax.models import vit


def patch_dim(patch: int, tubelet: int = 1) -> int:
  """Length q*p*p*3 of one flattened patch."""
  return tubelet * patch * patch * 3


def patchify(x, patch: int, tubelet: int = 1):
  """x [B, H, W, 3] or [B, T, H, W, 3] -> (patches, coords, valid).

  Every position is valid (a full grid, no padding); coords are
  vit.token_coords of the grid (t = 0 for images).
  """
  if x.ndim == 4:
    x = x[:, None]
  if x.ndim != 5 or x.shape[-1] != 3:
    raise ValueError(f"patchify expects [B, H, W, 3] or [B, T, H, W, 3], got "
                     f"{x.shape}")
  b, t, h, w, _ = x.shape
  for name, size, k in (("T", t, tubelet), ("H", h, patch), ("W", w, patch)):
    if size % k:
      raise ValueError(f"patchify: {name}={size} is not divisible by {k}")
  grid = (t // tubelet, h // patch, w // patch)
  y = x.reshape(b, grid[0], tubelet, grid[1], patch, grid[2], patch, 3)
  y = y.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(
      b, int(np.prod(grid)), patch_dim(patch, tubelet))
  coords = np.broadcast_to(vit.token_coords(grid).astype(np.int32),
                           (b, y.shape[1], 3))
  return y, np.array(coords), np.ones((b, y.shape[1]), bool)


def unpatchify(patches, grid: Sequence[int], patch: int, tubelet: int = 1):
  """The inverse of patchify for a full grid: patches [B, N, q*p*p*3] with
  N = prod(grid) -> [B, H, W, 3] for grid (h, w), [B, T, H, W, 3] for
  grid (t, h, w)."""
  grid = tuple(int(g) for g in grid)
  image = len(grid) == 2
  t, h, w = ((1,) + grid) if image else grid
  b, n, d = patches.shape
  if n != t * h * w or d != patch_dim(patch, tubelet):
    raise ValueError(f"unpatchify: patches {patches.shape} do not hold the "
                     f"grid {grid} of {patch_dim(patch, tubelet)}-long patches")
  y = patches.reshape(b, t, h, w, tubelet, patch, patch, 3)
  y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(
      b, t * tubelet, h * patch, w * patch, 3)
  return y[:, 0] if image else y


def check(x, coords, valid, width: int, name: str = "patches") -> None:
  """Validates a packed batch's shapes and dtypes: x [B, N, width] (the
  patches, width q*p*p*3, or the codes z, width c), coords [B, N, 3] int,
  valid [B, N] bool."""
  if x.ndim != 3 or x.shape[-1] != width:
    raise ValueError(f"{name} must be [B, N, {width}], got {tuple(x.shape)}")
  b, n = x.shape[:2]
  if tuple(coords.shape) != (b, n, 3):
    raise ValueError(f"coords must be [B, N, 3] = {(b, n, 3)} (t, y, x per "
                     f"patch, as {name} {tuple(x.shape)}), got "
                     f"{tuple(coords.shape)}")
  if not np.issubdtype(coords.dtype, np.integer):
    raise ValueError(f"coords must be integers, got {coords.dtype}")
  if tuple(valid.shape) != (b, n):
    raise ValueError(f"valid must be [B, N] = {(b, n)}, got "
                     f"{tuple(valid.shape)}")
  if valid.dtype != np.bool_:
    raise ValueError(f"valid must be bool, got {valid.dtype}")
