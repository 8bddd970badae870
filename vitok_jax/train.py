r"""Entry point: `python -m vitok_jax.train --config=configs/... --workdir=DIR`.

`config.trainer` picks the trainer: "tokenizer" (configs/vitok/) or "dit"
(configs/dit/); both run the same host loop (trainers/host_loop.py).

Multi-host start-up is in vitok_jax/parallel/startup.py (jax.distributed, only for
multi-process launches).

Exit status: 0 when training finished; 128 + n after signal n (SIGTERM,
SIGINT) stopped it at a saved step; 1 on any failure, at once: the process
never waits on a background thread (a pending checkpoint save gets a bounded
time to finish, then it is discarded and the last complete step stays).
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vitok_jax.parallel import startup
from vitok_jax.parallel import stop_request
from vitok_jax import trainers
import vitok_jax.utils as u

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (optionally ':args').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard "
                               "logs and pictures go.")


def load_config():
  """The --config value, or a usage error that names the file."""
  try:
    config = _CONFIG.value
    config.get("trainer")  # a file that failed to load raises on first use
    return config
  except (IOError, OSError) as e:
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    raise app.UsageError(f"--config: cannot load {path!r} (cwd "
                         f"{os.getcwd()}): {e}") from e


def main(argv):
  del argv
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  config = load_config()
  u.quiet_library_logs()
  startup.maybe_initialize()
  trainer = trainers.get(config.get("trainer", "tokenizer"))
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value)
  except stop_request.StopRequested:
    raise
  except Exception:  # pylint: disable=broad-except
    # Log the cause, then leave without waiting for library threads
    # (Orbax, grain) that could otherwise hold the interpreter at exit.
    logging.exception("Training failed")
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
