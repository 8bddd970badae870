r"""ViTok S-B/4x16 on 16 x 128 x 128 video (paper Table 5; Fig. 13 varies T):
256 codes of c=16.

  python -m vitok_jax.train --config=configs/vitok/video_s_b4x16_128.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/video_s_b4x16_128.py:frames=64 --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/video_s_b4x16_128.py:runlocal --workdir=DIR

Same arguments as video_s_b4x8_128.py.
"""
from configs.vitok import video_s_b4x8_128 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, variant="S-B/4x16")


def get_config(arg=None):
  return base.make(**config_utils.parse_arg(arg, local_defaults=base.RUNLOCAL,
                                            **ARGS))
