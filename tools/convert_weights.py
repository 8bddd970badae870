r"""Converts every pretrained network vitok_jax uses, in one command.

  python tools/convert_weights.py --src=downloads --out=weights

Looks in --src for the standard public files below, checks each one's
sha256, converts what is there with the single-network tools (which it
imports: tools/convert_lpips.py, convert_inception.py, convert_i3d.py) and
prints, for each file that is missing, where to get it. Needs torch to read
the files (`pip install -e ".[torch]"`); the jobs then need only the .npz.

  weights/lpips_vgg16.npz      LPIPS (training loss; losses.lpips_weights)
      vgg16-397923af.pth       torchvision's VGG16, ImageNet weights
                               https://download.pytorch.org/models/vgg16-397923af.pth
      vgg.pth                  LPIPS v0.1's linear layers (the lpips package's
                               lpips/weights/v0.1/vgg.pth; taken from an
                               installed lpips package when not in --src)
                               https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth
  weights/fid_inception_v3.npz the FID Inception (rFID, rIS, gFID, gIS, sFID)
      pt_inception-2015-12-05-6726825d.pth   pytorch-fid's FID_WEIGHTS_URL
                               https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  weights/i3d_kinetics400.npz  the FVD I3D (rFVD, gFVD)
      i3d_torchscript.pt       StyleGAN-V's TorchScript of TF-Hub's i3d-kinetics-400
                               https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt

The sha256 checks: vgg.pth against the full digest of lpips 0.1.4's file;
the two files whose names carry a hash (torch.hub's convention: the first 8
hex digits of the file's sha256 after the last '-') against that prefix.
No sha256 of i3d_torchscript.pt is known to this project: its digest is
printed (and recorded in the .npz's provenance), and the conversion is
verified instead by running the TorchScript's own forward pass against ours
(tools/convert_i3d.py). A file whose digest does not match is not converted.
An output that exists is kept unless --force.
"""
import argparse
import importlib.util
import os
import sys

from vitok_jax.io import fileio

TOOLS = os.path.dirname(os.path.abspath(__file__))

# name -> (full sha256 or None, where it comes from). Full digests only where
# this project has read the file itself (lpips 0.1.4's wheel).
FILES = {
    "vgg16-397923af.pth": (
        None, "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "vgg.pth": (
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/"
        "weights/v0.1/vgg.pth (or `pip install lpips==0.1.4`)"),
    "pt_inception-2015-12-05-6726825d.pth": (
        None, "https://github.com/mseitzer/pytorch-fid/releases/download/"
        "fid_weights/pt_inception-2015-12-05-6726825d.pth"),
    "i3d_torchscript.pt": (
        None, "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt "
        "(linked from github.com/universome/stylegan-v)"),
}

# output .npz -> (the files it needs, the tool, its arguments).
NETWORKS = {
    "lpips_vgg16.npz": (("vgg16-397923af.pth", "vgg.pth"), "convert_lpips",
                        lambda f, out: ["--vgg", f[0], "--lin", f[1],
                                        "--out", out]),
    "fid_inception_v3.npz": (("pt_inception-2015-12-05-6726825d.pth",),
                             "convert_inception",
                             lambda f, out: ["--pth", f[0], "--out", out]),
    "i3d_kinetics400.npz": (("i3d_torchscript.pt",), "convert_i3d",
                            lambda f, out: ["--torchscript", f[0], "--out",
                                            out]),
}


def name_prefix(name: str):
  """The hash prefix a torch.hub file name carries ('vgg16-397923af.pth' ->
  '397923af'), or None."""
  stem = os.path.splitext(name)[0]
  tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
  return tail if len(tail) >= 8 and all(
      c in "0123456789abcdef" for c in tail) else None


def check(name: str, path: str) -> str:
  """'' when the file is the known one (or nothing is known), else why not.
  Prints what was checked."""
  digest = fileio.sha256(path)
  full, _ = FILES[name]
  prefix = name_prefix(name)
  if full:
    ok, what = digest == full, "the known sha256"
  elif prefix:
    ok, what = digest.startswith(prefix), f"the name's sha256 prefix {prefix}"
  else:
    print(f"  {name}: sha256 {digest} (no known sha256 to check against)")
    return ""
  print(f"  {name}: sha256 {digest} {'matches' if ok else 'does NOT match'} "
        f"{what}")
  return "" if ok else f"{path}: sha256 {digest} does not match {what}"


def find(name: str, src: str):
  path = os.path.join(src, name)
  if os.path.exists(path):
    return path
  if name == "vgg.pth":  # the lpips package ships it
    spec = importlib.util.find_spec("lpips")
    if spec and spec.origin:
      path = os.path.join(os.path.dirname(spec.origin), "weights", "v0.1",
                          "vgg.pth")
      if os.path.exists(path):
        return path
  return None


def load_tool(name: str):
  spec = importlib.util.spec_from_file_location(
      f"tool_{name}", os.path.join(TOOLS, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def main(argv=None) -> dict:
  """Returns {output name: "converted" | "kept" | "missing" | "refused: ..."}."""
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--src", required=True, help="The folder holding the "
                  "downloaded files (names as above).")
  ap.add_argument("--out", default="weights", help="Where the .npz files go "
                  "(default %(default)s, the path the configs name).")
  ap.add_argument("--only", default="", help="Comma-separated outputs to make "
                  f"(default all: {','.join(NETWORKS)}).")
  ap.add_argument("--force", action="store_true",
                  help="Convert again even when the output exists.")
  args = ap.parse_args(argv)
  only = [n for n in args.only.split(",") if n]
  unknown = sorted(set(only) - set(NETWORKS))
  if unknown:
    ap.error(f"--only: unknown {unknown}; known: {sorted(NETWORKS)}")
  os.makedirs(args.out, exist_ok=True)
  status = {}
  for out_name, (names, tool, tool_args) in NETWORKS.items():
    if only and out_name not in only:
      continue
    out = os.path.join(args.out, out_name)
    if os.path.exists(out) and not args.force:
      print(f"{out}: exists, kept (--force converts again)")
      status[out_name] = "kept"
      continue
    paths = [find(n, args.src) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
      print(f"{out}: missing " + "; ".join(
          f"{n} (get it from {FILES[n][1]})" for n in missing))
      status[out_name] = "missing"
      continue
    print(f"{out}: from " + ", ".join(paths))
    bad = [why for n, p in zip(names, paths) if (why := check(n, p))]
    if bad:
      print(f"{out}: REFUSED, nothing written: " + "; ".join(bad))
      status[out_name] = "refused: " + "; ".join(bad)
      continue
    if importlib.util.find_spec("torch") is None:
      sys.exit("convert_weights: reading the PyTorch files needs torch: "
               "pip install -e \".[torch]\"")
    try:
      load_tool(tool).main(tool_args(paths, out))
    except SystemExit as e:  # the tool refused (e.g. convert_i3d's check)
      if e.code not in (None, 0):
        status[out_name] = f"refused: {e.code}"
        print(f"{out}: REFUSED: {e.code}")
        continue
    status[out_name] = "converted"
  print("summary: " + ", ".join(f"{k} {v.split(':')[0]}"
                                for k, v in status.items()))
  return status


if __name__ == "__main__":
  result = main()
  sys.exit(0 if all(not v.startswith("refused") for v in result.values())
           else 1)
