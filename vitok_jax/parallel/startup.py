"""Multi-process start-up through JAX's own runtime (`jax.distributed`).

On a cluster that JAX detects (SLURM, Open MPI, Kubernetes, or
JAX_COORDINATOR_ADDRESS set) `jax.distributed.initialize()` is called; by hand,
pass --coordinator_address/--num_processes/--process_id. A single-process
run never initialises it (doing so unconditionally crashes it).
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


def is_multiprocess_launch() -> bool:
  if _COORD.value or (_NPROC.value or 1) > 1:
    return True
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if os.environ.get(var, "1") not in ("", "1"):
      return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


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
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--distributed", action="store_true",
                      help="jax.distributed.initialize() with auto-detection")


def initialize_from_args(args) -> None:
  """jax.distributed for a tool launched with add_arguments' flags."""
  if args.coordinator_address:
    jax.distributed.initialize(args.coordinator_address, args.num_processes,
                               args.process_id)
  elif args.distributed:
    jax.distributed.initialize()
