"""The DiT in plain PyTorch, mirroring vitok_jax.models.dit, and its
samplers with classifier-free guidance -- DDIM mirroring vitok_jax.diffusion.ddpm,
Euler/Heun for flow-matching DiTs mirroring vitok_jax.diffusion.flow -- so an exported
DiT samples in torch:

    import vitok_jax.torch as vt
    dit, stats = vt.load_dit("dit.safetensors")     # + dit.json beside it
    tok = vt.load("vitok.safetensors")
    z = vt.dit.ddim_sample(dit, torch.tensor([207, 360]), num_steps=250,
                           cfg_scale=1.5)          # standardised latents
    # a DiT trained with diffusion.kind="flow" (dit.json: "diffusion"):
    z = vt.dit.flow_sample(dit, torch.tensor([207, 360]), num_steps=250,
                           cfg_scale=1.5, solver="heun")
    images = tok.decode(z * stats["std"] + stats["mean"], grid)

Parameter names follow the Flax tree; torch only (no jax).
"""
import math
from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from vitok_jax.torch.vitok import Attention, LN_EPS, SwiGLU, rope_angles  # pylint: disable=g-multiple-import
from vitok_jax.torch.vitok import swiglu_hidden, token_coords  # pylint: disable=g-multiple-import


def latent_coords(num_tokens: int, grid: Optional[Sequence[int]]):
  if grid is None:
    coords = torch.zeros(num_tokens, 3, dtype=torch.long)
    coords[:, 2] = torch.arange(num_tokens)
    return coords
  return token_coords(tuple(grid))


def sincos_posemb(coords: torch.Tensor, width: int) -> torch.Tensor:
  per_axis = (width // 3) // 2 * 2
  half = per_axis // 2
  omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
  parts = []
  for axis in range(3):
    ang = coords[:, axis, None].to(torch.float64) * omega[None]
    parts += [torch.sin(ang), torch.cos(ang)]
  emb = torch.cat(parts, 1)
  return F.pad(emb, (0, width - emb.shape[1])).to(torch.float32)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0):
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) *
                    torch.arange(half, dtype=torch.float32) / half)
  args = t.to(torch.float32)[:, None] * freqs[None]
  emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
  return F.pad(emb, (0, dim - 2 * half))


def _modulate(x, shift, scale):
  return x * (1.0 + scale[:, None]) + shift[:, None]


class YEmbed(nn.Module):

  def __init__(self, num: int, width: int):
    super().__init__()
    self.embedding = nn.Parameter(torch.zeros(num, width))

  def forward(self, labels):
    return self.embedding[labels]


class DiTBlock(nn.Module):

  def __init__(self, width: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.adaLN = nn.Linear(width, 6 * width)  # pylint: disable=invalid-name
    self.norm1 = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
    self.attn = Attention(width, num_heads)
    self.norm2 = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
    self.mlp = SwiGLU(width, mlp_dim)

  def forward(self, x, c, angles):
    s1, sc1, g1, s2, sc2, g2 = self.adaLN(F.silu(c)).chunk(6, dim=-1)
    x = x + g1[:, None] * self.attn(_modulate(self.norm1(x), s1, sc1), angles)
    return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, sc2))


