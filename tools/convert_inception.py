r"""Converts pytorch-fid's FID InceptionV3 weights to vitok_jax's .npz.

  python tools/convert_inception.py \
      --pth pt_inception-2015-12-05-6726825d.pth --out weights/fid_inception_v3.npz

The .pth is the file pytorch-fid downloads (FID_WEIGHTS_URL in
pytorch_fid/inception.py); it is a torchvision Inception3 state dict. Conv
kernels OIHW -> HWIO; BatchNorm weight/bias/running_mean/running_var ->
scale/bias/mean/var; fc weight transposed. num_batches_tracked is dropped,
and so is fc.bias: the Inception Score uses the unbiased logits pool . W
(improved-GAN, ADM's evaluator, torch-fidelity's `logits_unbiased`).
"""
import argparse

import numpy as np

from vitok_jax.io import fileio

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean",
       "running_var": "var"}


def convert(state: dict) -> dict:
  out = {}
  for key, value in state.items():
    if key.endswith("num_batches_tracked") or key.startswith("AuxLogits"):
      continue
    arr = value.detach().cpu().numpy().astype(np.float32)
    parts = key.split(".")
    if key == "fc.bias":
      continue  # see the module docstring
    if key == "fc.weight":
      out["fc/kernel"] = arr.T
    elif parts[-2] == "conv" and parts[-1] == "weight":
      out["/".join(parts[:-2] + ["kernel"])] = arr.transpose(2, 3, 1, 0)
    elif parts[-2] == "bn" and parts[-1] in _BN:
      out["/".join(parts[:-2] + [_BN[parts[-1]]])] = arr
    else:
      raise KeyError(f"Unexpected key {key!r}: is this pytorch-fid's "
                     "pt_inception-2015-12-05-6726825d.pth?")
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--pth", required=True)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(args.pth, map_location="cpu", weights_only=True)
  flat = convert(state)
  fileio.save_npz(args.out, **flat)
  print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
  main()
