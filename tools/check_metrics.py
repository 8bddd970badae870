r"""Fails (exit 1) unless a run's last logged metric beats another one.

CI uses it on the demo: the held-out rPSNR must be above bicubic
down/up-sampling through the same number of floats as the code,

  python tools/check_metrics.py --workdir=workdirs/demo \
      --metric=heldout/rpsnr --above=heldout/bicubic_rpsnr

Reads <workdir>/metrics.jsonl (what the training loop logs) and compares the
values of the last row that has both keys.
"""
import argparse
import json
import sys

from vitok_jax.io import fileio


def last_values(path: str, keys) -> dict:
  """The values of `keys` in the last row of a metrics.jsonl with all of them."""
  found = None
  with fileio.open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a line cut by a kill
      if all(k in row for k in keys):
        found = row
  if found is None:
    raise SystemExit(f"{path}: no row has all of {list(keys)}")
  return found


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--metric", required=True)
  ap.add_argument("--above", required=True,
                  help="the metric must be strictly above this one")
  args = ap.parse_args(argv)
  path = fileio.join(args.workdir, "metrics.jsonl")
  if not fileio.exists(path):
    raise SystemExit(f"{path} does not exist: did the run start?")
  row = last_values(path, (args.metric, args.above))
  ok = row[args.metric] > row[args.above]
  print(f"step {row['step']}: {args.metric} {row[args.metric]:.4f} "
        f"{'>' if ok else '<='} {args.above} {row[args.above]:.4f}: "
        f"{'OK' if ok else 'FAILED'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
