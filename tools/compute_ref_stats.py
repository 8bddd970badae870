r"""Computes and caches Inception statistics of a dataset's images: mu, sigma
(FID), ADM's spatial mu_s, sigma_s (sFID), and the pool features of a seeded
random 10k (precision/recall).

  python tools/compute_ref_stats.py --data=tfds:imagenet2012:train --res=256 \
      --inception=weights/fid_inception_v3.npz

The images are the evaluation crops (resize + centre crop to --res, rounded to
uint8; videos frame-wise with --frames) that the evaluators score. Without
--out the file goes where training, the eval job and `vitok_jax.sample` look
for it (vitok_jax/evaluators/ref_stats.py: next to the Inception weights,
named by data set, split, resolution, frames and count), so they reuse it
instead of computing it; `evals.<name>.ref_stats` may also name the file.

On a cluster run it as N processes (each reads its share of the data; the
sums are added across processes; process 0 writes):
  ... --coordinator_address=host:port --num_processes=N --process_id=i
(or under SLURM / with JAX_COORDINATOR_ADDRESS set, --distributed).
"""
import argparse

import jax

from vitok_jax import cli
from vitok_jax.parallel import startup


def compute(data: str, res: int, inception_path: str, batch_size: int = 50,
            num_examples=None, data_dir=None, frames: int = 1,
            random_subset: bool = False, inception_input: str = "pytorch_fid"):
  from vitok_jax.evaluators import ref_stats  # pylint: disable=g-import-not-at-top
  from vitok_jax.models import inception  # pylint: disable=g-import-not-at-top
  cfg = data_config(data, res, data_dir, frames)
  return ref_stats.compute(cfg, inception.load(inception_path), num_examples,
                           batch_size, random_subset=random_subset,
                           inception_input=inception_input)


def data_config(data, res, data_dir=None, frames=1):
  from vitok_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.default_config(data=data, res=res,
                                       data_dir=data_dir or "", frames=frames)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--data", required=True)
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--res", type=int, required=True)
  ap.add_argument("--frames", type=int, default=1)
  ap.add_argument("--inception", required=True)
  ap.add_argument("--batch_size", type=int, default=50)
  ap.add_argument("--num_examples", type=int, default=None)
  ap.add_argument("--subset", choices=("first", "random"), default="first",
                  help="which --num_examples: the first (a reconstruction "
                  "evaluator's examples) or a seeded random subset (gFID's "
                  "reference: never the first classes of a sorted folder)")
  ap.add_argument("--inception_input", choices=("pytorch_fid", "adm"),
                  default="pytorch_fid", help="Inception's input convention: "
                  "'adm' for a generation evaluator's reference (its "
                  "default), 'pytorch_fid' for a reconstruction evaluator's")
  ap.add_argument("--out", default=None, help="default: the cache file the "
                  "jobs look for (vitok_jax/evaluators/ref_stats.py)")
  startup.add_arguments(ap)
  args = ap.parse_args(argv)
  startup.initialize_from_args(args)
  from vitok_jax.evaluators import ref_stats  # pylint: disable=g-import-not-at-top
  out = args.out or ref_stats.default_path(
      data_config(args.data, args.res, args.data_dir, args.frames),
      args.inception, args.num_examples, args.subset == "random",
      args.inception_input)
  stats = compute(args.data, args.res, args.inception, args.batch_size,
                  args.num_examples, args.data_dir, args.frames,
                  args.subset == "random", args.inception_input)
  if jax.process_index() == 0:
    ref_stats.save(stats, out)
    print(f"wrote statistics of {stats.n} images to {out}")
  return stats


if __name__ == "__main__":
  # A failure is one line naming the job, and the process leaves at once
  # (the other processes of a multi-process job then fail, not hang).
  cli.run_job("tools/compute_ref_stats.py", main)
