r"""Expands a sweep of configs/sweeps.py into runs, each with its own workdir.

  python tools/sweep.py --sweep=fig2 --root=/runs/fig2            # print the commands
  python tools/sweep.py --sweep=mini_e --root=workdirs/mini_e --run
  python tools/sweep.py --config=configs/vitok/s_b16_256.py --grid="variant=S-B/8,S-B/16 x c=4,16" --root=/runs/mine

Without --run it prints one `python -m vitok_jax.train ...` command per run,
one per line, for a cluster scheduler. With --run it runs them here one
after the other: a finished run (its latest checkpoint is the config's last
step) is skipped, an interrupted one resumes from its checkpoint (the
trainer does that), a failed one is reported and the sweep goes on; it
exits non-zero if any run failed. <root>/sweep.json records the runs and
their arguments for tools/plot_sweep.py.
"""
import argparse
import importlib.util
import itertools
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_sweeps() -> dict:
  spec = importlib.util.spec_from_file_location("sweeps", ROOT / "configs" /
                                                "sweeps.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.SWEEPS


def run_name(args: dict) -> str:
  """{"variant": "S-B/8", "c": "4"} -> "variant=S-B-8_c=4" (a folder name)."""
  return "_".join(f"{k}={v}" for k, v in args.items()).replace("/", "-")


def parse_grid(text: str) -> dict:
  """"p=8,16,32 x c=4,8" -> {"p": ["8", "16", "32"], "c": ["4", "8"]}."""
  grid = {}
  for part in text.split(" x "):
    key, _, values = part.strip().partition("=")
    if not key or not values:
      raise ValueError(f"--grid: {part!r} is not <arg>=<v1>,<v2>,...")
    grid[key] = values.split(",")
  return grid


def expand(sweep: dict, root: str, extra: str = "") -> list:
  """-> [dict(name, args, config_arg, workdir, command)] of every run."""
  if "runs" in sweep:
    combos = [dict(r) for r in sweep["runs"]]
  else:
    keys = list(sweep["grid"])
    combos = [dict(zip(keys, values)) for values in
              itertools.product(*(sweep["grid"][k] for k in keys))]
  runs = []
  for args in combos:
    name = run_name({k: v for k, v in args.items() if k != "tokenizer"} or args)
    full = dict(sweep.get("fixed", {}), **args)
    full = {k: str(v).replace("{root}", root) for k, v in full.items()}
    config_arg = ",".join([f"{k}={v}" for k, v in full.items()] +
                          ([extra] if extra else []))
    workdir = os.path.join(root, name)
    command = [sys.executable, "-m", "vitok_jax.train",
               f"--config={sweep['config']}:{config_arg}",
               f"--workdir={workdir}"]
    runs.append(dict(name=name, args=args, config_arg=config_arg,
                     workdir=workdir, command=command))
  return runs


def is_finished(run: dict, config_file: str) -> bool:
  """The run's newest checkpoint is its config's total_steps."""
  ckpts = os.path.join(run["workdir"], "checkpoints")
  steps = [int(s) for s in os.listdir(ckpts) if s.isdigit()] if os.path.isdir(
      ckpts) else []
  if not steps:
    return False
  sys.path.insert(0, str(ROOT))
  spec = importlib.util.spec_from_file_location("cfg", ROOT / config_file)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return max(steps) >= mod.get_config(run["config_arg"]).total_steps


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--sweep", help="a sweep of configs/sweeps.py")
  src.add_argument("--config", help="a config file, with --grid")
  ap.add_argument("--grid", help='e.g. "p=8,16,32 x c=4,8,16"')
  ap.add_argument("--root", required=True, help="one workdir per run below it")
  ap.add_argument("--run", action="store_true", help="run here, in sequence")
  ap.add_argument("--extra", default="", help="appended to every run's "
                  "config arguments, e.g. runlocal")
  args = ap.parse_args(argv)
  if args.config:
    if not args.grid:
      ap.error("--config needs --grid")
    sweep = dict(config=args.config, grid=parse_grid(args.grid))
    args.sweep = os.path.basename(args.config)
  else:
    sweeps = load_sweeps()
    if args.sweep not in sweeps:
      ap.error(f"--sweep={args.sweep!r}: known sweeps {sorted(sweeps)}")
    sweep = sweeps[args.sweep]
  runs = expand(sweep, args.root, args.extra)
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, "sweep.json"), "w") as f:
    json.dump(dict(sweep=args.sweep, config=sweep["config"], extra=args.extra,
                   runs=[{k: r[k] for k in ("name", "args", "config_arg",
                                            "workdir")} for r in runs]),
              f, indent=2)
  if not args.run:
    for r in runs:
      print(" ".join(r["command"][1:]).replace("-m ", "python -m ", 1))
    return 0
  failed = []
  for i, r in enumerate(runs, 1):
    if is_finished(r, sweep["config"]):
      print(f"[{i}/{len(runs)}] {r['name']}: finished, skipped", flush=True)
      continue
    print(f"[{i}/{len(runs)}] {r['name']}: running", flush=True)
    with open(os.path.join(args.root, f"{r['name']}.log"), "a") as log:
      rc = subprocess.call(r["command"], cwd=ROOT, stdout=log,
                           stderr=subprocess.STDOUT)
    if rc:
      failed.append(r["name"])
      print(f"[{i}/{len(runs)}] {r['name']}: FAILED (exit {rc}); see "
            f"{args.root}/{r['name']}.log", flush=True)
  if failed:
    print(f"{len(failed)} of {len(runs)} runs failed: {failed}")
    return 1
  print(f"all {len(runs)} runs finished in {args.root}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
