r"""ViTok S-B/4x8 on 16 x 128 x 128 video at 8 fps (paper Table 5, UCF-101):
1024 codes of c=16, stage 1 (L2 + 1e-3 KL + LPIPS per frame), 256 clips per
batch (peak lr 1e-4 x 256 x 16 / 256), evaluated with rFVD, frame-wise rFID,
rPSNR and rSSIM.

  python -m vitok_jax.train --config=configs/vitok/video_s_b4x8_128.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/video_s_b4x8_128.py:runlocal --workdir=DIR

Arguments: variant, c, res, frames, fps, batch, steps, data, lpips, runlocal,
i3d_weights (tools/convert_i3d.py), inception_weights. The paper's video
experiments:
  Table 5 S-B/8x8:            --config=configs/vitok/video_s_b8x8_128.py
  Table 5 S-B/4x16:           --config=configs/vitok/video_s_b4x16_128.py
  Fig. 11/12 (256p, p x q):   --config=configs/vitok/video_s_b4x8_128.py:variant=S-B/2x16,res=256,data=tfds:kinetics700:train
  Fig. 13 (T = 16, 32, 64):   --config=configs/vitok/video_s_b4x16_128.py:frames=32

`:runlocal` trains a tiny video ViTok on clips of a camera panning and
zooming over the embedded photos (no files needed) and scores it on pans
over the held-out photos; `data=folder:<dir>`
trains on any folder of video files (mp4/webm/avi/mkv/mov, PyAV).
"""
import os

from vitok_jax import config_utils
from vitok_jax.evaluators import common as evaluators
from vitok_jax.trainers import tokenizer

ARGS = dict(variant="S-B/4x8", c=16, res=128, frames=16, fps=8.0, batch=256,
            steps=100_000, data="tfds:ucf101:train", lpips=1.0,
            lpips_weights="weights/lpips_vgg16.npz",
            i3d_weights="weights/i3d_kinetics400.npz",
            inception_weights="weights/fid_inception_v3.npz", runlocal=False)
# A few minutes on 2 cores; 16 frames: I3D (rFVD) needs at least 9.
RUNLOCAL = dict(variant="mu-mu/2x8", res=32, batch=4, steps=300,
                data="embedded")


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))


def make(*, variant, c, res, frames, fps, batch, steps, data, lpips,
         lpips_weights, i3d_weights, inception_weights, runlocal):
  cfg = tokenizer.default_config()
  cfg.total_steps = steps
  cfg.log_every = 100
  cfg.ckpt_every = 2000
  cfg.image_every = 2000
  cfg.model.update(variant=variant, code_channels=c)
  cfg.input.update(data=data, res=res, frames=frames, fps=fps,
                   batch_size=batch, flip=True, num_workers=16)
  cfg.loss.update(rec="l2", kl_weight=1e-3, lpips_weight=lpips,
                  lpips_weights=lpips_weights)
  cfg.optim.update(base_lr=1e-4, warmup_steps=int(0.05 * steps))
  cfg.evals = {"val": evaluators.config(
      "reconstruction", log_steps=10_000, batch_size=32,
      inception_weights=inception_weights, i3d_weights=i3d_weights,
      data=dict(data=data.replace(":train", ":test")))}

  if runlocal:  # a few minutes on a 2-core CPU
    cfg.log_every = 50
    cfg.ckpt_every = 150
    cfg.image_every = 150
    cfg.model.dtype = "float32"
    cfg.input.num_workers = 0
    cfg.optim.update(base_lr=0.004, warmup_steps=30)  # peak 1e-3 at 4 x 16
    cfg.evals = {"val": evaluators.config(
        "reconstruction", batch_size=4, num_examples=8,
        inception_weights=inception_weights, i3d_weights=i3d_weights,
        bicubic_baseline=True, label="held-out pans",
        data=dict(data="heldout" if data == "embedded" else data))}
    if not os.path.exists(lpips_weights):
      cfg.loss.lpips_weight = 0.0
  return cfg
