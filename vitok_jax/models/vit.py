"""Llama-style ViT pieces shared by the ViTok encoder/decoder (and the DiT).

Paper §2.3: pre-norm blocks, multi-head self-attention, SwiGLU MLP, 3D axial
RoPE over (t, h, w), residual connections, final norm.

Mixed precision follows the paper's bfloat16 autocast: parameters are
float32; matmuls (qkv, attention, MLP, projections) run in `dtype`; the
residual stream and the norms stay in `stream_dtype` (float32 by default),
and the attention softmax is float32 whatever the inputs. stream_dtype =
bfloat16 gives the all-bf16 policy (less memory traffic, less precision).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.models import attention

Dtype = Any
LN_EPS = 1e-6  # Flax default; the PyTorch export passes it explicitly.


def swiglu_hidden(width: int) -> int:
  """round(8/3 * width) to a multiple of 64 (2048 at 768, 3072 at 1152)."""
  return int(round(8 * width / 3 / 64)) * 64


# --------------------------------------------------------------------------
# 3D axial RoPE
# --------------------------------------------------------------------------
def rope_dims_per_axis(head_dim: int) -> int:
  """An even number of rotary dims per axis; the rest pass unrotated."""
  return 2 * (head_dim // 6)


def token_coords(grid: Sequence[int], num_extra: int = 0) -> np.ndarray:
  """(t, h, w) integer coordinates of a t-major token grid, shape [L, 3].

  `num_extra` tokens (latent tokens of Latent ViTok) are appended with
  coordinate (0, 0, 0): RoPE is then the identity on them and their identity
  comes from their own learned embeddings.
  """
  t, h, w = grid
  coords = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w),
                                indexing="ij"), axis=-1).reshape(-1, 3)
  if num_extra:
    coords = np.concatenate([coords, np.zeros((num_extra, 3), coords.dtype)])
  return coords


def rope_angles(coords, head_dim: int, base: float = 10000.0):
  """Rotation angles (axis-major: t freqs, h freqs, w freqs).

  coords [L, 3] (numpy, a static grid) -> numpy [L, 3 * n/2], computed in
  float64 and rounded once to float32.
  coords [B, L, 3] (int, may be traced: a packed sequence's per-example
  positions) -> jnp [B, L, 3 * n/2], the same numbers: a coordinate of a
  token among L is at most L - 1 (an image's patches fill a grid whose every
  side is at most its patch count), so the angles of 0..L-1 are tabulated as
  the static path computes them and gathered. A coordinate outside [0, L)
  breaks that contract and gives NaN angles (loud, not silently wrong).
  """
  n = rope_dims_per_axis(head_dim)
  inv_freq = 1.0 / base ** (np.arange(0, n, 2, dtype=np.float64) / n)
  if coords.ndim == 3:
    b, length, _ = coords.shape
    table = jnp.asarray(  # [L, n/2]: angle of coordinate value c
        (np.arange(length, dtype=np.float64)[:, None] * inv_freq[None]
        ).astype(np.float32))
    angles = jnp.take(table, jnp.asarray(coords, jnp.int32), axis=0,
                      mode="fill", fill_value=jnp.nan)  # [B, L, 3, n/2]
    return angles.reshape(b, length, -1)
  angles = coords[:, :, None].astype(np.float64) * inv_freq[None, None, :]
  return angles.reshape(coords.shape[0], -1).astype(np.float32)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates adjacent pairs (x[2i], x[2i+1]) of the first 2*len(angles) dims.

  x: [B, L, heads, head_dim]; angles: [L, R] (shared by the batch) or
  [B, L, R] (per example), with 2R <= head_dim.
  """
  r2 = 2 * angles.shape[-1]
  rot, rest = x[..., :r2], x[..., r2:]
  rot = rot.astype(jnp.float32).reshape(*rot.shape[:-1], -1, 2)
  if angles.ndim == 2:
    angles = angles[None]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  a, b = rot[..., 0], rot[..., 1]
  rot = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
  rot = rot.reshape(*rot.shape[:-2], r2).astype(x.dtype)
  return jnp.concatenate([rot, rest], axis=-1)


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
class Attention(nn.Module):
  """Multi-head self-attention with RoPE on queries and keys."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # None | "auto" | "xla" | "cudnn" | "splash": models/attention.py, which
  # resolves "auto" per platform when the step is traced.
  attn_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, angles, valid=None):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda feats, axis, name: nn.DenseGeneral(
        feats, axis=axis, use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    qkv = dense((3, self.num_heads, head_dim), -1, "qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = apply_rope(q, angles), apply_rope(k, angles)
    o = attention.attend(q, k, v, self.attn_impl, valid=valid)
    return dense(width, (-2, -1), "out")(o)


class SwiGLU(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda feats, name: nn.Dense(
        feats, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    h = nn.silu(dense(self.hidden, "gate")(x)) * dense(self.hidden, "up")(x)
    return dense(x.shape[-1], "down")(h)


def layer_norm(dtype, param_dtype, name=None):
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype,
                      name=name)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x)).

  The stream x and the norms are in x's dtype (the stream dtype); the
  branches compute in `dtype` and are added back in the stream's.
  """
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attn_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, angles, valid=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: layer_norm(x.dtype, self.param_dtype, name=name)
    y = Attention(self.num_heads, attn_impl=self.attn_impl, name="attn",
                  **kw)(norm("norm1")(x), angles, valid)
    x = x + y.astype(x.dtype)
    y = SwiGLU(self.mlp_dim, name="mlp", **kw)(norm("norm2")(x))
    return x + y.astype(x.dtype)


