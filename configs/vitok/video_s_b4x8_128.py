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


def get_config(arg=None, **defaults):
  spec = dict(variant="S-B/4x8", c=16, res=128, frames=16, fps=8.0, batch=256,
              steps=100_000, data="tfds:ucf101:train", lpips=1.0,
              lpips_weights="weights/lpips_vgg16.npz",
              i3d_weights="weights/i3d_kinetics400.npz",
              inception_weights="weights/fid_inception_v3.npz",
              runlocal=False)
  spec.update(defaults)  # the S-B/8x8 and S-B/4x16 configs start from here
  arg = config_utils.parse_arg(arg, **spec)
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
  c = tokenizer.default_config()
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 2000
  c.image_every = 2000
  c.model.update(variant=arg.variant, code_channels=arg.c)
  c.input.update(data=arg.data, res=arg.res, frames=arg.frames, fps=arg.fps,
                 batch_size=arg.batch, flip=True, num_workers=16)
  c.loss.update(rec="l2", kl_weight=1e-3, lpips_weight=arg.lpips,
                lpips_weights=arg.lpips_weights)
  c.optim.update(base_lr=1e-4, warmup_steps=int(0.05 * arg.steps))
  val = arg.data.replace(":train", ":test")
  c.evals = {"val": dict(
      type="reconstruction", log_steps=10_000, batch_size=32,
      num_examples=None, inception_weights=arg.inception_weights,
      i3d_weights=arg.i3d_weights, data=dict(data=val))}

  if arg.runlocal:  # a few minutes on a 2-core CPU
    c.total_steps = 300 if arg.steps == spec["steps"] else arg.steps
    c.log_every = 50
    c.ckpt_every = 150
    c.image_every = 150
    c.model.update(variant="mu-mu/2x8", dtype="float32")
    frames = arg.frames  # 16: I3D (rFVD) needs at least 9
    c.input.update(data="embedded" if arg.data == spec["data"] else arg.data,
                   res=32 if arg.res == spec["res"] else arg.res,
                   frames=frames, batch_size=4, num_workers=0)
    c.optim.update(base_lr=0.004, warmup_steps=30)  # peak 1e-3 at 4 x 16
    c.evals = {"val": dict(
        type="reconstruction", log_steps=None, batch_size=4, num_examples=8,
        inception_weights=arg.inception_weights, i3d_weights=arg.i3d_weights,
        bicubic_baseline=True, label="held-out pans",
        data=dict(data="heldout" if c.input.data == "embedded" else
                  c.input.data))}
    if not os.path.exists(arg.lpips_weights):
      c.loss.lpips_weight = 0.0
  return c
