"""The FID InceptionV3 (the TF-ported network pytorch-fid uses) in Flax, NHWC.

Same structure as pytorch_fid.inception.InceptionV3(use_fid_inception=True):
torchvision's Inception3 with FIDInceptionA/C/E_1/E_2 blocks (average pools
that ignore padding, a max pool in the last block), input resized to 299x299
bilinearly (align_corners=False, no antialiasing), 2048-d pool features and
the 1008-way unbiased logits pool . W of its fc layer (for the Inception
Score; the standard IS leaves out the fc bias).

Two input conventions (`input_kind`), the same network after them:
  * "pytorch_fid": images in [0, 1], resized with half-pixel centres
    (torch's F.interpolate(bilinear, align_corners=False)), then 2x - 1 --
    pytorch-fid's and torch-fidelity's input; the reconstruction metrics use
    it;
  * "adm": images on [0, 255], resized by TF1's legacy ResizeBilinear (no
    half-pixel centres: source pixel = output pixel x in/out), then
    (x - 128) / 128 -- the graph ADM's evaluator runs, whose numbers DiT and
    the paper's generation tables report; the generation metrics use it.
At 256 pixels the two sampling grids differ by 0.07 pixels, at 512 by 0.36
(and the legacy resize aliases a downsample), so the conventions give
different FIDs.

Weights: `tools/convert_inception.py` converts pytorch-fid's
pt_inception-2015-12-05-6726825d.pth. Module names mirror torchvision's, so
"Mixed_5b.branch1x1.conv.weight" becomes params["Mixed_5b"]["branch1x1"]["kernel"].
"""
import functools
from typing import Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.parallel import sharding as sh
import vitok_jax.utils as u

BN_EPS = 1e-3
CONVERT_TOOL = "tools/convert_inception.py"
IntOr2 = Union[int, Tuple[int, int]]


def _pair(v: IntOr2) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
  """conv (no bias) -> BatchNorm (inference statistics, eps 1e-3) -> ReLU."""
  features: int
  kernel: IntOr2
  stride: IntOr2 = 1
  padding: IntOr2 = 0

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel)
    ph, pw = _pair(self.padding)
    w = self.param("kernel", nn.initializers.lecun_normal(),
                   (kh, kw, x.shape[-1], self.features))
    x = jax.lax.conv_general_dilated(
        x, w, _pair(self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    x = (x - mean) * (scale / jnp.sqrt(var + BN_EPS)) + bias
    return nn.relu(x)


def avg_pool_3x3_no_pad_count(x):
  """3x3/stride 1/pad 1 average that ignores the padded zeros (TF style)."""
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  n = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return s / n


def max_pool_3x3(x, stride: int, pad: int = 0):
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):  # FIDInceptionA
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, 1, name="branch1x1")(x)
    b5 = BasicConv(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, 1, name="branch_pool")(
        avg_pool_3x3_no_pad_count(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # torchvision InceptionB (Mixed_6a)

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):  # FIDInceptionC
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, 1, name="branch1x1")(x)
    b7 = BasicConv(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, 1, name="branch_pool")(avg_pool_3x3_no_pad_count(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # torchvision InceptionD (Mixed_7a)

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):  # FIDInceptionE_1 (avg pool) / E_2 (max pool)
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, 1, name="branch1x1")(x)
    b3 = BasicConv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = (avg_pool_3x3_no_pad_count(x) if self.pool == "avg"
              else max_pool_3x3(x, 1, 1))
    bp = BasicConv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(x, size: int = 299):
  """torch F.interpolate(mode='bilinear', align_corners=False) equivalent."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, size, size, c), "bilinear", antialias=False)


INPUT_KINDS = ("adm", "pytorch_fid")
INPUT_NAMES = {"adm": "ADM's Inception input (TF1 bilinear, (x - 128) / 128)",
               "pytorch_fid": "pytorch-fid's Inception input (half-pixel "
                              "bilinear, 2x - 1)"}


def check_input_kind(kind: str, key: str) -> str:
  if kind not in INPUT_KINDS:
    raise ValueError(f"{key}={kind!r}: expected one of {INPUT_KINDS}")
  return kind


@functools.lru_cache(maxsize=None)
def legacy_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of TF1's ResizeBilinear along one axis
  (align_corners=False, half_pixel_centers=False): output i reads source
  position i * n_in / n_out, between its floor and the next pixel (clamped
  at the last)."""
  src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def preprocess(x, input_kind: str = "pytorch_fid"):
  """Images [N, H, W, 3] in [0, 1] -> the network's input [N, 299, 299, 3]
  by one of the two conventions (the module docstring)."""
  x = x.astype(jnp.float32)
  if input_kind == "adm":
    return (resize_bilinear_legacy(255.0 * x, 299) - 128.0) / 128.0
  return 2.0 * resize_bilinear(x, 299) - 1.0


