"""PyTorch modules that exported vitok_jax checkpoints load into.

    import vitok_jax.torch as vt
    model = vt.load("s_b16.safetensors")          # + s_b16.json beside it
    recon = model(images)                          # [B, H, W, 3] in [-1, 1]

Using this subpackage needs torch and safetensors only, never jax. Importing
it needs neither: the torch modules (`dit`, `vitok`, `DiT`, `ViTok`) load on
first use, so that the JAX side (vitok_jax/export.py writes the files; its
`convert` is numpy) runs in an install without torch.
"""
import importlib

from vitok_jax.io import fileio

_LAZY = {"dit": ("vitok_jax.torch.dit", None),
         "vitok": ("vitok_jax.torch.vitok", None),
         "DiT": ("vitok_jax.torch.dit", "DiT"),
         "ViTok": ("vitok_jax.torch.vitok", "ViTok")}


def __getattr__(name):  # PEP 562: the torch modules on first use
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attr = _LAZY[name]
  value = importlib.import_module(module)
  return getattr(value, attr) if attr else value


def config_path(weights_path: str) -> str:
  """<name>.json beside <name>.safetensors (local or gs://)."""
  name = fileio.basename(weights_path)
  cut = len(weights_path) - len(name) + name.rfind(".") if "." in name else (
      len(weights_path))
  return weights_path[:cut] + ".json"


def _load_weights(path: str, map_location: str):
  from safetensors.torch import load  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  state = load(fileio.read_bytes(path))
  return {k: v.to(torch.device(map_location)) for k, v in state.items()}


def load(path: str, map_location: str = "cpu") -> "ViTok":
  """Rebuilds the module from <path> (safetensors) and its JSON config."""
  cfg_file = config_path(path)
  if not fileio.exists(path):
    raise FileNotFoundError(f"No exported weights at {path!r} (make them with "
                            "tools/export_pytorch.py)")
  if not fileio.exists(cfg_file):
    raise FileNotFoundError(f"The model config {cfg_file!r} that "
                            "tools/export_pytorch.py writes beside the weights "
                            "is missing")
  cfg = fileio.read_json(cfg_file)
  if cfg.get("kind", "vitok") != "vitok":
    raise ValueError(f"{path} is an exported {cfg['kind']!r}, not a ViTok; "
                     "use vitok_jax.torch.load_dit")
  from vitok_jax.torch.vitok import ViTok  # pylint: disable=g-import-not-at-top
  model = ViTok(**cfg["model"])
  state = _load_weights(path, map_location)
  load_state_dict_checked(model, state, path)
  return model.eval()


def load_dit(path: str, map_location: str = "cpu"):
  """-> (DiT module, {"mean", "std"} latent statistics as tensors) from an
  exported DiT run (tools/export_pytorch.py on a DiT workdir)."""
  cfg_file = config_path(path)
  for f in (path, cfg_file):
    if not fileio.exists(f):
      raise FileNotFoundError(f"{f!r} is missing (make it with "
                              "tools/export_pytorch.py --workdir=<DiT run>)")
  cfg = fileio.read_json(cfg_file)
  if cfg.get("kind") != "dit":
    raise ValueError(f"{path} is not an exported DiT (kind "
                     f"{cfg.get('kind', 'vitok')!r}); use vitok_jax.torch.load")
  from vitok_jax.torch.dit import DiT  # pylint: disable=g-import-not-at-top
  model = DiT(**cfg["model"])
  state = _load_weights(path, map_location)
  load_state_dict_checked(model, state, path)
  import torch  # pylint: disable=g-import-not-at-top
  stats = {k: torch.tensor(cfg["latent_stats"][k]) for k in ("mean", "std")}
  return model.eval(), stats


def load_state_dict_checked(model, state: dict, source: str = "state dict"):
  """load_state_dict that names missing, surplus and mis-shaped parameters."""
  expected = model.state_dict()
  missing = sorted(set(expected) - set(state))
  surplus = sorted(set(state) - set(expected))
  if missing or surplus:
    raise ValueError(f"{source} does not match the model: missing parameters "
                     f"{missing}, surplus parameters {surplus}")
  bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
         for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
  if bad:
    raise ValueError(f"{source}: parameters with the wrong shape: {bad}")
  model.load_state_dict(state, strict=True)
