r"""Exports a ViTok or DiT checkpoint to PyTorch (safetensors + JSON config).

  python tools/export_pytorch.py --workdir=/runs/s2 [--step=N] [--ema] \
      --out=s_b16.safetensors [--verify]
  python tools/export_pytorch.py --workdir=/runs/dit --ema --out=dit.safetensors --verify

A DiT run (config.trainer "dit") exports the DiT with the run's latent
statistics and RoPE grid (its tokenizer's workdir must still exist); load it
with `vitok_jax.torch.load_dit(out)` and sample with
`vitok_jax.torch.dit.ddim_sample`. --verify then compares the JAX and torch
DiT's noise predictions on random latents, timesteps and classes.

Reads the Orbax checkpoint of a training run (its params, or with --ema the
EMA params) and the config saved with it, maps names and layouts, and writes
<out> plus <out minus extension>.json. Load it with
`vitok_jax.torch.load(out)`. --verify runs the JAX model and the exported
torch model on the embedded photos (centre crops at the model's resolution)
and prints, as its last line, `max relative error: <value>`.
"""
import argparse
import sys

import jax
import ml_collections
import numpy as np

from vitok_jax.data import input_pipeline
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax import export
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.io import fileio
from vitok_jax.models import dit as dit_lib
from vitok_jax.models import vitok
from vitok_jax.trainers import dit
from vitok_jax.trainers import tokenizer


def read_run(workdir: str, step=None, ema: bool = False):
  """-> (params tree, training config, step) of a workdir's checkpoint."""
  folder, step = ckpt_lib.step_dir(workdir, step)
  state = ckpt_lib.load_state_tree(folder)
  key = "params_ema" if ema else "params"
  if key not in state:
    raise ValueError(f"Checkpoint {step} of {workdir} has no {key!r} (the run "
                     "had no EMA)" if ema else f"Checkpoint has no {key!r}")
  config = ml_collections.ConfigDict(
      fileio.read_json(fileio.join(folder, "config", "metadata")))
  if config.get("trainer") == "dit":
    return state[key], dit.resolve_config(config), step
  return state[key], tokenizer.resolve_config(config), step


def verify_dit(params, model, out: str, num_tokens: int, grid) -> float:
  """Max relative error of the torch DiT's eps vs ours."""
  import torch  # pylint: disable=g-import-not-at-top
  import vitok_jax.torch as vt  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, num_tokens, model.in_channels)).astype(np.float32)
  t = np.array([0, 250, 500, 999], np.int32)
  y = np.array([0, 1 % model.num_classes, model.num_classes, 0], np.int32)
  ours = np.asarray(jax.jit(model.apply, static_argnums=4)(
      {"params": params}, x, t, y, tuple(grid) if grid else None))
  tmodel, _ = vt.load_dit(out)
  with torch.no_grad():
    theirs = tmodel(torch.from_numpy(x), torch.from_numpy(t).long(),
                    torch.from_numpy(y).long()).numpy()
  return float(np.abs(ours - theirs).max() / np.abs(ours).max())


def export_dit_run(workdir, params, config, step, ema, out, do_verify):
  codec = codec_lib.load_pinned(config, workdir)
  model = dit_lib.from_config(config.model, codec.channels,
                              config.num_classes).clone(dtype=np.float32)
  export.export_dit(params, model, out, dit.load_run_stats(workdir, step),
                    grid=codec.rope_grid,
                    extra=dict(step=step, ema=ema, workdir=workdir,
                               diffusion=dict(config.diffusion),
                               sampling=dict(config.sampling),
                               tokenizer=codec.workdir,
                               tokenizer_step=codec.step, res=codec.res,
                               num_tokens=codec.num_tokens))
  print(f"exported DiT step {step} ({'EMA' if ema else 'raw'} params) to "
        f"{out}")
  if do_verify:
    return verify_dit(params, model, out, codec.num_tokens, codec.rope_grid)
  return None


def verify(params, model, out: str, res: int, frames: int = 1) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import vitok_jax.torch as vt  # pylint: disable=g-import-not-at-top
  cfg = input_pipeline.default_config(data="embedded", res=res)
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
  if config.trainer == "dit":
    err = export_dit_run(args.workdir, params, config, step, args.ema,
                         args.out, args.verify)
  else:
    model = vitok.from_config(config.model).clone(dtype=np.float32)
    export.export(params, model, args.out,
                  extra=dict(step=step, ema=args.ema, workdir=args.workdir,
                             res=config.input.res, frames=config.input.frames))
    print(f"exported step {step} ({'EMA' if args.ema else 'raw'} params) to "
          f"{args.out}")
    err = verify(params, model, args.out, config.input.res,
                 config.input.frames) if args.verify else None
  if args.verify:
    print(f"max relative error: {err:.3e}")
    sys.stdout.flush()
    if not err <= args.tolerance:  # NaN fails too
      raise SystemExit(f"--verify failed: max relative error {err:.3e} is "
                       f"NaN or above --tolerance {args.tolerance:g}")
    return err
  return None


if __name__ == "__main__":
  main()