REMAT_POLICIES = ("none", "block", "dots")


def remat_block(block_cls, policy):
  """Activation checkpointing of a block class by policy name:
    "none" (or False): keep every activation for the backward pass;
    "block" (or True): keep only each block's input, recompute the rest;
    "dots": keep the matmul outputs, recompute the cheap elementwise ops.
  """
  if policy in (None, False, "none"):
    return block_cls
  if policy in (True, "block"):
    return nn.remat(block_cls)
  if policy == "dots":
    return nn.remat(
        block_cls, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  raise ValueError(f"remat={policy!r}: known policies {list(REMAT_POLICIES)}")


class Transformer(nn.Module):
  """A stack of blocks and the final norm; RoPE angles come from coords.

  coords: [L, 3] numpy (one static grid for the batch) or [B, L, 3] int
  (per example, a packed sequence); valid [B, L] (optional) keeps attention
  off padding (attention.attend).
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32  # matmuls
  param_dtype: Dtype = jnp.float32
  stream_dtype: Dtype = jnp.float32  # residual stream and norms
  remat: Any = "none"  # activation checkpointing: none | block | dots
  attn_impl: Optional[str] = None
  rope_base: float = 10000.0

  @nn.compact
  def __call__(self, x, coords, valid=None):
    if x.shape[-1] != self.width:
      raise ValueError(f"Transformer expects width {self.width}, got "
                       f"{x.shape[-1]}")
    angles = jnp.asarray(rope_angles(coords, self.width // self.num_heads,
                                     self.rope_base))
    block = remat_block(Block, self.remat)
    x = x.astype(self.stream_dtype)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, dtype=self.dtype,
                param_dtype=self.param_dtype, attn_impl=self.attn_impl,
                name=f"block_{i}")(x, angles, valid)
    return layer_norm(self.stream_dtype, self.param_dtype, name="norm")(x)


class PosEmbedding(nn.Module):
  """Learned absolute position embedding, sized by the first input it sees."""
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = x.shape[1:]
    if self.has_variable("params", "embedding"):
      stored = self.get_variable("params", "embedding").shape
      if tuple(stored) != tuple(shape):
        raise ValueError(
            f"Learned position embedding was created for {stored[0]} tokens of "
            f"width {stored[1]} but the input has {shape[0]} tokens of width "
            f"{shape[1]}: the resolution/frame count differs from the one the "
            "model was initialised with (use posemb='none' for variable sizes).")
    pe = self.param("embedding", nn.initializers.normal(0.02), shape,
                    self.param_dtype)
    return x + pe.astype(x.dtype)[None]


def sincos_1d(n: int, width: int) -> np.ndarray:
  """1D sine-cosine embedding [n, width] (init of Latent ViTok's tokens)."""
  half = width // 2
  omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / half)
  ang = np.arange(n, dtype=np.float64)[:, None] * omega[None]
  emb = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
  if emb.shape[1] < width:
    emb = np.pad(emb, ((0, 0), (0, width - emb.shape[1])))
  return emb.astype(np.float32)
