"""Device mesh and the shardings of the train state and the batch.

The mesh comes from the config as a list of (axis name, size) pairs, one size
may be -1 (= the rest), e.g. [("data", -1), ("fsdp", 1)] for pure data
parallelism or [("data", 2), ("fsdp", -1)] for FSDP within groups. Batches are
split over every axis (ZeRO-style: FSDP shards also hold distinct examples);
parameters and optimizer state are replicated or FSDP-sharded by name pattern.

Multi-slice TPU jobs (several TPU slices joined by the data-centre network,
DCN, which is far slower than the chips' own interconnect, ICI) name an axis
"slice": [("slice", 2), ("data", -1), ("fsdp", 1)]. Its size must be the
number of slices the devices span (their `slice_index`; devices without one,
CPUs and GPUs and single slices, are one slice), and the mesh is laid out by
mesh_utils.create_hybrid_device_mesh: the slice axis runs across slices over
DCN, every other axis within a slice over ICI. Batches are still split over
every axis (slice included: each slice trains on its own examples, and only
the gradient all-reduce crosses DCN), and FSDP shards over the "fsdp" axis,
which stays inside a slice. TPU devices that span several slices need the
axis: without it a mesh would mix slices arbitrarily.
"""
import functools
import re
from typing import Any, Callable, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import vitok_jax.utils as u


SLICE_AXIS = "slice"


def num_slices(devices) -> int:
  """How many slices `devices` span (devices without a slice_index: one)."""
  return len({getattr(d, "slice_index", 0) or 0 for d in np.ravel(devices)})


def parse_mesh(text: str) -> Tuple[Tuple[str, int], ...]:
  """A mesh as the command line writes it, in either spelling: the config's
  "(('data', -1), ('fsdp', 1))" or the short "data:-1,fsdp:1" (a missing
  size is -1) -> (("data", -1), ("fsdp", 1))."""
  text = str(text).strip()
  if text.startswith(("(", "[")):
    import ast  # pylint: disable=g-import-not-at-top
    try:
      axes = ast.literal_eval(text)
      return tuple((str(n), int(s)) for n, s in axes)
    except (ValueError, SyntaxError, TypeError) as e:
      raise ValueError(f"mesh {text!r}: expected (('data', -1), ('fsdp', 1)) "
                       "or data:-1,fsdp:1") from e
  axes = []
  for part in text.split(","):
    name, _, size = part.partition(":")
    try:
      if not name.strip().isidentifier():
        raise ValueError(name)
      axes.append((name.strip(), int(size) if size.strip() else -1))
    except ValueError as e:
      raise ValueError(f"mesh {text!r}: {part!r} is not name:size (expected "
                       "data:-1,fsdp:1 or (('data', -1), ('fsdp', 1)))") from e
  return tuple(axes)


def make_mesh(axes: Sequence[Tuple[str, int]], devices=None) -> Mesh:
  """Mesh over all (or the given) devices from [(name, size), ...]; an axis
  named "slice" goes across TPU slices (module docstring)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  names = [str(a) for a, _ in axes]
  sizes = [int(s) for _, s in axes]
  n = devices.size
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may have size -1: {axes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"config.mesh {axes}: {n} devices are not divisible by "
                       f"the fixed axis sizes (product {known})")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"config.mesh {axes} needs {int(np.prod(sizes))} devices "
                     f"but {n} are available")
  slices = num_slices(devices)
  if SLICE_AXIS in names:
    i = names.index(SLICE_AXIS)
    if sizes[i] != slices:
      raise ValueError(
          f"config.mesh {tuple(axes)}: the {SLICE_AXIS!r} axis has size "
          f"{sizes[i]} but the {n} devices span {slices} slice(s); set it to "
          f"(\"{SLICE_AXIS}\", {slices})")
    if slices > 1:  # the slice axis over DCN, the others within a slice
      ici = [1 if j == i else s for j, s in enumerate(sizes)]
      dcn = [slices if j == i else 1 for j in range(len(sizes))]
      dev = mesh_utils.create_hybrid_device_mesh(ici, dcn,
                                                 devices=list(devices.flat))
      return Mesh(dev, names)
  elif slices > 1 and devices.flat[0].platform == "tpu":
    raise ValueError(
        f"config.mesh {tuple(axes)}: the {n} devices span {slices} slices; "
        f"add a (\"{SLICE_AXIS}\", {slices}) axis so that only the slice "
        "axis crosses the data-centre network")
  try:  # topology-aware order on real hardware
    dev = mesh_utils.create_device_mesh(
        sizes, devices=list(devices.flat))
  except Exception:  # pylint: disable=broad-except
    dev = devices.reshape(sizes)
  return Mesh(dev, names)


def traced_under(mesh: Mesh, fn: Callable) -> Callable:
  """`fn`, traced with `mesh` as JAX's context mesh (for jax.jit(...)).

  What a jitted step computes does not change; but code that must know the
  mesh while it is traced can then see it: models/attention.py shard_maps
  the Pallas splash kernel over the batch axes and picks per platform from
  the mesh's devices (a CPU host compiling for a TPU topology ahead of time
  must pick for the TPU).
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return wrapped


def batch_axes(mesh: Mesh) -> Tuple[str, ...]:
  return tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, fsdp_size: int, min_size: int, axis: str) -> P:
  """Shard the largest dimension divisible by the FSDP size, if big enough."""
  if fsdp_size <= 1 or int(np.prod(shape)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[d] = axis
      return P(*spec)
  return P()


def infer_state_sharding(abstract_state: Any, mesh: Mesh, rules=(),
                         fsdp_axis: str = "fsdp", min_size: int = 2**18):
  """NamedSharding for every leaf of a train-state tree, by name pattern.

  `rules` is a list of (regex, "replicate" | "fsdp") matched in order against
  the '/'-joined leaf path (e.g. "opt/0/mu/encoder/block_0/mlp/up/kernel");
  unmatched leaves use "fsdp" (which falls back to replicate for small leaves
  or when the mesh has no FSDP axis).
  """
  fsdp_size = mesh.shape.get(fsdp_axis, 1)
  compiled = [(re.compile(pat), kind) for pat, kind in rules]

  def spec_for(path, leaf):
    shape = getattr(leaf, "shape", ())
    kind = "fsdp"
    for pat, k in compiled:
      if pat.search(path):
        kind = k
        break
    if kind == "replicate" or not shape:
      return NamedSharding(mesh, P())
    if kind != "fsdp":
      raise ValueError(f"Unknown sharding rule {kind!r} for {path!r}: use "
                       "'replicate' or 'fsdp'")
    return NamedSharding(mesh, _fsdp_spec(shape, fsdp_size, min_size, fsdp_axis))

  return u.tree_map_with_names(spec_for, abstract_state)


def state_sharding_from_config(abstract_state, mesh: Mesh, sharding_config):
  """infer_state_sharding with config.sharding's rules and FSDP threshold."""
  return infer_state_sharding(
      abstract_state, mesh, [tuple(r) for r in sharding_config.rules],
      min_size=sharding_config.fsdp_min_size)


def with_sharding(abstract_tree, shardings):
  """ShapeDtypeStructs that carry their target sharding (for restores)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)


def put_global_batch(local_batch, sharding: NamedSharding):
  """This process's rows -> one global jax.Array sharded over the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
