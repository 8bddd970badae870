r"""Computes and caches Inception statistics (mu, sigma) of a dataset's images.

  python tools/compute_ref_stats.py --data tfds:imagenet2012:validation \
      --res 256 --inception weights/fid_inception_v3.npz --out refs/imagenet_val_256.npz

The images are the evaluation crops (resize + centre crop to --res, rounded to
uint8) that the reconstruction evaluator scores, so `evals.<name>.ref_stats`
can point at the output instead of recomputing the originals' statistics on
every evaluation. Also used for gFID reference statistics.
"""
import argparse

import ml_collections

from vitok_jax.evaluators import generation
from vitok_jax.evaluators import metrics
from vitok_jax.models import inception


def compute(data: str, res: int, inception_path: str, batch_size: int = 50,
            num_examples=None, data_dir=None) -> metrics.GaussianStats:
  cfg = ml_collections.ConfigDict(dict(data=data, res=res, data_dir=data_dir))
  return generation.reference_stats(cfg, inception.load(inception_path),
                                    num_examples, batch_size)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--data", required=True)
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--res", type=int, required=True)
  ap.add_argument("--inception", required=True)
  ap.add_argument("--batch_size", type=int, default=50)
  ap.add_argument("--num_examples", type=int, default=None)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  stats = compute(args.data, args.res, args.inception, args.batch_size,
                  args.num_examples, args.data_dir)
  stats.save(args.out)
  print(f"wrote statistics of {stats.n} images to {args.out}")


if __name__ == "__main__":
  main()
