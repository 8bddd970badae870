r"""Entry point: `python -m vitok_jax.train --config=configs/... --workdir=DIR`.

Multi-host start-up is in vitok_jax/distributed.py (jax.distributed, only for
multi-process launches).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from vitok_jax import distributed
import vitok_jax.utils as u

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (optionally ':args').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard "
                               "logs and pictures go.")

def main(argv):
  del argv
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  u.quiet_library_logs()
  distributed.maybe_initialize()
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
