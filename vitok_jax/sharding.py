"""Device mesh and the shardings of the train state and the batch.

The mesh comes from the config as a list of (axis name, size) pairs, one size
may be -1 (= the rest), e.g. [("data", -1), ("fsdp", 1)] for pure data
parallelism or [("data", 2), ("fsdp", -1)] for FSDP within groups. Batches are
split over every axis (ZeRO-style: FSDP shards also hold distinct examples);
parameters and optimizer state are replicated or FSDP-sharded by name pattern.
"""
import re
from typing import Any, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import vitok_jax.utils as u


def make_mesh(axes: Sequence[Tuple[str, int]], devices=None) -> Mesh:
  """Mesh over all (or the given) devices from [(name, size), ...]."""
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
  try:  # topology-aware order on real hardware
    dev = mesh_utils.create_device_mesh(
        sizes, devices=list(devices.flat))
  except Exception:  # pylint: disable=broad-except
    dev = devices.reshape(sizes)
  return Mesh(dev, names)


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
