"""ViTok: a ViT variational auto-encoder for images and videos (paper §2.2).

  x [B, T, H, W, 3] in [-1, 1]
    -> tubelet embedding (3D conv, kernel = stride = (q, p, p))  -> L tokens
    -> encoder ViT -> linear to 2c (mean, log-variance)           -> z ~ N
    -> linear c -> C_g -> decoder ViT
    -> un-tubelet (3D transposed conv, kernel = stride = (q, p, p))

Variants of appendix 8.3 behind fields:
  * Latent ViTok (`num_latent_tokens > 0`): learned 1D tokens appended to the
    patch tokens; only they pass the bottleneck; the decoder sees L mask tokens
    plus the upsampled latent tokens and predicts pixels from the mask tokens.
  * Masked ViTok (`mask_lengths`): after the bottleneck keep the first l codes
    and replace the tail with a learned c-dim mask token; l is drawn per
    example in training, `eval_length` (l_eval) at evaluation.

A second entry, not in the paper, takes packed patch sequences instead of
grids (NaFlex: each image at its own size and aspect ratio, padded at the
end; models/patches.py): `encode_patches`, `decode_patches`,
`reconstruct_patches`, with the same parameters.

Naming follows the paper: "S-B/4x16" = Small encoder, Base decoder, q=4, p=16;
"S-B/16" means q=1.
"""
import dataclasses
import re
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.models import patches as patches_lib
from vitok_jax.models import vit

# width, depth, heads (paper Table 1). "mu" and "Ti" are tiny sizes for tests
# and laptop runs; they are not in the paper.
SIZES = {
    "mu": (64, 1, 2),
    "Ti": (192, 4, 3),
    "S": (768, 6, 12),
    "B": (768, 12, 12),
    "L": (1152, 24, 16),
}
_VARIANT_RE = re.compile(r"^(%s)-(%s)/(?:(\d+)x)?(\d+)$" % (
    "|".join(SIZES), "|".join(SIZES)))


def decode_variant(variant: str) -> dict:
  """"S-B/4x16" -> encoder/decoder sizes, tubelet q and patch p."""
  m = _VARIANT_RE.match(variant)
  if not m:
    raise ValueError(
        f"Unknown ViTok variant {variant!r}: expected '<enc>-<dec>/<p>' or "
        f"'<enc>-<dec>/<q>x<p>' with sizes in {sorted(SIZES)}, e.g. 'S-B/16' "
        "or 'S-B/4x8'.")
  enc, dec, q, p = m.groups()
  ew, ed, eh = SIZES[enc]
  dw, dd, dh = SIZES[dec]
  return dict(enc_width=ew, enc_depth=ed, enc_heads=eh,
              dec_width=dw, dec_depth=dd, dec_heads=dh,
              tubelet=int(q or 1), patch=int(p))


class Untubelet(nn.Module):
  """3D transposed convolution with kernel = stride = (q, p, p).

  With no overlap it is exactly a per-token linear map to a q x p x p x C
  block, computed here as one einsum (XLA:CPU's lhs-dilated convolution is
  orders of magnitude slower). kernel[d, i, j, k, c] is PyTorch's ConvTranspose3d
  weight[d, c, i, j, k].
  """
  kernel_size: Tuple[int, int, int]
  features: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    """[B, T', H', W', D] -> [B, T'q, H'p, W'p, C] (a grid), or [B, N, D] ->
    [B, N, q*p*p*C] (a packed sequence: each token's block flattened in
    (dt, dy, dx, c) order, models/patches.py), with the same kernel."""
    q, p1, p2 = self.kernel_size
    d = h.shape[-1]
    # fan_in = D*q*p*p as for a transposed conv: small initial outputs.
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=(0, 1, 2, 3),
            out_axis=4),
        (d, q, p1, p2, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      self.param_dtype)
    if h.ndim == 3:
      y = jnp.einsum("bnd,dijkc->bnijkc", h.astype(self.dtype),
                     kernel.astype(self.dtype))
      y = y + bias.astype(y.dtype)
      return y.reshape(*y.shape[:2], -1)
    y = jnp.einsum("bthwd,dijkc->bthwijkc", h.astype(self.dtype),
                   kernel.astype(self.dtype))
    b, t, hh, ww = y.shape[:4]
    y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(
        b, t * q, hh * p1, ww * p2, self.features)
    return y + bias.astype(y.dtype)


