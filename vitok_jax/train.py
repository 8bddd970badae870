r"""Training: `python -m vitok_jax.train --config=configs/... --workdir=DIR`
(or `vitok-train`; the config path may be relative to the repository).

`config.trainer` picks the trainer: "tokenizer" (configs/vitok/) or "dit"
(configs/dit/); both run the same host loop (trainers/host_loop.py).

Multi-host start-up is in vitok_jax/parallel/startup.py (jax.distributed, only for
multi-process launches).

Exit status: 0 when training finished; 128 + n after signal n (SIGTERM,
SIGINT) stopped it at a saved step; 2 on a config error (one line naming
the key); 1 on any other failure (`vitok_jax.train failed: ...`), at once: the process
never waits on a background thread (a pending checkpoint save gets a bounded
time to finish, then it is discarded and the last complete step stays).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from vitok_jax import cli
from vitok_jax.parallel import startup
from vitok_jax import trainers
import vitok_jax.utils as u

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (optionally ':args').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard "
                               "logs and pictures go (local or gs://).")
JOB = "vitok_jax.train"


def main(argv):
  del argv
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required")
  trainer = trainers.get(_CONFIG.value.get("trainer", "tokenizer"))
  cli.check_config(JOB, trainer.resolve_config, _CONFIG.value)
  u.quiet_library_logs()
  startup.maybe_initialize()
  cli.run_job(JOB, lambda: trainer.train_and_evaluate(_CONFIG.value,
                                                      _WORKDIR.value))


def run():
  """The console script `vitok-train` (= python -m vitok_jax.train)."""
  app.run(main, flags_parser=cli.flags_parser(JOB, __doc__))


if __name__ == "__main__":
  run()
