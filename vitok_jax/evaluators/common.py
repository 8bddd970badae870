"""The evaluator registry and interface (big_vision style).

`config.evals.<name> = dict(type="reconstruction", log_steps=..., ...)`: the
module `vitok_jax.evaluators.<type>` is the evaluator. It is built once with
the predict functions the trainer hands it (the tokenizer's `reconstruct`,
the DiT's `sample` and `num_classes`; each module's NEEDS names the ones it
uses) and the mesh, and `run(params, final)` yields (name, value) pairs
(final: the last evaluation of a run, or the eval job): scalars,
and pictures (uint8 [H, W, 3]) and clips ([2, k, T, H, W, 3]: originals,
reconstructions) that come back with them. The training loop calls it every
`log_steps`; `python -m vitok_jax.eval` calls it once on a restored
checkpoint, for either trainer, through the same code.
"""
import importlib
import io
import logging
from typing import Any, Dict, Iterator, Tuple

import jax
import ml_collections
import numpy as np

from vitok_jax import config_utils
from vitok_jax.data import input_pipeline
from vitok_jax.data import preprocess as ops
from vitok_jax.io import fileio
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh
import vitok_jax.utils as u

TYPES = ("reconstruction", "reconstruction_native", "generation",
         "generation_probe")


def comparison_picture(originals, recons, max_frames: int = 8) -> np.ndarray:
  """Originals on top, reconstructions below. Videos [B, T, H, W, 3]: for
  each clip, a row of its frames (up to max_frames, evenly spaced) over the
  row of their reconstructions."""
  originals, recons = np.asarray(originals), np.asarray(recons)
  if originals.ndim == 5:
    t = originals.shape[1]
    idx = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    rows = []
    for o, r in zip(originals, recons):
      rows += [np.concatenate(list(ops.to_uint8(o[idx])), axis=1),
               np.concatenate(list(ops.to_uint8(r[idx])), axis=1)]
    return np.concatenate(rows, axis=0)
  top = np.concatenate(list(ops.to_uint8(originals)), axis=1)
  bottom = np.concatenate(list(ops.to_uint8(recons)), axis=1)
  return np.concatenate([top, bottom], axis=0)


def save_comparison_gif(path: str, originals, recons, fps: float = 8.0) -> None:
  """An animated GIF of clips [B, T, H, W, 3]: originals on top,
  reconstructions below, clips side by side, one frame per time step."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  o, r = ops.to_uint8(np.asarray(originals)), ops.to_uint8(np.asarray(recons))
  frames = [Image.fromarray(np.concatenate([np.concatenate(list(o[:, k]), 1),
                                            np.concatenate(list(r[:, k]), 1)],
                                           0)) for k in range(o.shape[1])]
  buf = io.BytesIO()
  frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                 loop=0, duration=int(1000 / fps))
  fileio.write_atomic(path, buf.getvalue())


def grid_picture(images, cols: int = 8) -> np.ndarray:
  """[N, H, W, 3] in [-1, 1] (first frame of videos) -> one uint8 grid."""
  images = np.asarray(images)
  if images.ndim == 5:
    images = images[:, 0]
  images = ops.to_uint8(images)
  cols = min(cols, len(images))
  rows = -(-len(images) // cols)
  pad = rows * cols - len(images)
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:],
                                            np.uint8)])
  return np.concatenate([np.concatenate(list(images[r * cols:(r + 1) * cols]),
                                        axis=1) for r in range(rows)], axis=0)


def _module(name: str, kind):
  if kind not in TYPES:
    raise ValueError(f"config.evals.{name}.type={kind!r}: known evaluator "
                     f"types: {list(TYPES)}")
  return importlib.import_module(f"vitok_jax.evaluators.{kind}")


def data_fields() -> ml_collections.ConfigDict:
  """An evaluator's `data`: the keys of config.input it may set; unset ones
  ("" or a typed placeholder) are the training input's."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(dict(
      data="", data_dir="", image_key="", res=placeholder(int),
      frames=placeholder(int), fps=placeholder(float),
      src_fps=placeholder(float), video_key="", file_list="",
      clips_per_video=placeholder(int), num_workers=placeholder(int),
      video_filter=""))


def config(kind: str, **fields) -> ml_collections.ConfigDict:
  """config.evals.<name> of type `kind`: its module's default_config() with
  `fields` set (unknown fields fail, naming them). Configs build their
  evaluators with this, so every field exists and can be set from the
  command line."""
  return config_utils.with_defaults(dict(fields, type=kind),
                                    _module("?", kind).default_config(),
                                    prefix=f"config.evals.<{kind}>")


