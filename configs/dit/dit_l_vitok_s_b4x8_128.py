r"""DiT-L on ViTok S-B/4x8 video latents (paper §4, Table 7: UCF-101 16 x 128
x 128 -> 4 x 16 x 16 = 1024 tokens of c=16, 101 classes; CFG 2.0 for
pictures), scored by gFVD.

  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b4x8_128.py:tokenizer=VIDEO_VITOK_DIR --workdir=DIR
  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b4x8_128.py:runlocal,tokenizer=/tmp/video_vitok_local --workdir=DIR

The tokenizer is a run of configs/vitok/video_s_b4x8_128.py; the data are
UCF-101's original 320x240 frames (`tfds:ucf101/ucf101_1:train`, not TFDS's
default squashed 256x256) with the tokenizer's crop (short side to `res`,
then a crop). Same arguments as dit_l_vitok_s_b16_256.py, plus `protocol`,
the gFVD protocol (docs/protocols.md):
  fps8 (default): clips of 16 frames at 8 fps, as the tokenizer trains
                  (paper §3.2); uniform random labels; 10k samples at the
                  periodic evaluations, 50k at the end, against every
                  training video's centred clip;
  larp:           LARP's protocol (a Table 7 row): 16 consecutive frames at
                  the native rate (the DiT trains on them too), 10,000
                  samples, labels drawn from the real clips.
gFVD needs the I3D weights (`i3d_weights`, tools/convert_i3d.py); the
evaluator fails at start without them (`i3d_weights=none` scores without
gFVD, and says so). `:runlocal` takes the video demo's :runlocal ViTok
(mu-mu/2x8, 16 x 32 x 32 -> 128 tokens), pans over the embedded photos, one
class per photo, and uses a RANDOM I3D when the weights file is absent
(every output flags it).
"""
import os

from configs.dit import dit_l_vitok_s_b16_256 as base
from vitok_jax import config_utils

ARGS = dict(base.ARGS, res=128, tokens=1024, classes=101,
            data="tfds:ucf101/ucf101_1:train", cfg=2.0, frames=16, fps=8.0,
            i3d_weights="weights/i3d_kinetics400.npz", protocol="fps8")
# The video :runlocal ViTok: 16 x 32 x 32 clips -> 128 tokens.
RUNLOCAL = dict(base.RUNLOCAL, res=32, batch=8, tokens=128)
PROTOCOLS = ("fps8", "larp")


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))


def make(**args):
  a = config_utils.arguments(ARGS, args, who=__name__)
  if a.protocol not in PROTOCOLS:
    raise ValueError(f"{__name__}: protocol={a.protocol!r}: expected one of "
                     f"{PROTOCOLS}")
  kw = {k: v for k, v in a.items() if k != "protocol"}
  if a.protocol == "larp":
    kw.update(fps=0.0, labels="data")
  if a.runlocal and not os.path.exists(a.i3d_weights):
    kw["i3d_weights"] = "random"
  cfg = base.make(**kw)
  if a.protocol == "larp" and not a.runlocal:
    for name in cfg.evals.keys():
      cfg.evals[name].update(num_samples=10_000, final_num_samples=10_000)
  return cfg
