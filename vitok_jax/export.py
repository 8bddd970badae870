"""Export of ViTok and DiT params to PyTorch (safetensors + JSON config).

The JAX side of vitok_jax.torch: maps the Flax tree to the torch module's
state dict (vitok_jax/torch/convert.py), checks that it is exactly what the
module expects, and writes <out>.safetensors and <out>.json. As a program
(`vitok-export`, `python -m vitok_jax.export`, tools/export_pytorch.py):

  vitok-export --workdir=/runs/s2 [--step=N] [--ema] \
      --out=s_b16.safetensors [--verify]
  vitok-export --workdir=/runs/dit --ema --out=dit.safetensors --verify

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
import dataclasses
import sys

import jax
import numpy as np

from vitok_jax import cli
from vitok_jax.data import input_pipeline
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.io import fileio
from vitok_jax.models import dit as dit_lib
from vitok_jax.models import vitok
from vitok_jax.torch import config_path as vt_config_path
from vitok_jax.torch import convert
from vitok_jax.trainers import dit
from vitok_jax.trainers import tokenizer

USAGE = __doc__

_JAX_ONLY = {"parent", "name", "dtype", "param_dtype", "stream_dtype", "remat",
             "attn_impl"}


def model_config(model: vitok.Model, params) -> dict:
  """The torch module's constructor arguments."""
  cfg = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
         if f.name not in _JAX_ONLY}
  cfg["mask_lengths"] = list(cfg["mask_lengths"])
  cfg["logvar_range"] = list(cfg["logvar_range"])
  if model.posemb == "learn":
    cfg["posemb_length"] = int(np.shape(params["enc_posemb"]["embedding"])[0])
  return cfg


def export(params, model: vitok.Model, out: str, extra: dict = None) -> dict:
  """Writes <out> (safetensors) and its JSON; returns the torch state dict."""
  state = convert.flax_to_torch(params)
  cfg = dict(model=model_config(model, params), **(extra or {}))
  _check_against_torch_module(state, cfg["model"])
  _write(out, state, cfg, {"format": "vitok_jax"})
  return state


def _write(out: str, state, cfg: dict, metadata: dict) -> None:
  """The safetensors weights and their JSON config, each written whole."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  fileio.write_atomic(out, save(state, metadata=metadata))
  fileio.write_json(vt_config_path(out), cfg)


def dit_model_config(model, grid=None) -> dict:
  """The torch DiT's constructor arguments (vitok_jax/torch/dit.py)."""
  return dict(width=model.width, depth=model.depth, num_heads=model.num_heads,
              in_channels=model.in_channels, num_classes=model.num_classes,
              mlp_dim=model.mlp_dim, rope_base=model.rope_base,
              posemb=model.posemb, grid=list(grid) if grid else None)


def export_dit(params, model, out: str, latent_stats, grid=None,
               extra: dict = None) -> dict:
  """A DiT and its run's latent statistics -> <out> + JSON (kind "dit")."""
  state = convert.flax_to_torch(params)
  cfg = dict(kind="dit", model=dit_model_config(model, grid),
             latent_stats=dict(mean=np.asarray(latent_stats.mean).tolist(),
                               std=np.asarray(latent_stats.std).tolist()),
             **(extra or {}))
  _check_against_torch_module(state, cfg["model"], kind="dit")
  _write(out, state, cfg, {"format": "vitok_jax", "kind": "dit"})
  return state


def _check_against_torch_module(state, model_cfg, kind: str = "vitok"):
  """Fails with the parameter names if the tree doesn't fit the module."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("torch") is None:
    return  # exporting without torch: the loader checks instead
  import torch  # pylint: disable=g-import-not-at-top
  import vitok_jax.torch as vt  # pylint: disable=g-import-not-at-top
  module = vt.DiT(**model_cfg) if kind == "dit" else vt.ViTok(**model_cfg)
  vt.load_state_dict_checked(
      module,
      {k: torch.from_numpy(v) for k, v in state.items()}, "The checkpoint")


def read_run(workdir: str, step=None, ema: bool = False, config=None):
  """-> (params tree, training config, step) of a workdir's checkpoint; the
  config is the one the run saved with it unless `config` overrides it."""
  folder, step = ckpt_lib.step_dir(workdir, step)
  state = ckpt_lib.load_state_tree(folder)
  key = "params_ema" if ema else "params"
  if key not in state:
    raise ValueError(f"Checkpoint {step} of {workdir} has no {key!r} (the run "
                     "had no EMA)" if ema else f"Checkpoint has no {key!r}")
  if config is None:
    config = cli.run_config(workdir, step, lambda name: (
        dit if name == "dit" else tokenizer).default_config())
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
  export_dit(params, model, out, dit.load_run_stats(workdir, step),
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
  """The export job (`vitok-export`, `python -m vitok_jax.export`,
  tools/export_pytorch.py); returns --verify's error (or None)."""
  ap = argparse.ArgumentParser(prog="vitok-export", description=USAGE,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True, help="The training run's "
                  "workdir (local or gs://).")
  ap.add_argument("--step", type=int, default=None,
                  help="Checkpoint step (default: the latest).")
  ap.add_argument("--ema", action="store_true",
                  help="Export the EMA params (the run must have them).")
  ap.add_argument("--out", required=True, help="The .safetensors file to "
                  "write (its .json config is written beside it).")
  ap.add_argument("--config", default=None, help="Overrides the config the "
                  "run saved with its checkpoint: a config file with its "
                  "':args' (default: the saved config).")
  ap.add_argument("--verify", action="store_true",
                  help="Compare the JAX and the torch model's outputs.")
  ap.add_argument("--tolerance", type=float, default=1e-4,
                  help="--verify fails above this max relative error")
  args = ap.parse_args(argv)
  config = cli.load_config_file(args.config) if args.config else None
  params, config, step = read_run(args.workdir, args.step, args.ema, config)
  if config.trainer == "dit":
    err = export_dit_run(args.workdir, params, config, step, args.ema,
                         args.out, args.verify)
  else:
    model = vitok.from_config(config.model).clone(dtype=np.float32)
    export(params, model, args.out,
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


def run():
  """The console script `vitok-export`."""
  try:
    main()
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f"vitok_jax.export failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
  run()
