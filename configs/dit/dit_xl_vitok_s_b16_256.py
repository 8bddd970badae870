r"""DiT-XL on ViTok S-B/16 latents at 256p: the paper's Table 6 (4M steps).

  python -m vitok_jax.train --config=configs/dit/dit_xl_vitok_s_b16_256.py:tokenizer=VITOK_DIR --workdir=DIR
  python -m vitok_jax.train --config=configs/dit/dit_xl_vitok_s_b16_256.py:runlocal,tokenizer=/tmp/vitok_local --workdir=/tmp/dit_xl_local

Same arguments as dit_l_vitok_s_b16_256.py (size defaults to XL).
"""
from configs.dit import dit_l_vitok_s_b16_256 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, size="XL", steps=4_000_000)


def get_config(arg=None):
  return base.make(**config_utils.parse_arg(arg, local_defaults=base.RUNLOCAL,
                                            **ARGS))
