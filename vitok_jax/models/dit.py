"""Class-conditional DiT (Peebles & Xie 2023) on ViTok latents (paper §2.3).

  z [B, N, c] (one DiT token per ViTok code: no patchify), timestep t [B],
  class label y [B] (y = num_classes is the null class of classifier-free
  guidance) -> predicted noise [B, N, c]

With the tokenizer's Llama upgrades: pre-norm blocks with multi-head
attention and a SwiGLU MLP from models/vit.py, RoPE over the latent token
grid (3D axial for a grid of codes, 1D along one axis for Latent ViTok's 1D
codes), on top of DiT's fixed sin-cos position embedding. Conditioning is adaLN-Zero: c = emb(t) + emb(y) sets a shift, scale
and gate for each branch; the gates and the final layer start at zero, so a
fresh DiT is the identity on its residual stream and predicts 0.
"""
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitok_jax.models import vit

# width, depth, heads (DiT paper Table 1); "mu" and "T" are test sizes.
SIZES = {
    "mu": (64, 2, 2),
    "T": (128, 4, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps, as
  DiT/ADM: [cos(t f_i), sin(t f_i)] with geometric frequencies f_i."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def latent_coords(num_tokens: int,
                  grid: Optional[Sequence[int]]) -> np.ndarray:
  """RoPE coordinates [N, 3]: the ViTok token grid (t, h, w), or 1D
  positions (0, 0, i) for codes without a grid (Latent ViTok)."""
  if grid is None:
    coords = np.zeros((num_tokens, 3), np.int64)
    coords[:, 2] = np.arange(num_tokens)
    return coords
  if int(np.prod(grid)) != num_tokens:
    raise ValueError(f"DiT: {num_tokens} latent tokens do not fill the token "
                     f"grid {tuple(grid)}")
  return vit.token_coords(tuple(grid))


def sincos_posemb(coords: np.ndarray, width: int) -> np.ndarray:
  """DiT's fixed sin-cos position embedding [N, width], over the 3 axes of
  `coords` [N, 3]: width // 3 dims per axis (rounded down to even), each
  [sin(c w_i), cos(c w_i)] with w_i = 10000^(-i / (d/2)), zero-padded.

  RoPE alone tells a token its offsets to others, not where it is; a DiT
  must place class content at absolute positions even from pure noise.
  """
  per_axis = (width // 3) // 2 * 2
  half = per_axis // 2
  omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / max(half, 1))
  parts = []
  for axis in range(3):
    angles = coords[:, axis, None].astype(np.float64) * omega[None]
    parts += [np.sin(angles), np.cos(angles)]
  emb = np.concatenate(parts, axis=1)
  return np.pad(emb, ((0, 0), (0, width - emb.shape[1]))).astype(np.float32)


def _modulate(x, shift, scale):
  return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """Pre-norm block with adaLN-Zero: x + gate * branch(modulate(norm(x)))."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  attn_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, c, angles):
    width = x.shape[-1]
    mod = nn.Dense(6 * width, kernel_init=nn.initializers.zeros,
                   name="adaLN")(nn.silu(c)).astype(x.dtype)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(epsilon=vit.LN_EPS, use_scale=False,
                                     use_bias=False, dtype=x.dtype, name=name)
    h = vit.Attention(self.num_heads, dtype=self.dtype,
                      attn_impl=self.attn_impl, name="attn")(
                          _modulate(norm("norm1")(x), shift1, scale1), angles)
    x = x + gate1[:, None] * h.astype(x.dtype)
    h = vit.SwiGLU(self.mlp_dim, dtype=self.dtype, name="mlp")(
        _modulate(norm("norm2")(x), shift2, scale2))
    return x + gate2[:, None] * h.astype(x.dtype)


class DiT(nn.Module):
  """Build it with `create(size, in_channels, num_classes)`."""
  width: int
  depth: int
  num_heads: int
  in_channels: int  # ViTok's c
  num_classes: int  # the null class is num_classes
  mlp_dim: Optional[int] = None  # default: vit.swiglu_hidden(width)
  dtype: Any = jnp.float32  # matmuls
  stream_dtype: Any = jnp.float32  # residual stream, norms (autocast)
  attn_impl: Optional[str] = None
  rope_base: float = 10000.0
  posemb: str = "sincos"  # "sincos" (fixed, as DiT) | "none" (RoPE alone)
  remat: Any = "none"  # none | block | dots (vit.remat_block)

  @nn.compact
  def __call__(self, x, t, labels, grid: Optional[Tuple[int, int, int]] = None):
    """x [B, N, c], t [B] int or float, labels [B] in [0, num_classes]."""
    if x.ndim != 3 or x.shape[-1] != self.in_channels:
      raise ValueError(f"DiT expects latents [B, N, {self.in_channels}], got "
                       f"{x.shape}")
    b, n, _ = x.shape
    head_dim = self.width // self.num_heads
    coords = latent_coords(n, grid)
    angles = jnp.asarray(vit.rope_angles(coords, head_dim, self.rope_base))
    h = nn.Dense(self.width, dtype=self.dtype, name="embed")(x)
    h = h.astype(self.stream_dtype)
    if self.posemb == "sincos":
      h = h + jnp.asarray(sincos_posemb(coords, self.width), h.dtype)[None]
    elif self.posemb != "none":
      raise ValueError(f"DiT posemb={self.posemb!r}: 'sincos' or 'none'")
    temb = timestep_embedding(t, 256)
    temb = nn.Dense(self.width, name="t_mlp_0")(temb)
    temb = nn.Dense(self.width, name="t_mlp_1")(nn.silu(temb))
    yemb = nn.Embed(self.num_classes + 1, self.width,
                    embedding_init=nn.initializers.normal(0.02),
                    name="y_embed")(labels)
    c = (temb + yemb).astype(jnp.float32)
    block = vit.remat_block(DiTBlock, self.remat)
    mlp = self.mlp_dim or vit.swiglu_hidden(self.width)
    for i in range(self.depth):
      h = block(self.num_heads, mlp, dtype=self.dtype,
                attn_impl=self.attn_impl, name=f"block_{i}")(h, c, angles)
    shift, scale = jnp.split(nn.Dense(
        2 * self.width, kernel_init=nn.initializers.zeros,
        name="final_adaLN")(nn.silu(c)).astype(h.dtype), 2, axis=-1)
    h = _modulate(nn.LayerNorm(epsilon=vit.LN_EPS, use_scale=False,
                               use_bias=False, name="final_norm")(h),
                  shift, scale)
    out = nn.Dense(self.in_channels, kernel_init=nn.initializers.zeros,
                   dtype=self.dtype, name="out")(h)
    return out.astype(jnp.float32)


def create(size: str, in_channels: int, num_classes: int, **overrides) -> DiT:
  """dit.create("XL", 16, 1000) -> DiT; overrides set any field."""
  if size not in SIZES:
    raise ValueError(f"Unknown DiT size {size!r}; known: {sorted(SIZES)}")
  width, depth, heads = SIZES[size]
  if in_channels <= 0 or num_classes <= 0:
    raise ValueError(f"DiT needs in_channels > 0 and num_classes > 0, got "
                     f"{in_channels}, {num_classes}")
  return DiT(width=width, depth=depth, num_heads=heads,
             in_channels=in_channels, num_classes=num_classes, **overrides)


def from_config(model_config, in_channels: int, num_classes: int) -> DiT:
  """The DiT of a config.model: `size` picks width, depth and heads, every
  other key sets the DiT field of that name; dtypes are names, unset ones
  float32."""
  kw = dict(model_config)
  size = kw.pop("size")
  for k in ("dtype", "stream_dtype"):
    kw[k] = jnp.dtype(kw.get(k) or "float32")
  return create(size, in_channels, num_classes, **kw)