class Model(nn.Module):
  """The ViTok auto-encoder. Build it with `create(variant, code_channels)`."""
  code_channels: int
  enc_width: int
  enc_depth: int
  enc_heads: int
  dec_width: int
  dec_depth: int
  dec_heads: int
  patch: int
  tubelet: int = 1
  enc_mlp_dim: Optional[int] = None  # default: vit.swiglu_hidden(width)
  dec_mlp_dim: Optional[int] = None
  posemb: str = "learn"  # "learn" | "none" (RoPE alone)
  num_latent_tokens: int = 0  # > 0: Latent ViTok
  mask_lengths: Tuple[int, ...] = ()  # non-empty: Masked ViTok
  eval_length: Optional[int] = None  # l_eval of Masked ViTok
  logvar_range: Tuple[float, float] = (-30.0, 20.0)
  dtype: Any = jnp.float32  # matmuls and convolutions
  param_dtype: Any = jnp.float32
  stream_dtype: Any = jnp.float32  # residual stream and norms (autocast)
  remat: Any = "none"  # none | block | dots (vit.remat_block)
  attn_impl: Optional[str] = None
  rope_base: float = 10000.0

  # ---------------------------------------------------------------- setup
  def setup(self):
    for side, w, h in (("encoder", self.enc_width, self.enc_heads),
                       ("decoder", self.dec_width, self.dec_heads)):
      if w % h:
        raise ValueError(f"{side} width {w} is not divisible by its {h} heads")
      if vit.rope_dims_per_axis(w // h) == 0:
        raise ValueError(f"{side} head_dim {w // h} is too small for 3D RoPE "
                         "(needs at least 6)")
    if self.posemb not in ("learn", "none"):
      raise ValueError(f"posemb must be 'learn' or 'none', got {self.posemb!r}")
    if any(l <= 0 for l in self.mask_lengths):
      raise ValueError(f"mask_lengths must be positive: {self.mask_lengths}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tkw = dict(remat=self.remat, attn_impl=self.attn_impl,
               rope_base=self.rope_base, stream_dtype=self.stream_dtype, **kw)
    kernel = (self.tubelet, self.patch, self.patch)
    self.tubelet_embed = nn.Conv(self.enc_width, kernel, strides=kernel,
                                 padding="VALID", **kw)
    if self.posemb == "learn":
      self.enc_posemb = vit.PosEmbedding(self.param_dtype)
      self.dec_posemb = vit.PosEmbedding(self.param_dtype)
    if self.num_latent_tokens:
      self.latent_tokens = self.param(
          "latent_tokens",
          lambda *_: jnp.asarray(vit.sincos_1d(self.num_latent_tokens,
                                               self.enc_width),
                                 self.param_dtype))
      self.dec_mask_token = self.param(
          "dec_mask_token", nn.initializers.normal(0.02), (self.dec_width,),
          self.param_dtype)
    self.encoder = vit.Transformer(
        self.enc_width, self.enc_depth, self.enc_heads,
        self.enc_mlp_dim or vit.swiglu_hidden(self.enc_width), **tkw)
    self.to_moments = nn.Dense(2 * self.code_channels, **kw)
    if self.mask_lengths:
      self.mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                                   (self.code_channels,), self.param_dtype)
    self.from_code = nn.Dense(self.dec_width, **kw)
    self.decoder = vit.Transformer(
        self.dec_width, self.dec_depth, self.dec_heads,
        self.dec_mlp_dim or vit.swiglu_hidden(self.dec_width), **tkw)
    self.to_pixels = Untubelet(kernel, 3, **kw)

  # ------------------------------------------------------------- helpers
  def token_grid(self, shape: Sequence[int]) -> Tuple[int, int, int]:
    """(T/q, H/p, W/p) for an input shape [B, T, H, W, 3] or [B, H, W, 3]."""
    shape = tuple(shape)
    if len(shape) == 4:
      shape = (shape[0], 1) + shape[1:]
    if len(shape) != 5:
      raise ValueError(f"ViTok input must be [B, H, W, 3] or [B, T, H, W, 3], "
                       f"got shape {shape}")
    _, t, h, w, ch = shape
    if ch != 3:
      raise ValueError(f"ViTok input must have 3 (RGB) channels in the last "
                       f"axis, got {ch} (shape {shape})")
    for name, size, k in (("frame count T", t, self.tubelet),
                          ("height H", h, self.patch),
                          ("width W", w, self.patch)):
      if size % k:
        raise ValueError(f"Input {name}={size} is not divisible by the tubelet "
                         f"size {k} (q={self.tubelet}, p={self.patch})")
    return t // self.tubelet, h // self.patch, w // self.patch

  def num_codes(self, grid: Sequence[int]) -> int:
    """Length of the latent sequence z for a token grid."""
    return self.num_latent_tokens or int(np.prod(grid))

  # -------------------------------------------------------------- encode
  def encode(self, x, train: bool = False):
    """x -> dict(mean, logvar, z, kl, keep); z is sampled only if `train`."""
    grid = self.token_grid(x.shape)  # validates rank, channels, divisibility
    x5 = x if x.ndim == 5 else x[:, None]
    tokens = self.tubelet_embed(x5.astype(self.dtype)).astype(
        self.stream_dtype)
    b = tokens.shape[0]
    tokens = tokens.reshape(b, -1, self.enc_width)
    n_patch = tokens.shape[1]
    if self.num_latent_tokens:
      lat = jnp.broadcast_to(self.latent_tokens.astype(tokens.dtype)[None],
                             (b,) + self.latent_tokens.shape)
      tokens = jnp.concatenate([tokens, lat], axis=1)
    if self.posemb == "learn":
      tokens = self.enc_posemb(tokens)
    h = self.encoder(tokens, vit.token_coords(grid, self.num_latent_tokens))
    if self.num_latent_tokens:
      h = h[:, n_patch:]  # only the latent tokens pass the bottleneck
    mean, logvar, z = self._posterior(h, train)
    keep = self._keep_mask(b, z.shape[1], train)
    if keep is not None:
      z = jnp.where(keep[..., None], z, self.mask_token.astype(z.dtype))
    kl_tok = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
    if keep is None:
      kl = jnp.mean(kl_tok, axis=-1)
    else:  # the KL of dropped codes is meaningless: average over kept ones
      kl = jnp.sum(kl_tok * keep, -1) / jnp.maximum(jnp.sum(keep, -1), 1)
    return dict(mean=mean, logvar=logvar, z=z, kl=kl,
                keep=jnp.ones(z.shape[:2], bool) if keep is None else keep)

  def _posterior(self, h, train: bool):
    """Encoder features -> (mean, logvar, z); z is sampled only if `train`."""
    moments = self.to_moments(h).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, *self.logvar_range)
    if train:
      eps = jax.random.normal(self.make_rng("sample"), mean.shape, mean.dtype)
      z = mean + jnp.exp(0.5 * logvar) * eps
    else:
      z = mean
    return mean, logvar, z

  def _keep_mask(self, batch: int, n: int, train: bool):
    if not self.mask_lengths:
      return None
    if max(self.mask_lengths) > n:
      raise ValueError(f"mask_lengths {self.mask_lengths} exceed the {n} codes")
    if train:
      lengths = jax.random.choice(self.make_rng("sample"),
                                  jnp.asarray(self.mask_lengths), (batch,))
    else:
      l_eval = n if self.eval_length is None else self.eval_length
      if not 0 < l_eval <= n:
        raise ValueError(f"eval_length={l_eval} must be in [1, {n}]")
      lengths = jnp.full((batch,), l_eval)
    return jnp.arange(n)[None, :] < lengths[:, None]

  # -------------------------------------------------------------- decode
  def decode(self, z, grid: Sequence[int]):
    """z [B, N, c] and the token grid (T', H', W') -> x [B, T, H, W, 3]."""
    grid = tuple(int(g) for g in grid)
    n_patch = int(np.prod(grid))
    if z.ndim != 3 or z.shape[-1] != self.code_channels:
      raise ValueError(f"decode expects z of shape [B, N, {self.code_channels}]"
                       f", got {z.shape}")
    if z.shape[1] != self.num_codes(grid):
      raise ValueError(f"decode got {z.shape[1]} codes but grid {grid} needs "
                       f"{self.num_codes(grid)}")
    h = self.from_code(z.astype(self.dtype)).astype(self.stream_dtype)
    b = h.shape[0]
    if self.num_latent_tokens:
      masks = jnp.broadcast_to(self.dec_mask_token.astype(h.dtype),
                               (b, n_patch, self.dec_width))
      h = jnp.concatenate([masks, h], axis=1)
    if self.posemb == "learn":
      h = self.dec_posemb(h)
    h = self.decoder(h, vit.token_coords(grid, self.num_latent_tokens))
    h = h[:, :n_patch].reshape(b, *grid, self.dec_width)
    return self.to_pixels(h).astype(jnp.float32)

  # -------------------------------------------------------------- forward
  def __call__(self, x, train: bool = False):
    """Returns (reconstruction in the input's rank, aux dict)."""
    aux = self.encode(x, train=train)
    grid = self.token_grid(x.shape)
    y = self.decode(aux["z"], grid)
    return (y if x.ndim == 5 else y[:, 0]), aux

  # ------------------------------------------ packed sequences (NaFlex)
  # One image or clip per sequence, of any size and aspect ratio, padded at
  # the end (the contract is models/patches.py's). The same parameters as
  # the grid path: a checkpoint trained on square grids runs on sequences
  # and back. On a full grid (patches.patchify) the sequence path computes
  # what __call__ does, up to float rounding (the tubelet conv becomes a
  # matmul; tests/test_naflex_model.py states the tolerance).
  #
  # Not on this path (ValueError):
  #   * posemb="learn": the table is a flat [L, D] for the grid the model
  #     was initialised on; nothing records that grid, and coordinates are
  #     traced under jit, so whether an image fits in it cannot be checked.
  #     Use posemb="none": the 3D RoPE over (t, y, x) gives the positions.
  #   * Latent ViTok: its fixed number of latent tokens would not follow
  #     the image's area; Masked ViTok: its code lengths count codes of a
  #     fixed grid. Neither has a meaning per image here yet.
  def _check_sequence_path(self, x, coords, valid, width: int, name: str):
    why = []
    if self.posemb == "learn":
      why.append("posemb='learn' (a table made for one grid; use "
                 "posemb='none', RoPE alone)")
    if self.num_latent_tokens:
      why.append(f"num_latent_tokens={self.num_latent_tokens} (Latent ViTok: "
                 "a fixed number of codes cannot follow the image's area)")
    if self.mask_lengths:
      why.append(f"mask_lengths={self.mask_lengths} (Masked ViTok's lengths "
                 "count the codes of one fixed grid)")
    if why:
      raise ValueError("The packed-sequence (NaFlex) path does not support "
                       + "; ".join(why))
    patches_lib.check(x, coords, valid, width, name)

  def _embed_patches(self, x):
    """The tubelet conv on flattened patches [B, N, q*p*p*3]: with kernel =
    stride it is the patch times the kernel reshaped to [q*p*p*3, D] (DHWIO
    flattens in the patches' (dt, dy, dx, c) order), with its parameters."""
    if self.is_initializing() and not self.tubelet_embed.has_variable(
        "params", "kernel"):  # an init through the sequence path
      self.tubelet_embed(jnp.zeros((1, self.tubelet, self.patch, self.patch,
                                    3), self.dtype))
    params = self.tubelet_embed.variables["params"]
    kernel = params["kernel"].reshape(-1, self.enc_width).astype(self.dtype)
    return jnp.dot(x.astype(self.dtype), kernel) + params["bias"].astype(
        self.dtype)

  def encode_patches(self, patches, coords, valid, train: bool = False):
    """Packed patches [B, N, q*p*p*3], coords [B, N, 3], valid [B, N] ->
    dict(mean, logvar, z [B, N, c], kl [B], keep = valid).

    mean, logvar and z are zero on padding (mean 0 and logvar 0 are the
    prior: a padding token has no KL), and kl is the mean over the valid
    tokens. Padding is zeroed on the way in (its patches and coords) and
    never attended to, so what it holds cannot change a valid output.
    """
    self._check_sequence_path(
        patches, coords, valid,
        patches_lib.patch_dim(self.patch, self.tubelet), "patches")
    valid = jnp.asarray(valid)
    m = valid[..., None]
    coords = jnp.where(m, jnp.asarray(coords, jnp.int32), 0)
    tokens = self._embed_patches(jnp.where(m, patches, 0)).astype(
        self.stream_dtype)
    h = self.encoder(tokens, coords, valid)
    mean, logvar, z = self._posterior(h, train)
    mean, logvar, z = (jnp.where(m, a, 0.0) for a in (mean, logvar, z))
    kl_tok = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
    kl = jnp.sum(kl_tok * valid, -1) / jnp.maximum(jnp.sum(valid, -1), 1)
    return dict(mean=mean, logvar=logvar, z=z, kl=kl, keep=valid)

  def decode_patches(self, z, coords, valid):
    """z [B, N, c], coords [B, N, 3], valid [B, N] -> patches [B, N,
    q*p*p*3] float32, zero on padding (the un-tubelet as a per-token
    matmul, with its kernel)."""
    self._check_sequence_path(z, coords, valid, self.code_channels, "z")
    valid = jnp.asarray(valid)
    m = valid[..., None]
    coords = jnp.where(m, jnp.asarray(coords, jnp.int32), 0)
    h = self.from_code(jnp.where(m, z, 0).astype(self.dtype)).astype(
        self.stream_dtype)
    h = self.decoder(h, coords, valid)
    return jnp.where(m, self.to_pixels(h).astype(jnp.float32), 0.0)

  def reconstruct_patches(self, patches, coords, valid, train: bool = False):
    """encode_patches then decode_patches -> (patches, aux), as __call__;
    init the model through it with method="reconstruct_patches"."""
    aux = self.encode_patches(patches, coords, valid, train=train)
    return self.decode_patches(aux["z"], coords, valid), aux


