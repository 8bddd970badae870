"""Small tree and host helpers used across vitok_jax."""
import re
from typing import Any, Callable

import jax
import numpy as np


def path_name(path) -> str:
  """A jax.tree_util key path -> 'a/b/0/c'."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def tree_map_with_names(fn: Callable[[str, Any], Any], tree, *rest):
  return jax.tree_util.tree_map_with_path(
      lambda p, x, *r: fn(path_name(p), x, *r), tree, *rest)


def tree_flatten_with_names(tree):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_name(p), x) for p, x in leaves]


def make_mask(tree, patterns) -> Any:
  """A bool tree: True where the leaf's name matches any regex in patterns."""
  compiled = [re.compile(p) for p in patterns]
  return tree_map_with_names(
      lambda n, _: any(c.match(n) for c in compiled), tree)


def l2_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jax.numpy.zeros(())
  return jax.numpy.sqrt(sum(jax.numpy.vdot(x, x).real for x in leaves))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def check_finite(measurements: dict, step: int, first_bad_step=None,
                 note: str = "") -> None:
  """Raises on NaN/Inf instead of training on garbage, naming the non-finite
  terms and the first bad step when the caller knows it (the host loop reads
  per-step flags in batches)."""
  terms = {k: float(np.max(np.asarray(v))) for k, v in measurements.items()
           if not np.all(np.isfinite(v))}
  if not terms and first_bad_step is None:
    return
  first = step if first_bad_step is None else first_bad_step
  raise FloatingPointError(
      f"Non-finite training state: first at step {first} (checked at step "
      f"{step}; non-finite now: {terms}). {note}".rstrip())


class _QuietLibraries:
  """Drops INFO chatter of Orbax/grain (a dozen lines per save) from the log."""
  NOISY = ("/orbax/", "/grain/")

  def filter(self, record):
    return record.levelno >= 30 or not any(
        n in record.pathname for n in self.NOISY)


def quiet_library_logs():
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  for handler in logging.getLogger().handlers + [
      absl_logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())


def save_npz_tree(path: str, tree) -> None:
  """A nested dict of arrays -> .npz with '/'-joined keys."""
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  fileio.save_npz(path, **{n: np.asarray(x)
                           for n, x in tree_flatten_with_names(tree)})


def load_npz_tree(path: str) -> dict:
  """.npz with '/'-joined keys -> nested dict of numpy arrays."""
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  tree = {}
  for key, value in fileio.load_npz(path).items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def load_weights_npz(path, abstract_params, what: str, convert_tool: str,
                     how: str, note: str = "", metadata_key: str = ""):
  """A frozen network's params from the .npz its convert tool writes,
  checked name by name and shape by shape against `abstract_params`.

  A missing file names the command that makes it (`how`); a file of other
  names or shapes says to rebuild it with `convert_tool`. With
  `metadata_key`, that entry (a JSON string the tool stored beside the
  params, e.g. I3D's provenance) is set aside: returns (params, the decoded
  JSON, or None for a file without it).
  """
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  if not path or not fileio.exists(fileio.abspath(path)):
    raise FileNotFoundError(f"{what} weights file {path!r} does not exist; "
                            f"create it with `{how}`{note}")
  tree = load_npz_tree(fileio.abspath(path))
  metadata = tree.pop(metadata_key, None) if metadata_key else None
  params = jax.tree.map(jax.numpy.asarray, tree)
  want = jax.tree.map(lambda a: a.shape, abstract_params)
  got = jax.tree.map(lambda a: a.shape, params)
  if want != got:
    raise ValueError(f"{what} weights in {path!r} do not have the expected "
                     f"names/shapes; rebuild them with {convert_tool}")
  if not metadata_key:
    return params
  import json  # pylint: disable=g-import-not-at-top
  return params, None if metadata is None else json.loads(str(metadata))


def random_frozen_params(abstract_params, seed: int = 0, gains=None) -> dict:
  """Deterministic random weights for a frozen network (tests, and the
  "random" I3D/Inception of runs without the converted files: flagged in
  their outputs), drawn in numpy: He-scaled kernels (times gains[module])
  and identity batch norms keep the features at the scale of the input
  through the whole depth (flax's lecun init and ReLUs shrink them to
  ~1e-3, where IS is 1 + 1e-9 and every distance is ~0), and nothing is
  jitted (jitting a network's init costs seconds of compile per process)."""
  rng, gains = np.random.default_rng(seed), gains or {}

  def draw(where, leaf):
    name, shape = where[-1].key, leaf.shape
    if name == "kernel":
      std = np.sqrt(2 / np.prod(shape[:-1])) * gains.get(where[-2].key, 1.0)
      return rng.normal(0, std, shape).astype(np.float32)
    return (np.ones if name in ("scale", "var") else np.zeros)(shape,
                                                             np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract_params)
