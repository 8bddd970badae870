"""Trainers: each builds a host_loop.Task; `config.trainer` names one."""

TRAINERS = ("tokenizer", "dit")


def get(name: str):
  """config.trainer -> its module in vitok_jax/trainers/."""
  if name not in TRAINERS:
    raise ValueError(f"config.trainer={name!r}: known trainers: "
                     f"{list(TRAINERS)}")
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f"vitok_jax.trainers.{name}")
