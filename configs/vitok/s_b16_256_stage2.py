r"""ViTok S-B/16 at 256p, stage 2 (paper §2.3): decoder fine-tuning with a GAN.

  python -m vitok_jax.train --config=configs/vitok/s_b16_256_stage2.py:init_from=/runs/s1 --workdir=DIR

The encoder and bottleneck are frozen through the optimizer; the decoder
trains with L2 + 1e-3 KL + 1.0 LPIPS + lambda GAN against a StyleGAN2
discriminator (lr 2e-5, linear warm-up over 25k steps); EMA 0.9999 of the
params is what evaluation uses. Batch 256, 100k steps.

The encoder is frozen, so the step encodes outside the differentiated
function and pays for no encoder backward pass.

Fig. 18 ablations (arguments after the colon; ARGS below):
  no GAN:            --config=configs/vitok/s_b16_256_stage2.py:init_from=/runs/s1,gan=0
  disc lr:           --config=configs/vitok/s_b16_256_stage2.py:init_from=/runs/s1,gan=0.05,dlr=1e-5
                     (dlr in {1e-5, 2e-5, 4e-5})
  higher GAN weight: --config=configs/vitok/s_b16_256_stage2.py:init_from=/runs/s1,gan=0.1,dlr=1e-5
  full fine-tuning:  --config=configs/vitok/s_b16_256_stage2.py:init_from=/runs/s1,full
                     (encoder trains too)
Lambda defaults to the main text's 1.0; the appendix's best is gan=0.05.
"""

from configs.vitok import s_b16_256 as stage1
from vitok_jax import config_utils
from vitok_jax.io import fileio
from vitok_jax.trainers import tokenizer

ARGS = dict(init_from="", variant="S-B/16", c=16, res=256, batch=256,
            steps=100_000, data="tfds:imagenet2012:train", gan=1.0, dlr=2e-5,
            full=False, ema=0.9999, lpips_weights="weights/lpips_vgg16.npz",
            runlocal=False)
# Seconds on a CPU: stage 1's small model, short warm-up, small D, fast EMA.
RUNLOCAL = dict({k: v for k, v in stage1.RUNLOCAL.items() if k in ARGS},
                steps=30, ema=0.9)


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))


def make(**args):
  a = config_utils.arguments(ARGS, args, who=__name__)
  if not a.init_from:
    raise ValueError("configs/vitok/s_b16_256_stage2.py needs init_from=<stage-1 "
                     "workdir> (e.g. :init_from=/runs/stage1)")
  if not fileio.isdir(a.init_from):  # a local folder or gs://
    raise FileNotFoundError(f"init_from={a.init_from!r} is not a directory")
  cfg = stage1.make(
      variant=a.variant, c=a.c, res=a.res, batch=a.batch, steps=a.steps,
      data=a.data, lpips_weights=a.lpips_weights, runlocal=a.runlocal,
      dtype=stage1.RUNLOCAL["dtype"] if a.runlocal else stage1.ARGS["dtype"])
  cfg.init_from = a.init_from
  # Peak lr 1e-4 x batch / 256 (the trainer scales base_lr).
  cfg.optim.base_lr = 1e-4 if not a.runlocal else 0.016
  cfg.optim.warmup_steps = 0 if a.runlocal else 1000
  if not a.full:
    cfg.optim.freeze = tokenizer.ENCODER_PATTERNS
  cfg.loss.update(gan_weight=a.gan, gan_loss="hinge", gan_start_step=0)
  cfg.disc.update(lr=a.dlr, warmup_steps=25_000, b1=0.0, b2=0.99,
                  channel_base=32768, channel_max=512, mbstd_group=4)
  cfg.ema_decay = a.ema
  if a.runlocal:
    cfg.disc.update(warmup_steps=10, channel_base=512, channel_max=64)
  return cfg
