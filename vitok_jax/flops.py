"""Parameter and FLOP counts for ViTok, counted the way the paper counts.

The paper's "GFLOPs" count one multiply-add as one FLOP. Its figures (Table 1,
and the GFLOPs columns of Tables 3-5) are reproduced to ~1% by the
*non-embedding* count: the transformer trunks (QKV/out projections, SwiGLU, the two attention matmuls) plus the bottleneck
linears. The tubelet conv and transposed conv are reported separately
(`tubelet`) and included in `total_macs`, which is what a hardware-utilisation
figure must use. (With the tubelets included, the paper's video figures
would be off by up to 2.4%: e.g. S-B/4x16 is listed at exactly S-B/16's
34.8 although its tubelet has 4x the input size.)
"""
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.models import vit
from vitok_jax.models import vitok


def count_params(model: vitok.Model, input_shape: Sequence[int]) -> Dict[str, int]:
  """Parameter counts (encoder side, decoder side, total) via jax.eval_shape."""
  shapes = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))["params"]
  sizes = {k: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v))
           for k, v in shapes.items()}
  dec_keys = {"dec_posemb", "dec_mask_token", "from_code", "decoder",
              "to_pixels"}
  dec = sum(v for k, v in sizes.items() if k in dec_keys)
  total = sum(sizes.values())
  return dict(encoder=total - dec, decoder=dec, total=total)


def trunk_macs(width: int, depth: int, mlp_dim: int, tokens: int) -> int:
  """Multiply-adds of `depth` blocks over `tokens` tokens."""
  proj = tokens * (4 * width * width + 3 * width * mlp_dim)
  attn = 2 * tokens * tokens * width  # q.k^T and attn.v over all heads
  return depth * (proj + attn)


def count_macs(model: vitok.Model, input_shape: Sequence[int]) -> Dict[str, int]:
  """Multiply-adds of one forward pass for ONE example of `input_shape`."""
  grid = model.token_grid(input_shape)
  n_patch = int(np.prod(grid))
  n_seq = n_patch + model.num_latent_tokens
  n_codes = model.num_codes(grid)
  c = model.code_channels
  tub_in = model.tubelet * model.patch * model.patch * 3
  enc = trunk_macs(model.enc_width, model.enc_depth,
                   model.enc_mlp_dim or vit.swiglu_hidden(model.enc_width),
                   n_seq) + n_codes * model.enc_width * 2 * c
  dec = trunk_macs(model.dec_width, model.dec_depth,
                   model.dec_mlp_dim or vit.swiglu_hidden(model.dec_width),
                   n_seq) + n_codes * c * model.dec_width
  tubelet = n_patch * tub_in * (model.enc_width + model.dec_width)
  return dict(encoder=enc, decoder=dec, paper=enc + dec, tubelet=tubelet,
              total=enc + dec + tubelet, tokens=n_patch, codes=n_codes)


def summary(variant: str, res: int, frames: int = 1, code_channels: int = 16,
            **overrides) -> dict:
  """Params (M) and GFLOPs for a variant at a resolution (and frame count)."""
  model = vitok.create(variant, code_channels, **overrides)
  shape = (1, frames, res, res, 3)
  params = count_params(model, shape)
  macs = count_macs(model, shape)
  return dict(
      variant=variant, res=res, frames=frames, tokens=macs["tokens"],
      params_m={k: v / 1e6 for k, v in params.items()},
      gflops={k: macs[k] / 1e9 for k in ("encoder", "decoder", "paper",
                                         "tubelet", "total")})


def train_step_flops(model: vitok.Model, input_shape: Sequence[int]) -> float:
  """Real FLOPs (2 per multiply-add) of a forward+backward pass, for MFU."""
  batch = input_shape[0]
  per_example = count_macs(model, (1,) + tuple(input_shape[1:]))["total"]
  return 3 * 2 * per_example * batch



def dit_macs(model, tokens: int) -> Dict[str, int]:
  """Multiply-adds of one DiT forward pass for ONE example of `tokens`
  latent tokens (models/dit.py). `paper` counts what the DiT paper's Gflops
  count (the blocks, the adaLN and the in/out linears; its DiT-XL/2 at 256
  tokens is 118.6), `total` adds the timestep MLP."""
  w = model.width
  mlp = model.mlp_dim or vit.swiglu_hidden(w)
  blocks = trunk_macs(w, model.depth, mlp, tokens)
  ada = model.depth * 6 * w * w + 2 * w * w  # per example, not per token
  io = tokens * model.in_channels * w * 2  # embed + out
  t_mlp = 256 * w + w * w
  return dict(blocks=blocks, paper=blocks + ada + io,
              total=blocks + ada + io + t_mlp)


def dit_train_step_flops(model, tokens: int, batch: int) -> float:
  """Real FLOPs (2 per multiply-add) of a DiT forward+backward, for MFU."""
  return 3 * 2 * dit_macs(model, tokens)["total"] * batch


def half_macs(model: vitok.Model, input_shape: Sequence[int]) -> Dict[str, int]:
  """Multiply-adds of each half for ONE example, its tubelet included:
  `encode` (images -> code) and `decode` (code -> images)."""
  macs = count_macs(model, (1,) + tuple(input_shape[1:]))
  tub_in = model.tubelet * model.patch * model.patch * 3
  return dict(encode=macs["encoder"] + macs["tokens"] * tub_in * model.enc_width,
              decode=macs["decoder"] + macs["tokens"] * tub_in * model.dec_width)


def stage2_step_flops(model: vitok.Model, input_shape: Sequence[int]) -> float:
  """Stage 2's step: the frozen encoder's forward, the decoder's forward and
  backward (2 FLOPs per multiply-add); LPIPS and the discriminator are not
  model FLOPs."""
  half = half_macs(model, input_shape)
  return 2 * (half["encode"] + 3 * half["decode"]) * input_shape[0]


def forward_flops(model: vitok.Model, input_shape: Sequence[int]) -> float:
  """One evaluation-mode reconstruction of the batch (encode + decode)."""
  return 2 * count_macs(model, (1,) + tuple(input_shape[1:]))["total"] * (
      input_shape[0])


def dit_sample_flops(model, tokens: int, batch: int, num_steps: int,
                     guided: bool, decode_macs: int = 0) -> float:
  """DDIM sampling of `batch` latents: `num_steps` DiT forwards, each on
  twice the batch with classifier-free guidance, then the tokenizer's
  decode (`decode_macs` per example, half_macs(...)["decode"])."""
  per_step = dit_macs(model, tokens)["total"] * (2 if guided else 1)
  return 2 * (num_steps * per_step + decode_macs) * batch


# Peak dense bf16 FLOP/s per device (MFU's denominator), by the start of
# jax's device_kind; the same TPU figures as tools/aot_compile.py's CHIPS.
PEAK_TFLOPS = {"TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
               "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6 lite": 918.0,
               "TPU v6e": 918.0, "NVIDIA H100": 989.0, "NVIDIA H200": 989.0,
               "NVIDIA A100": 312.0, "NVIDIA B200": 2250.0,
               "NVIDIA GH200": 989.0}


def peak_flops(device_kind: str):
  """Peak bf16 FLOP/s of one device of this kind, or None when unknown (CPUs,
  other GPUs: config.peak_tflops then gives it)."""
  for kind in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if device_kind.startswith(kind):
      return PEAK_TFLOPS[kind] * 1e12
  return None
