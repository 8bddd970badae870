"""Flax params -> PyTorch state dict (numpy only: no jax, no torch needed).

Layouts: Dense kernels [in, out] -> Linear weight [out, in]; the fused QKV
kernel [D, 3, heads, head_dim] -> [3D, D]; the attention output kernel
[heads, head_dim, D] -> [D, D]; Conv3d kernel DHWIO -> OIDHW; the un-tubelet
kernel [D, q, p, p, 3] -> ConvTranspose3d weight [D, 3, q, p, p] (no flip: our
un-tubelet is defined as PyTorch's transposed convolution); LayerNorm scale ->
weight.
"""
from typing import Dict, Mapping

import numpy as np


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flatten(v, prefix + (str(k),))
    else:
      yield prefix + (str(k),), np.asarray(v, np.float32)


def flax_to_torch(params) -> Dict[str, np.ndarray]:
  out = {}
  for path, v in _flatten(params):
    name, leaf = ".".join(path[:-1]), path[-1]
    parent = path[-2] if len(path) > 1 else ""
    if leaf in ("latent_tokens", "dec_mask_token", "mask_token", "embedding"):
      key, val = ".".join(path), v
    elif parent == "tubelet_embed" and leaf == "kernel":
      key, val = f"{name}.weight", v.transpose(4, 3, 0, 1, 2)
    elif parent == "to_pixels" and leaf == "kernel":
      key, val = f"{name}.weight", v.transpose(0, 4, 1, 2, 3)
    elif parent == "qkv" and leaf == "kernel":
      key, val = f"{name}.weight", v.reshape(v.shape[0], -1).T
    elif parent == "out" and leaf == "kernel":
      key, val = f"{name}.weight", v.reshape(-1, v.shape[-1]).T
    elif leaf == "kernel":
      if v.ndim != 2:
        raise ValueError(f"Unexpected {v.ndim}-d kernel at {'/'.join(path)}")
      key, val = f"{name}.weight", v.T
    elif leaf == "scale":
      key, val = f"{name}.weight", v
    elif leaf == "bias":
      key, val = f"{name}.bias", v
    else:
      raise ValueError(f"Don't know how to export parameter {'/'.join(path)}")
    out[key] = np.ascontiguousarray(val)
  return out
