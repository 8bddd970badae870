r"""DiT-XL on ViTok S-B/16 latents at 512p: the paper's Table 6, 512p rows
(32 x 32 = 1024 tokens of c=16).

  python -m vitok_jax.train --config=configs/dit/dit_xl_vitok_s_b16_512.py:tokenizer=VITOK_512_DIR --workdir=DIR
  python -m vitok_jax.train --config=configs/dit/dit_xl_vitok_s_b16_512.py:runlocal,tokenizer=/tmp/vitok_local --workdir=/tmp/dit_512_local

The tokenizer is a 512p ViTok run (configs/vitok/s_b16_256.py:res=512).
Same arguments as dit_l_vitok_s_b16_256.py (size XL, res 512, 1024 tokens).
"""
from configs.dit import dit_l_vitok_s_b16_256 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, size="XL", steps=4_000_000, res=512, tokens=1024)


def get_config(arg=None):
  return base.make(**config_utils.parse_arg(arg, local_defaults=base.RUNLOCAL,
                                            **ARGS))