class DiT(nn.Module):
  """forward(x [B, N, c], t [B], labels [B], grid=None) -> eps [B, N, c]."""

  def __init__(self, width: int, depth: int, num_heads: int, in_channels: int,
               num_classes: int, mlp_dim: Optional[int] = None,
               rope_base: float = 10000.0, posemb: str = "sincos",
               grid: Optional[Sequence[int]] = None):
    super().__init__()
    self.width, self.depth, self.num_heads = width, depth, num_heads
    self.in_channels, self.num_classes = in_channels, num_classes
    self.rope_base, self.posemb = rope_base, posemb
    self.grid = tuple(grid) if grid else None  # the latents' RoPE grid
    mlp = mlp_dim or swiglu_hidden(width)
    self.embed = nn.Linear(in_channels, width)
    self.t_mlp_0 = nn.Linear(256, width)
    self.t_mlp_1 = nn.Linear(width, width)
    self.y_embed = YEmbed(num_classes + 1, width)
    for i in range(depth):
      self.add_module(f"block_{i}", DiTBlock(width, num_heads, mlp))
    self.final_adaLN = nn.Linear(width, 2 * width)  # pylint: disable=invalid-name
    self.final_norm = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
    self.out = nn.Linear(width, in_channels)

  def forward(self, x, t, labels, grid=None):
    grid = grid if grid is not None else self.grid
    if x.ndim != 3 or x.shape[-1] != self.in_channels:
      raise ValueError(f"DiT expects latents [B, N, {self.in_channels}], got "
                       f"{tuple(x.shape)}")
    coords = latent_coords(x.shape[1], grid)
    angles = rope_angles(coords, self.width // self.num_heads,
                         self.rope_base).to(x.device)
    h = self.embed(x)
    if self.posemb == "sincos":
      h = h + sincos_posemb(coords, self.width).to(x.device)[None]
    temb = timestep_embedding(t, 256).to(x.device)
    c = self.t_mlp_1(F.silu(self.t_mlp_0(temb))) + self.y_embed(labels)
    for i in range(self.depth):
      h = getattr(self, f"block_{i}")(h, c, angles)
    shift, scale = self.final_adaLN(F.silu(c)).chunk(2, dim=-1)
    return self.out(_modulate(self.final_norm(h), shift, scale))


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
  betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
  return torch.cumprod(1.0 - betas, 0).to(torch.float32)


@torch.no_grad()
def ddim_sample(dit: DiT, labels: torch.Tensor, x_T: Optional[torch.Tensor] = None,
                num_tokens: Optional[int] = None, num_steps: int = 250,
                cfg_scale: float = 1.5, alphas_cumprod=None,
                generator=None) -> torch.Tensor:
  """DDIM (eta 0, "leading" spacing) with CFG -> standardised latents x_0."""
  abar = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
  if x_T is None:
    n = num_tokens or int(torch.tensor(dit.grid).prod())
    x_T = torch.randn(len(labels), n, dit.in_channels, generator=generator)
  ratio = len(abar) // num_steps
  x = x_T.float()
  b = x.shape[0]
  null = torch.full_like(labels, dit.num_classes)
  for t in (torch.arange(num_steps) * ratio).flip(0).tolist():
    tt = torch.full((b,), t, dtype=torch.long)
    if cfg_scale == 1.0:
      eps = dit(x, tt, labels)
    else:
      both = dit(torch.cat([x, x]), torch.cat([tt, tt]),
                 torch.cat([labels, null]))
      eps = both[b:] + cfg_scale * (both[:b] - both[b:])
    a_t = abar[t]
    a_prev = abar[t - ratio] if t - ratio >= 0 else torch.tensor(1.0)
    x0 = (x - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
    x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev) * eps
  return x


FLOW_TIME_SCALE = 1000.0  # the DiT sees t * 1000 (vitok_jax.diffusion.flow)


@torch.no_grad()
def flow_sample(dit: DiT, labels: torch.Tensor,
                x_1: Optional[torch.Tensor] = None,
                num_tokens: Optional[int] = None, num_steps: int = 250,
                cfg_scale: float = 1.5, solver: str = "euler",
                generator=None) -> torch.Tensor:
  """Rectified flow: dx/dt = v from noise (t = 1) to t = 0 on a uniform grid,
  Euler or Heun, with CFG on the velocities -> standardised latents x_0."""
  if solver not in ("euler", "heun"):
    raise ValueError(f"solver={solver!r}: expected 'euler' or 'heun'")
  if x_1 is None:
    n = num_tokens or int(torch.tensor(dit.grid).prod())
    x_1 = torch.randn(len(labels), n, dit.in_channels, generator=generator)
  x = x_1.float()
  b = x.shape[0]
  null = torch.full_like(labels, dit.num_classes)

  def velocity(x, t):
    tt = torch.full((b,), t * FLOW_TIME_SCALE, dtype=torch.float32)
    if cfg_scale == 1.0:
      return dit(x, tt, labels)
    both = dit(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))
    return both[b:] + cfg_scale * (both[:b] - both[b:])

  ts = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32).tolist()
  for t, t_next in zip(ts[:-1], ts[1:]):
    dt = t_next - t
    v1 = velocity(x, t)
    x_euler = x + dt * v1
    x = x_euler if solver == "euler" else x + dt * 0.5 * (
        v1 + velocity(x_euler, t_next))
  return x
