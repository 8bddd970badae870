"""StyleGAN2 residual discriminator (Karras et al. 2020, config E/F), NHWC.

  fromRGB (1x1 conv) -> residual blocks down to 4x4 -> minibatch-stddev ->
  3x3 conv -> dense -> dense(1)

As published (the official code and its PyTorch ports):
  * block: 3x3 conv -> blur -> 3x3 conv with stride 2 (main path);
    blur -> 1x1 conv with stride 2, no bias, no activation (skip);
    out = (main + skip) / sqrt(2). The [1,3,3,1] blur low-passes *before*
    each stride-2 convolution, so that the subsampling does not alias;
  * equalised learning rate: weights are stored as N(0, 1) and scaled by
    1/sqrt(fan_in) when used, so that Adam's step acts alike on every layer;
  * leaky ReLU 0.2 times sqrt(2) (the gain that keeps activations at unit
    variance), with the layer's bias added before it.
Channels at resolution r are min(channel_base // r, channel_max).

The blur acts on H and W only: a depthwise convolution with explicit
NHWC/HWIO dimension numbers (a public JAX ViTok blurred W and C by passing
NCHW numbers to NHWC tensors).
"""
import math
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
ACT_GAIN = math.sqrt(2.0)
_DN = ("NHWC", "HWIO", "NHWC")


def blur_kernel() -> np.ndarray:
  k = np.asarray(BLUR_TAPS, np.float32)
  k2 = np.outer(k, k)
  return k2 / k2.sum()


def blur(x: jax.Array, pad: Tuple[int, int]) -> jax.Array:
  """[1,3,3,1] low-pass over H and W with zero padding (before, after);
  the output has H + before + after - 3 rows (and columns)."""
  c = x.shape[-1]
  k = jnp.asarray(blur_kernel(), x.dtype)
  kernel = jnp.tile(k[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=(pad, pad),
      dimension_numbers=_DN, feature_group_count=c)


def lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, 0.2) * jnp.asarray(ACT_GAIN, x.dtype)


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


class EqualConv(nn.Module):
  """k x k convolution with equalised learning rate; explicit padding."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0),
                        (k, k, cin, self.features), jnp.float32)
    scale = 1.0 / math.sqrt(cin * k * k)
    p = self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), (kernel * scale).astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
        dimension_numbers=_DN)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


class EqualDense(nn.Module):
  """Fully connected layer with equalised learning rate."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.normal(1.0),
                        (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    scale = 1.0 / math.sqrt(x.shape[-1])
    return (x.astype(self.dtype) @ (kernel * scale).astype(self.dtype) +
            bias.astype(self.dtype))


class DBlock(nn.Module):
  """Residual block halving H and W: see the module docstring."""
  out_ch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype)
    h = lrelu(EqualConv(x.shape[-1], 3, padding=1, name="conv0", **kw)(x))
    # Blur padded by 2 (H -> H + 1), then a valid stride-2 3x3: H / 2.
    h = lrelu(EqualConv(self.out_ch, 3, stride=2, name="conv1", **kw)(
        blur(h, (2, 2))))
    # Blur padded by 1 (H -> H - 1), then a stride-2 1x1: H / 2.
    skip = EqualConv(self.out_ch, 1, stride=2, use_bias=False, name="skip",
                     **kw)(blur(x, (1, 1)))
    return (h + skip) * jnp.asarray(1 / math.sqrt(2), h.dtype)


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
    kw = dict(dtype=self.dtype)
    h = lrelu(EqualConv(self.channels(res), 1, name="from_rgb", **kw)(x))
    r = res
    while r > 4:
      h = DBlock(self.channels(r // 2), name=f"block_{r}", **kw)(h)
      r //= 2
    if self.mbstd_group:
      h = minibatch_stddev(h, self.mbstd_group)
    c4 = self.channels(4)
    h = lrelu(EqualConv(c4, 3, padding=1, name="conv_4x4", **kw)(h))
    h = h.reshape(h.shape[0], -1)
    h = lrelu(EqualDense(c4, name="fc", **kw)(h))
    return EqualDense(1, name="out", **kw)(h)[:, 0].astype(jnp.float32)
