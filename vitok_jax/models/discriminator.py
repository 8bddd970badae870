"""StyleGAN2-style residual discriminator (Karras et al. 2020), NHWC.

  fromRGB (1x1 conv) -> residual blocks down to 4x4 -> minibatch-stddev ->
  3x3 conv -> dense -> dense(1)

Each block: two 3x3 convs with leaky ReLU 0.2, the second followed by a
[1,3,3,1] blur-pool that halves H and W; a skip path of blur-pool + 1x1 conv
(no bias); out = (main + skip) / sqrt(2). Channels at resolution r are
min(channel_base // r, channel_max). Sized from the input resolution.

The blur acts on H and W only: it is a depthwise convolution with explicit
NHWC/HWIO dimension numbers (a public JAX ViTok blurred W and C by passing
NCHW numbers to NHWC tensors).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur_kernel() -> np.ndarray:
  k = np.asarray(BLUR_TAPS, np.float32)
  k2 = np.outer(k, k)
  return k2 / k2.sum()


def blur_pool(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H/2, W/2, C]: [1,3,3,1] low-pass, then stride 2."""
  c = x.shape[-1]
  k = jnp.asarray(blur_kernel(), x.dtype)
  kernel = jnp.tile(k[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(2, 2), padding=((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def minibatch_stddev(x: jax.Array, group: int = 4) -> jax.Array:
  """Appends the std over groups of examples as one feature map."""
  n, h, w, c = x.shape
  g = math.gcd(group, n)
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, c)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [n/g, h, w, c]
  y = jnp.mean(y, axis=(1, 2, 3))  # [n/g]
  y = jnp.tile(y, (g,))[:, None, None, None]
  y = jnp.broadcast_to(y, (n, h, w, 1)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)


class DBlock(nn.Module):
  out_ch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda ch, k, name, bias=True: nn.Conv(
        ch, (k, k), padding="SAME", use_bias=bias, dtype=self.dtype, name=name)
    skip = conv(self.out_ch, 1, "skip", bias=False)(blur_pool(x))
    h = nn.leaky_relu(conv(x.shape[-1], 3, "conv0")(x), 0.2)
    h = blur_pool(nn.leaky_relu(conv(self.out_ch, 3, "conv1")(h), 0.2))
    return (h + skip) * np.float32(1 / math.sqrt(2))


class Discriminator(nn.Module):
  """Logits [N] for images [N, H, W, 3] in [-1, 1] (square, power of two)."""
  channel_base: int = 32768
  channel_max: int = 512
  mbstd_group: int = 4  # 0 disables minibatch-stddev
  dtype: Any = jnp.float32

  def channels(self, res: int) -> int:
    return max(min(self.channel_base // res, self.channel_max), 1)

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"Discriminator expects [N, H, W, 3], got {x.shape}")
    res = x.shape[1]
    if x.shape[2] != res or res < 8 or res & (res - 1):
      raise ValueError(f"Discriminator needs square power-of-two inputs >= 8, "
                       f"got {x.shape[1:3]}")
    x = x.astype(self.dtype)
    h = nn.leaky_relu(nn.Conv(self.channels(res), (1, 1), dtype=self.dtype,
                              name="from_rgb")(x), 0.2)
    r = res
    while r > 4:
      h = DBlock(self.channels(r // 2), self.dtype, name=f"block_{r}")(h)
      r //= 2
    if self.mbstd_group:
      h = minibatch_stddev(h, self.mbstd_group)
    c4 = self.channels(4)
    h = nn.leaky_relu(nn.Conv(c4, (3, 3), padding="SAME", dtype=self.dtype,
                              name="conv_4x4")(h), 0.2)
    h = h.reshape(h.shape[0], -1)
    h = nn.leaky_relu(nn.Dense(c4, dtype=self.dtype, name="fc")(h), 0.2)
    return nn.Dense(1, dtype=self.dtype, name="out")(h)[:, 0].astype(
        jnp.float32)
