r"""Entry point: `python -m vitok_jax.train --config=configs/... --workdir=DIR`.

Multi-host: on a cluster that JAX detects (SLURM, Open MPI, Kubernetes, or
JAX_COORDINATOR_ADDRESS set) `jax.distributed.initialize()` is called; pass
--coordinator_address/--num_processes/--process_id to launch by hand. A
single-process run never initialises it.
"""
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (optionally ':args').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard "
                               "logs and pictures go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Force (True) or forbid (False) jax.distributed "
    "initialisation; default: auto-detect a multi-process launch.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of "
                             "process 0 for a hand-launched multi-process run.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def _is_multiprocess_launch() -> bool:
  if _COORD.value or (_NPROC.value or 1) > 1:
    return True
  if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    return True
  if os.environ.get("OMPI_COMM_WORLD_SIZE", "1") not in ("", "1"):
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize_distributed() -> None:
  wanted = _DISTRIBUTED.value
  if wanted is None:
    wanted = _is_multiprocess_launch()
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


class _QuietLibraries:
  """Drops INFO chatter of Orbax (a dozen lines per save) from the log."""
  NOISY = ("/orbax/", "/grain/")

  def filter(self, record):
    return record.levelno >= 30 or not any(
        n in record.pathname for n in self.NOISY)


def main(argv):
  del argv
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  for handler in py_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  maybe_initialize_distributed()
  config = _CONFIG.value
  trainer = config.get("trainer", "tokenizer")
  if trainer == "tokenizer":
    from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
    tokenizer.train_and_evaluate(config, _WORKDIR.value)
  else:
    raise ValueError(f"config.trainer={trainer!r}: known trainers: "
                     "['tokenizer']")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
