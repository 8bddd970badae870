r"""Prints ViTok parameters (M) and GFLOPs as the paper counts them.

  python tools/flops.py --variant S-B/16 --res 256
  python tools/flops.py --variant S-B/4x8 --res 128 --frames 16

"paper" GFLOPs = one multiply-add per FLOP, transformer trunks + bottleneck
(see vitok_jax/flops.py for why the tubelet convs are listed apart).
"""
import argparse

from vitok_jax import flops


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--variant", default="S-B/16")
  ap.add_argument("--res", type=int, default=256)
  ap.add_argument("--frames", type=int, default=1)
  ap.add_argument("--code_channels", type=int, default=16)
  args = ap.parse_args(argv)
  s = flops.summary(args.variant, args.res, args.frames, args.code_channels)
  p, g = s["params_m"], s["gflops"]
  print(f"ViTok {s['variant']}  input {s['frames']}x{s['res']}x{s['res']}  "
        f"tokens {s['tokens']}  c={args.code_channels}")
  print(f"{'':10s}{'params (M)':>12s}{'GFLOPs':>10s}")
  print(f"{'encoder':10s}{p['encoder']:12.1f}{g['encoder']:10.1f}")
  print(f"{'decoder':10s}{p['decoder']:12.1f}{g['decoder']:10.1f}")
  print(f"{'total':10s}{p['total']:12.1f}{g['paper']:10.1f}")
  print(f"(tubelet conv + transposed conv add {g['tubelet']:.2f} GFLOPs; "
        f"all matmuls: {g['total']:.1f})")
  return s


if __name__ == "__main__":
  main()
