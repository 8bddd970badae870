r"""ViTok S-B/16 at 512p, stage 1 (paper Table 4: rFID 0.18, rPSNR 26.72;
32 x 32 = 1024 codes of c=16).

  python -m vitok_jax.train --config=configs/vitok/s_b16_512.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/s_b16_512.py:runlocal --workdir=DIR

Same arguments as s_b16_256.py (res defaults to 512).
"""
from configs.vitok import s_b16_256 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, res=512)


def get_config(arg=None):
  return base.make(**config_utils.parse_arg(arg, local_defaults=base.RUNLOCAL,
                                            **ARGS))
