r"""ViTok S-L/16 at 256p, stage 1 (paper Table 3: rFID 0.46, rPSNR 24.74).

  python -m vitok_jax.train --config=configs/vitok/s_l16_256.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/s_l16_256.py:runlocal --workdir=DIR

Same arguments as s_b16_256.py (variant defaults to S-L/16).
"""
from configs.vitok import s_b16_256 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, variant="S-L/16")


def get_config(arg=None):
  return base.make(**config_utils.parse_arg(arg, local_defaults=base.RUNLOCAL,
                                            **ARGS))
