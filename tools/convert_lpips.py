r"""Builds vitok_jax's LPIPS weights (.npz) from the standard public files.

  python tools/convert_lpips.py \
      --vgg vgg16-397923af.pth \                 # torchvision VGG16 ImageNet
      --lin $(python -c "import lpips,os;print(os.path.dirname(lpips.__file__))")/weights/v0.1/vgg.pth \
      --out weights/lpips_vgg16.npz

Both inputs are PyTorch state dicts read with torch.load (torch is only needed
here, not for training). Conv kernels go OIHW -> HWIO; the linear layers'
[1, C, 1, 1] weights become [C] vectors.
"""
import argparse

import numpy as np

from vitok_jax.io import fileio

# torchvision vgg16().features indices of the 13 convolutions.
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_CONV_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1",
                  "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3",
                  "conv5_1", "conv5_2", "conv5_3")


def _np(t):
  return t.detach().cpu().numpy().astype(np.float32)


def convert(vgg_state: dict, lin_state: dict) -> dict:
  """State dicts -> flat {name: array} in vitok_jax.models.lpips's layout."""
  out = {}
  for idx, name in zip(VGG_CONV_INDICES, VGG_CONV_NAMES):
    for key in (f"features.{idx}.weight", f"features.{idx}.bias"):
      if key not in vgg_state:
        raise KeyError(f"VGG16 state dict lacks {key!r}: is it torchvision's "
                       "vgg16 (vgg16-397923af.pth)?")
    w = _np(vgg_state[f"features.{idx}.weight"])  # [O, I, kh, kw]
    out[f"vgg/{name}/kernel"] = w.transpose(2, 3, 1, 0)
    out[f"vgg/{name}/bias"] = _np(vgg_state[f"features.{idx}.bias"])
  for l in range(5):
    key = f"lin{l}.model.1.weight"
    if key not in lin_state:
      raise KeyError(f"LPIPS linear-layer file lacks {key!r}: is it the lpips "
                     "package's weights/v0.1/vgg.pth?")
    out[f"lin{l}"] = _np(lin_state[key]).reshape(-1)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--vgg", required=True, help="torchvision vgg16 .pth")
  ap.add_argument("--lin", required=True, help="lpips weights/v0.1/vgg.pth")
  ap.add_argument("--out", required=True, help="output .npz")
  args = ap.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  vgg = torch.load(args.vgg, map_location="cpu", weights_only=True)
  lin = torch.load(args.lin, map_location="cpu", weights_only=True)
  flat = convert(vgg, lin)
  fileio.save_npz(args.out, **flat)
  print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
  main()