def resolve_all(evals_config) -> ml_collections.ConfigDict:
  """Every entry of config.evals completed with its type's defaults."""
  out = ml_collections.ConfigDict()
  for name in evals_config.keys():
    entry = evals_config[name]
    module = _module(name, entry.get("type"))
    out[name] = complete(name, entry, module.default_config())
  return out


def complete(name: str, eval_config, defaults) -> ml_collections.ConfigDict:
  """An evaluator's config with every field: `defaults` (its module's
  default_config()) under the given ones; an unknown field fails."""
  return config_utils.with_defaults(eval_config, defaults,
                                    prefix=f"config.evals.{name}")


def data_config(input_config, data) -> ml_collections.ConfigDict:
  """The data an evaluator reads: the training input's keys, overridden by
  the set ones of its `data` (data_fields)."""
  out = input_pipeline.default_config()
  given = dict(input_config or {})
  for k in data_fields().keys():
    if given.get(k) not in (None, ""):
      out[k] = given[k]
  for k, v in dict(data or {}).items():
    if v not in (None, ""):
      out[k] = v
  return out


def build(name: str, eval_config, *, predict_fns: Dict[str, Any], mesh,
          input_config=None) -> Any:
  """Instantiates config.evals[name] by its `type` (the Evaluator fills in
  missing fields with the type's defaults: `complete`)."""
  kind = eval_config.get("type")
  module = _module(name, kind)
  missing = sorted(set(module.NEEDS) - set(predict_fns))
  if missing:
    raise ValueError(f"config.evals.{name}.type={kind!r} needs the predict "
                     f"functions {missing}; this trainer provides "
                     f"{sorted(predict_fns)}")
  return module.Evaluator(name, eval_config, predict_fns=predict_fns,
                          mesh=mesh, input_config=input_config)


def build_all(evals_config, **kw) -> Dict[str, Any]:
  return {name: build(name, cfg, **kw) for name, cfg in evals_config.items()}


Results = Iterator[Tuple[str, Any]]


def load_inception(path, mesh, what: str):
  """The FID Inception params replicated over the mesh, or None (with a
  warning that `what` is skipped) when the weights file is missing."""
  from vitok_jax.models import inception  # pylint: disable=g-import-not-at-top
  try:
    return jax.device_put(inception.load(path), sh.replicated(mesh))
  except FileNotFoundError as e:
    logging.warning("%s are SKIPPED: %s", what, e)
    return None


def load_i3d(path: str, mesh, what: str):
  """The FVD I3D params replicated over the mesh: from tools/convert_i3d.py's
  .npz, or "random" (tests: every output flags it); None with a warning
  that `what` (rFVD, gFVD) is skipped when the weights file is missing.

  Process 0 logs the file's provenance (source detector, its sha256, the
  conversion's check) in one line, so that an FVD in a log can be traced to
  the exact I3D it used; files from before the tool stored it say so.
  """
  from vitok_jax.models import i3d  # pylint: disable=g-import-not-at-top
  if path == "random":
    logging.warning("%s uses a RANDOM I3D: not comparable to any published "
                    "number", what)
    params = u.random_frozen_params(i3d.abstract_params())
  else:
    try:
      params, record = i3d.load(path, with_provenance=True)
    except FileNotFoundError as e:
      logging.warning("%s is SKIPPED: %s", what, e)
      return None
    if multihost.is_main():
      logging.info("%s: I3D %s %s", what, path,
                   i3d.describe_provenance(record))
  return jax.device_put(params, sh.replicated(mesh))


def split_results(results: dict):
  """-> (scalars, pictures, clips) of an evaluator's results."""
  scalars, pictures, clips = {}, {}, {}
  for k, v in results.items():
    if np.ndim(v) == 0:
      scalars[k] = float(v)
    elif np.ndim(v) == 3:
      pictures[k] = v
    else:
      clips[k] = v
  return scalars, pictures, clips


def write_results(writer, step: int, results: dict, out_dir=None,
                  fps: float = 8.0) -> dict:
  """Scalars and pictures to the writer (TensorBoard; process 0 only); with
  out_dir, process 0 also saves <name>_<step>.png and, for clips, an
  animated <name>_<step>.gif. Returns the scalars."""
  scalars, pictures, clips = split_results(results)
  writer.write_scalars(step, scalars)
  writer.write_images(step, pictures)
  if out_dir and multihost.is_main():
    for k, pic in pictures.items():
      fileio.save_image(fileio.join(
          out_dir, f"{k.replace('/', '_')}_{step}.png"), pic)
    for k, (originals, recons) in clips.items():
      base = k.replace("/", "_").replace("_clips", "")
      save_comparison_gif(fileio.join(out_dir, f"{base}_{step}.gif"),
                          originals, recons, fps=fps)
  return scalars
