"""The evaluator interface (big_vision style).

`config.evals.<name> = dict(type="reconstruction", log_steps=..., ...)`; each
evaluator is built once with the model and the mesh and `run(params)` yields
(metric name, value) pairs. The training loop calls it every `log_steps`;
`python -m vitok_jax.eval` calls it once on a restored checkpoint.
"""
from typing import Any, Dict, Iterator, Tuple

import numpy as np

from vitok_jax.pp import ops


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
  frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                 duration=int(1000 / fps))


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


def build(name: str, eval_config, **kw) -> Any:
  """Instantiates config.evals[name] by its `type`."""
  kind = eval_config.get("type")
  if kind == "reconstruction":
    from vitok_jax.evaluators import reconstruction  # pylint: disable=g-import-not-at-top
    return reconstruction.Evaluator(name, eval_config, **kw)
  raise ValueError(f"config.evals.{name}.type={kind!r}: known evaluator types: "
                   "['reconstruction']")


def build_all(evals_config, **kw) -> Dict[str, Any]:
  return {name: build(name, cfg, **kw) for name, cfg in evals_config.items()}


Results = Iterator[Tuple[str, float]]
