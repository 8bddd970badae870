r"""Exports a ViTok checkpoint to PyTorch (safetensors + JSON config).

  python tools/export_pytorch.py --workdir=/runs/s2 [--step=N] [--ema] \
      --out=s_b16.safetensors [--verify]

Reads the Orbax checkpoint of a training run (its params, or with --ema the
EMA params) and the config saved with it, maps names and layouts, and writes
<out> plus <out minus extension>.json. Load it with
`vitok_jax.torch.load(out)`. --verify runs the JAX model and the exported
torch model on the embedded photos (centre crops at the model's resolution)
and prints, as its last line, `max relative error: <value>`.
"""
import argparse
import json
import os
import sys

import jax
import ml_collections
import numpy as np

from vitok_jax import checkpoint as ckpt_lib
from vitok_jax import export
from vitok_jax import input_pipeline
from vitok_jax.trainers import tokenizer


def read_run(workdir: str, step=None, ema: bool = False):
  """-> (params tree, training config, step) of a workdir's checkpoint."""
  folder, step = ckpt_lib.step_dir(workdir, step)
  state = ckpt_lib.load_state_tree(folder)
  key = "params_ema" if ema else "params"
  if key not in state:
    raise ValueError(f"Checkpoint {step} of {workdir} has no {key!r} (the run "
                     "had no EMA)" if ema else f"Checkpoint has no {key!r}")
  cfg_file = os.path.join(folder, "config", "metadata")
  with open(cfg_file) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return state[key], tokenizer.resolve_config(config), step


def verify(params, model, out: str, res: int, frames: int = 1) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import vitok_jax.torch as vt  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(data="embedded", res=res))
  images = next(iter(input_pipeline.make_eval_dataset(cfg, 4)))["image"]
  if frames > 1:
    images = np.repeat(images[:, None], frames, axis=1)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images)[0])
  tmodel = vt.load(out)
  with torch.no_grad():
    theirs = tmodel(torch.from_numpy(images)).numpy()
  return float(np.abs(ours - theirs).max() / np.abs(ours).max())


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--step", type=int, default=None)
  ap.add_argument("--ema", action="store_true")
  ap.add_argument("--out", required=True)
  ap.add_argument("--verify", action="store_true")
  ap.add_argument("--tolerance", type=float, default=1e-4,
                  help="--verify fails above this max relative error")
  args = ap.parse_args(argv)
  params, config, step = read_run(args.workdir, args.step, args.ema)
  model = tokenizer.build_model(config.model).clone(dtype=np.float32)
  export.export(params, model, args.out,
                extra=dict(step=step, ema=args.ema, workdir=args.workdir,
                           res=config.input.res, frames=config.input.frames))
  print(f"exported step {step} ({'EMA' if args.ema else 'raw'} params) to "
        f"{args.out}")
  if args.verify:
    err = verify(params, model, args.out, config.input.res, config.input.frames)
    print(f"max relative error: {err:.3e}")
    sys.stdout.flush()
    if not err <= args.tolerance:  # NaN fails too
      raise SystemExit(f"--verify failed: max relative error {err:.3e} is "
                       f"NaN or above --tolerance {args.tolerance:g}")
    return err
  return None


if __name__ == "__main__":
  main()
