"""ViTok in plain PyTorch, mirroring vitok_jax.models.vitok (inference).

Depends on torch only (no jax). Parameter names follow the Flax tree with
'.' separators, so an exported state dict loads with strict checking.
Attention runs through F.scaled_dot_product_attention.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

LN_EPS = 1e-6  # Flax's LayerNorm default (torch's is 1e-5)


def swiglu_hidden(width: int) -> int:
  return int(round(8 * width / 3 / 64)) * 64


def token_coords(grid: Sequence[int], num_extra: int = 0) -> torch.Tensor:
  t, h, w = grid
  tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                              indexing="ij")
  coords = torch.stack([tt, hh, ww], -1).reshape(-1, 3)
  if num_extra:
    coords = torch.cat([coords, torch.zeros(num_extra, 3, dtype=coords.dtype)])
  return coords


def rope_angles(coords: torch.Tensor, head_dim: int,
                base: float = 10000.0) -> torch.Tensor:
  """coords [L, 3] -> [L, R], or [B, L, 3] (per example) -> [B, L, R]."""
  n = 2 * (head_dim // 6)
  inv_freq = 1.0 / base ** (torch.arange(0, n, 2, dtype=torch.float64,
                                         device=coords.device) / n)
  ang = coords[..., None].to(torch.float64) * inv_freq
  return ang.reshape(*coords.shape[:-1], -1).to(torch.float32)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
  """x [B, L, heads, head_dim]; angles [L, R] or [B, L, R]; rotates
  adjacent pairs of the first 2R dims."""
  r2 = 2 * angles.shape[-1]
  rot, rest = x[..., :r2], x[..., r2:]
  rot = rot.float().reshape(*rot.shape[:-1], -1, 2)
  if angles.dim() == 2:
    angles = angles[None]
  cos = torch.cos(angles)[:, :, None, :]
  sin = torch.sin(angles)[:, :, None, :]
  a, b = rot[..., 0], rot[..., 1]
  rot = torch.stack([a * cos - b * sin, a * sin + b * cos], -1)
  return torch.cat([rot.reshape(*rot.shape[:-2], r2).to(x.dtype), rest], -1)


class Attention(nn.Module):

  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(width, 3 * width, bias=False)
    self.out = nn.Linear(width, width, bias=False)

  def forward(self, x, angles, valid=None):
    b, l, d = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(b, l, 3, h, d // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = apply_rope(q, angles), apply_rope(k, angles)
    # valid [B, L]: no query attends to padding keys (True = attend).
    mask = None if valid is None else valid[:, None, None, :]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                       v.transpose(1, 2), attn_mask=mask)
    return self.out(o.transpose(1, 2).reshape(b, l, d))


class SwiGLU(nn.Module):

  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.gate = nn.Linear(width, hidden, bias=False)
    self.up = nn.Linear(width, hidden, bias=False)
    self.down = nn.Linear(hidden, width, bias=False)

  def forward(self, x):
    return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):

  def __init__(self, width: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
    self.attn = Attention(width, num_heads)
    self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
    self.mlp = SwiGLU(width, mlp_dim)

  def forward(self, x, angles, valid=None):
    x = x + self.attn(self.norm1(x), angles, valid)
    return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):

  def __init__(self, width, depth, num_heads, mlp_dim, rope_base=10000.0):
    super().__init__()
    self.head_dim = width // num_heads
    self.rope_base = rope_base
    for i in range(depth):
      self.add_module(f"block_{i}", Block(width, num_heads, mlp_dim))
    self.depth = depth
    self.norm = nn.LayerNorm(width, eps=LN_EPS)

  def forward(self, x, coords, valid=None):
    """coords [L, 3] (one grid) or [B, L, 3] with valid [B, L] (packed)."""
    angles = rope_angles(coords, self.head_dim, self.rope_base).to(x.device)
    for i in range(self.depth):
      x = getattr(self, f"block_{i}")(x, angles, valid)
    return self.norm(x)


class PosEmbedding(nn.Module):

  def __init__(self, length: int, width: int):
    super().__init__()
    self.embedding = nn.Parameter(torch.zeros(length, width))

  def forward(self, x):
    if x.shape[1:] != self.embedding.shape:
      raise ValueError(f"position embedding is for {tuple(self.embedding.shape)}"
                       f" tokens x width, input has {tuple(x.shape[1:])}")
    return x + self.embedding[None]


class ViTok(nn.Module):
  """Built from the JSON config that tools/export_pytorch.py writes."""

  def __init__(self, code_channels: int, enc_width: int, enc_depth: int,
               enc_heads: int, dec_width: int, dec_depth: int, dec_heads: int,
               patch: int, tubelet: int = 1, enc_mlp_dim: Optional[int] = None,
               dec_mlp_dim: Optional[int] = None, posemb: str = "learn",
               posemb_length: Optional[int] = None, num_latent_tokens: int = 0,
               mask_lengths: Sequence[int] = (), eval_length: Optional[int] = None,
               logvar_range: Tuple[float, float] = (-30.0, 20.0),
               rope_base: float = 10000.0, **unused):
    super().__init__()
    del unused  # JAX-only fields (dtype, remat, attn_impl)
    self.c = code_channels
    self.patch, self.tubelet = patch, tubelet
    self.dec_width = dec_width
    self.num_latent_tokens = num_latent_tokens
    self.masked = bool(mask_lengths)
    self.eval_length = eval_length
    self.logvar_range = tuple(logvar_range)
    k = (tubelet, patch, patch)
    self.tubelet_embed = nn.Conv3d(3, enc_width, k, stride=k)
    if posemb == "learn":
      if not posemb_length:
        raise ValueError("posemb='learn' needs posemb_length")
      self.enc_posemb = PosEmbedding(posemb_length, enc_width)
      self.dec_posemb = PosEmbedding(posemb_length, dec_width)
    self.posemb = posemb
    if num_latent_tokens:
      self.latent_tokens = nn.Parameter(torch.zeros(num_latent_tokens, enc_width))
      self.dec_mask_token = nn.Parameter(torch.zeros(dec_width))
    self.encoder = Transformer(enc_width, enc_depth, enc_heads,
                               enc_mlp_dim or swiglu_hidden(enc_width), rope_base)
    self.to_moments = nn.Linear(enc_width, 2 * code_channels)
    if self.masked:
      self.mask_token = nn.Parameter(torch.zeros(code_channels))
    self.from_code = nn.Linear(code_channels, dec_width)
    self.decoder = Transformer(dec_width, dec_depth, dec_heads,
                               dec_mlp_dim or swiglu_hidden(dec_width), rope_base)
    self.to_pixels = nn.ConvTranspose3d(dec_width, 3, k, stride=k)

  def token_grid(self, shape) -> Tuple[int, int, int]:
    """(T/q, H/p, W/p) for a [B, T, H, W, 3] or [B, H, W, 3] input."""
    shape = tuple(shape)
    if len(shape) == 4:
      shape = (shape[0], 1) + shape[1:]
    if len(shape) != 5 or shape[-1] != 3:
      raise ValueError(f"ViTok input must be [B, H, W, 3] or [B, T, H, W, 3], "
                       f"got {shape}")
    _, t, h, w, _ = shape
    for name, size, k in (("T", t, self.tubelet), ("H", h, self.patch),
                          ("W", w, self.patch)):
      if size % k:
        raise ValueError(f"Input {name}={size} is not divisible by {k}")
    return t // self.tubelet, h // self.patch, w // self.patch

  def encode(self, x):
    """x [B, (T,) H, W, 3] channels-last in [-1, 1] -> dict(mean, logvar, z)."""
    grid = self.token_grid(x.shape)
    x5 = x if x.ndim == 5 else x[:, None]
    tokens = self.tubelet_embed(x5.permute(0, 4, 1, 2, 3))  # -> [B, D, t, h, w]
    b = tokens.shape[0]
    tokens = tokens.flatten(2).transpose(1, 2)
    n_patch = tokens.shape[1]
    if self.num_latent_tokens:
      tokens = torch.cat([tokens, self.latent_tokens[None].expand(b, -1, -1)], 1)
    if self.posemb == "learn":
      tokens = self.enc_posemb(tokens)
    h = self.encoder(tokens, token_coords(grid, self.num_latent_tokens))
    if self.num_latent_tokens:
      h = h[:, n_patch:]
    mean, logvar = self.to_moments(h).float().chunk(2, dim=-1)
    logvar = logvar.clamp(*self.logvar_range)
    z = mean
    if self.masked:
      n = z.shape[1]
      l_eval = n if self.eval_length is None else self.eval_length
      keep = (torch.arange(n, device=z.device) < l_eval)[None, :, None]
      z = torch.where(keep, z, self.mask_token.to(z.dtype))
    return dict(mean=mean, logvar=logvar, z=z)

  def decode(self, z, grid: Sequence[int]):
    """z [B, N, c] and the token grid -> images [B, T, H, W, 3]."""
    grid = tuple(int(g) for g in grid)
    n_patch = math.prod(grid)
    h = self.from_code(z)
    b = h.shape[0]
    if self.num_latent_tokens:
      masks = self.dec_mask_token.expand(b, n_patch, self.dec_width)
      h = torch.cat([masks, h], 1)
    if self.posemb == "learn":
      h = self.dec_posemb(h)
    h = self.decoder(h, token_coords(grid, self.num_latent_tokens))
    h = h[:, :n_patch].transpose(1, 2).reshape(b, self.dec_width, *grid)
    return self.to_pixels(h).permute(0, 2, 3, 4, 1)

  def forward(self, x):
    """Reconstruction in the input's rank (channels-last, like the JAX model)."""
    y = self.decode(self.encode(x)["z"], self.token_grid(x.shape))
    return y if x.ndim == 5 else y[:, 0]

  # ------------------------------------------ packed sequences (NaFlex)
  # The contract of vitok_jax/models/patches.py: patches [B, N, q*p*p*3]
  # flattened in (dt, dy, dx, c) order, coords [B, N, 3] (t, y, x), valid
  # [B, N] (the image's patches first). Same refusals as the JAX model.
  def _check_packed(self, x, coords, valid, width: int, name: str):
    if self.posemb == "learn" or self.num_latent_tokens or self.masked:
      raise ValueError("The packed-sequence (NaFlex) path needs posemb='none'"
                       " and no Latent or Masked ViTok")
    b, n = x.shape[:2] if x.dim() == 3 else (-1, -1)
    if (x.shape[-1] != width or tuple(coords.shape) != (b, n, 3) or
        tuple(valid.shape) != (b, n)):
      raise ValueError(f"expected {name} [B, N, {width}], coords [B, N, 3], "
                       f"valid [B, N]; got {tuple(x.shape)}, "
                       f"{tuple(coords.shape)}, {tuple(valid.shape)}")
    valid = valid.to(torch.bool)
    coords = torch.where(valid[..., None], coords, torch.zeros_like(coords))
    return torch.where(valid[..., None], x, torch.zeros_like(x)), coords, valid

  def encode_patches(self, patches, coords, valid):
    """-> dict(mean, logvar, z) [B, N, c], zero on padding; the tubelet conv
    as the matmul it is (kernel = stride)."""
    k = self.tubelet_embed.weight  # [D, 3, q, p, p]
    x, coords, valid = self._check_packed(patches, coords, valid,
                                          k[0].numel(), "patches")
    w = k.permute(2, 3, 4, 1, 0).reshape(-1, k.shape[0])  # (dt, dy, dx, c)
    tokens = x @ w + self.tubelet_embed.bias
    h = self.encoder(tokens, coords, valid)
    mean, logvar = self.to_moments(h).float().chunk(2, dim=-1)
    logvar = logvar.clamp(*self.logvar_range)
    m = valid[..., None]
    mean = torch.where(m, mean, torch.zeros_like(mean))
    logvar = torch.where(m, logvar, torch.zeros_like(logvar))
    return dict(mean=mean, logvar=logvar, z=mean)

  def decode_patches(self, z, coords, valid):
    """-> patches [B, N, q*p*p*3], zero on padding; the transposed conv as a
    per-token matmul."""
    z, coords, valid = self._check_packed(z, coords, valid, self.c, "z")
    h = self.decoder(self.from_code(z), coords, valid)
    k = self.to_pixels.weight  # [D, 3, q, p, p]
    w = k.permute(0, 2, 3, 4, 1).reshape(k.shape[0], -1)
    bias = self.to_pixels.bias.repeat(w.shape[1] // 3)
    y = h @ w + bias
    return torch.where(valid[..., None], y, torch.zeros_like(y))
