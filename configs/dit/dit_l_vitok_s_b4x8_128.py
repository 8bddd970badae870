r"""DiT-L on ViTok S-B/4x8 video latents (paper §4, UCF-101 16 x 128 x 128:
4 x 16 x 16 = 1024 tokens of c=16, 101 classes; CFG 2.0 for pictures).

  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b4x8_128.py:tokenizer=VIDEO_VITOK_DIR --workdir=DIR
  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b4x8_128.py:runlocal,tokenizer=/tmp/video_vitok_local --workdir=DIR

The tokenizer is a run of configs/vitok/video_s_b4x8_128.py. `:runlocal`
takes that config's :runlocal ViTok (mu-mu/2x8, 16 x 32 x 32 -> 128 tokens)
and pans over the embedded photos, one class per photo. Same arguments as
dit_l_vitok_s_b16_256.py, plus frames and fps.
"""
from configs.dit import dit_l_vitok_s_b16_256 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, res=128, tokens=1024, classes=101,
            data="tfds:ucf101:train", cfg=2.0, frames=16, fps=8.0)
# The video :runlocal ViTok: 16 x 32 x 32 clips -> 128 tokens.
RUNLOCAL = dict(base.RUNLOCAL, res=32, batch=8, tokens=128)


def get_config(arg=None):
  return base.make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))
