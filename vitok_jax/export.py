"""Export of ViTok and DiT params to PyTorch (safetensors + JSON config).

The JAX side of vitok_jax.torch: maps the Flax tree to the torch module's
state dict (vitok_jax/torch/convert.py), checks that it is exactly what the
module expects, and writes <out>.safetensors and <out>.json.
"""
import dataclasses

import numpy as np

from vitok_jax.models import vitok
from vitok_jax.torch import config_path as vt_config_path
from vitok_jax.torch import convert

from vitok_jax.io import fileio

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
