"""Multi-process start-up through JAX's own runtime (`jax.distributed`).

A job calls `jax.distributed.initialize()` by itself wherever JAX's own
cluster detection (jax._src.clusters: SLURM, Open MPI, Kubernetes indexed
Jobs with jax[k8s], multi-host Cloud TPU slices on GCE and GKE) finds an
environment of more than one process, or when JAX_COORDINATOR_ADDRESS is
set; by hand, pass --coordinator_address/--num_processes/--process_id. A
single-process run (one host, a single-host TPU VM, one SLURM task) never
initialises it: there is nothing to coordinate, and initialising it would
wait for a coordinator.
"""
import os

from absl import flags
from absl import logging
import jax

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Force (True) or forbid (False) jax.distributed "
    "initialisation; default: auto-detect a multi-process launch.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of "
                             "process 0 for a hand-launched multi-process run.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")


def detected_cluster():
  """(name, number of processes) of the environment that JAX's own cluster
  detection finds, in its order (what jax.distributed.initialize() would
  use), or None. Private JAX API: a JAX without it detects nothing here and
  the environment variables of is_multiprocess_launch still apply."""
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    envs = list(clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return None
  for env in envs:
    if getattr(env, "opt_in_only_method", False):
      continue  # e.g. mpi4py: only when asked for by name
    try:
      if env.is_env_present():
        return env.__name__, int(env.get_process_count())
    except Exception as e:  # pylint: disable=broad-except
      # A half-configured environment (a pod without API access, metadata
      # that does not answer) is no cluster to join; say so and go on alone.
      logging.warning("JAX's cluster detection: %s failed (%s: %s); not "
                      "starting jax.distributed for it", env.__name__,
                      type(e).__name__, e)
  return None


def is_multiprocess_launch() -> bool:
  if _COORD.value or (_NPROC.value or 1) > 1:
    return True
  return launched_as_many()


def launched_as_many() -> bool:
  """The environment says this is one of several processes."""
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if os.environ.get(var, "1") not in ("", "1"):
      return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  found = detected_cluster()
  if found is not None:
    logging.info("Cluster detected by JAX: %s with %d processes", *found)
    return found[1] > 1
  return False


def maybe_initialize() -> None:
  wanted = _DISTRIBUTED.value
  if wanted is None:
    wanted = is_multiprocess_launch()
  if not wanted:
    return
  kw = {}
  if _COORD.value:
    kw = dict(coordinator_address=_COORD.value, num_processes=_NPROC.value,
              process_id=_PID.value)
  jax.distributed.initialize(**kw)
  logging.info("jax.distributed: process %d of %d, %d local / %d global "
               "devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def add_arguments(parser) -> None:
  """The same launch flags for argparse tools (tools/encode_dataset.py,
  tools/compute_ref_stats.py)."""
  parser.add_argument("--coordinator_address", default=None,
                      help="host:port of process 0 (a hand-launched "
                      "multi-process run)")
  parser.add_argument("--num_processes", type=int, default=None,
                      help="number of processes (with --coordinator_address)")
  parser.add_argument("--process_id", type=int, default=None,
                      help="this process's index (with --coordinator_address)")
  parser.add_argument("--distributed", action="store_true",
                      help="jax.distributed.initialize() with JAX's own "
                      "detection (default: only when a multi-process launch "
                      "is detected, as the jobs do)")


def initialize_from_args(args) -> None:
  """jax.distributed for a tool launched with add_arguments' flags."""
  if args.coordinator_address:
    jax.distributed.initialize(args.coordinator_address, args.num_processes,
                               args.process_id)
  elif args.distributed or launched_as_many():
    jax.distributed.initialize()
