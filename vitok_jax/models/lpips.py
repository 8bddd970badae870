"""LPIPS (VGG16, v0.1) in Flax, NHWC. A frozen network: its params live
outside the train state and optimizer and are passed to the step.

  d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

with f_l the VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 features of the
shifted/scaled input, n() channel-unit normalisation and w_l >= 0 the learned
1x1 linear layers of Zhang et al. (2018). Inputs are in [-1, 1].

Weights: `tools/convert_lpips.py` turns torchvision's VGG16 state dict
(vgg16-397923af.pth) and the lpips package's vgg.pth into one .npz file.
"""
import logging
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import vitok_jax.utils as u

# VGG16 "D": channels per conv, "M" = 2x2 max-pool; taps after the last conv
# (and ReLU) of each of the five stages.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10
CONVERT_TOOL = "tools/convert_lpips.py"


class VGG16Features(nn.Module):
  """The five relu_x tap outputs of torchvision's VGG16 `features`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    taps = []
    for s, stage in enumerate(VGG16_STAGES):
      if s:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      for i, ch in enumerate(stage):
        x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name=f"conv{s + 1}_{i + 1}")(x)
        x = nn.relu(x)
      taps.append(x)
    return taps


class LPIPS(nn.Module):
  """Per-example LPIPS distance [N] between x and y ([N, H, W, 3] in [-1, 1])."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y):
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"LPIPS expects two [N, H, W, 3] images of the same "
                       f"shape, got {x.shape} and {y.shape}")
    n = x.shape[0]
    xy = jnp.concatenate([x, y]).astype(jnp.float32)
    xy = ((xy - SHIFT) / SCALE).astype(self.dtype)
    feats = VGG16Features(self.dtype, name="vgg")(xy)
    total = jnp.zeros((n,), jnp.float32)
    for l, f in enumerate(feats):
      f = f.astype(jnp.float32)
      f = f / (jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True)) + EPS)
      diff = (f[:n] - f[n:])**2
      w = self.param(f"lin{l}", nn.initializers.uniform(1.0 / f.shape[-1]),
                     (f.shape[-1],), jnp.float32)
      total = total + jnp.mean(jnp.einsum("nhwc,c->nhw", diff, w), axis=(1, 2))
    return total


def init_random(rng=None, res: int = 64) -> dict:
  """Random VGG + random non-negative linear weights (tests, laptop runs)."""
  rng = jax.random.key(0) if rng is None else rng
  x = jnp.zeros((1, res, res, 3))
  return LPIPS().init(rng, x, x)["params"]


def save(path: str, params) -> None:
  u.save_npz_tree(path, params)


def load(path: Optional[str], *, allow_random: bool = False) -> dict:
  """Params from a converted .npz; no path (None or "") -> random weights
  if allowed."""
  if not path:
    if not allow_random:
      raise ValueError("No LPIPS weights given: set config.loss.lpips_weights "
                       f"to the .npz that {CONVERT_TOOL} writes")
    logging.warning("LPIPS: no weights file given, using a RANDOM VGG16 and "
                    "random linear layers; the perceptual loss is then only a "
                    "stand-in (make real weights with %s)", CONVERT_TOOL)
    return init_random()
  return u.load_weights_npz(
      path, jax.eval_shape(init_random), "LPIPS", CONVERT_TOOL,
      f"python {CONVERT_TOOL} --vgg vgg16-397923af.pth --lin <lpips>/weights/"
      f"v0.1/vgg.pth --out {path}")


def make_distance_fn(dtype=jnp.float32):
  """-> fn(params, x, y) -> [N]; params get no gradient (frozen network)."""
  model = LPIPS(dtype=dtype)

  def distance(params, x, y):
    return model.apply({"params": jax.lax.stop_gradient(params)}, x, y)

  return distance