def resize_bilinear_legacy(x, size: int = 299):
  """TF1's tf.image.resize_bilinear(x, [size, size]) (ADM's evaluator), as
  two matrix products (separable; exact in float32 up to rounding)."""
  _, h, w, _ = x.shape
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", legacy_bilinear_matrix(h, size), x,
                 precision=hp)
  return jnp.einsum("pw,nowc->nopc", legacy_bilinear_matrix(w, size), x,
                    precision=hp)


# ADM's sFID features: the first 7 channels of `mixed_6/conv`, the 1x1
# branch (after its ReLU) of the TF graph's 7th mixed block -- Mixed_6d in
# torchvision's names (mixed = 5b, mixed_1 = 5c, mixed_2 = 5d, mixed_3 = 6a,
# mixed_4..7 = 6b..6e) -- at 17x17, flattened in NHWC order: 17*17*7 = 2023.
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS


class FIDInceptionV3(nn.Module):
  """images [N, H, W, 3] in [0, 1] -> (pool features [N, 2048], logits
  [N, 1008]), and with spatial=True also ADM's sFID features [N, 2023].
  input_kind: "pytorch_fid" or "adm" (the module docstring)."""
  spatial: bool = False
  input_kind: str = "pytorch_fid"

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"FIDInceptionV3 expects [N, H, W, 3], got {x.shape}")
    x = preprocess(x, self.input_kind)
    x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = max_pool_3x3(x, 2)
    x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
    x = max_pool_3x3(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    # Mixed_6d's output starts with its branch1x1 (the concatenation order).
    spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    # The Inception Score's logits are pool . W *without* the fc bias, as in
    # the improved-GAN code, ADM's evaluator and torch-fidelity's
    # `logits_unbiased`; the converter drops the bias.
    logits = nn.Dense(1008, use_bias=False, name="fc",
                      precision=jax.lax.Precision.HIGHEST)(pool)
    if self.spatial:
      return pool, logits, spatial
    return pool, logits


@functools.lru_cache(maxsize=None)
def _abstract_params():
  return jax.eval_shape(
      lambda: FIDInceptionV3().init(jax.random.key(0),
                                    jnp.zeros((1, 299, 299, 3)))["params"])


def abstract_params():
  """The params' shapes; traced once (~1 s on a CPU), a fresh tree each call
  (as i3d.abstract_params)."""
  return jax.tree.map(lambda a: a, _abstract_params())


def load(path: Optional[str]) -> dict:
  """Params from the .npz that tools/convert_inception.py writes."""
  return u.load_weights_npz(
      path, abstract_params(), "FID Inception", CONVERT_TOOL,
      f"python {CONVERT_TOOL} --pth pt_inception-2015-12-05-6726825d.pth "
      f"--out {path or 'weights/fid_inception_v3.npz'}")


def apply_fn(mesh=None, spatial: bool = False,
             input_kind: str = "pytorch_fid"):
  """Jitted (params, images in [0, 1]) -> (pool, logits[, spatial]); with a
  mesh, the batch is sharded over it (pass global arrays) and so are the
  outputs. Build it once per job: every call of apply_fn compiles anew."""
  net = FIDInceptionV3(spatial=spatial,
                       input_kind=check_input_kind(input_kind, "input_kind"))
  fn = lambda p, x: net.apply({"params": p}, x)
  if mesh is None:
    return jax.jit(fn)
  batch = sh.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(sh.replicated(mesh), batch),
                 out_shardings=(batch,) * (3 if spatial else 2))