def create(variant: str, code_channels: int, **overrides) -> Model:
  """vitok.create("S-B/16", 16) -> Model; overrides set any Model field."""
  if code_channels <= 0:
    raise ValueError(f"code_channels must be positive, got {code_channels}")
  kw = decode_variant(variant)
  fields = {f.name for f in dataclasses.fields(Model)} - {"parent", "name"}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"Unknown ViTok field(s) {sorted(unknown)}; valid fields: "
                     f"{sorted(fields)}")
  kw.update(overrides)
  if "mask_lengths" in kw:
    kw["mask_lengths"] = tuple(int(l) for l in kw["mask_lengths"])
  return Model(code_channels=code_channels, **kw)


def from_config(model_config) -> Model:
  """The ViTok of a config.model (a trainer config's, or one a run stored
  as JSON): variant and code_channels pick the sizes, every other key sets
  the Model field of that name; dtypes are names ("bfloat16"), unset ones
  float32."""
  kw = dict(model_config)
  variant, c = kw.pop("variant"), kw.pop("code_channels")
  for k in ("dtype", "stream_dtype"):
    kw[k] = jnp.dtype(kw.get(k) or "float32")
  kw["mask_lengths"] = tuple(kw.get("mask_lengths") or ())
  if "logvar_range" in kw:  # JSON stores tuples as lists
    kw["logvar_range"] = tuple(kw["logvar_range"])
  return create(variant, c, **kw)
