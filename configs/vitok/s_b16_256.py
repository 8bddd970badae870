r"""ViTok S-B/16 at 256p, stage 1 (paper §2.3; the headline image tokenizer).

  python -m vitok_jax.train --config=configs/vitok/s_b16_256.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/s_b16_256.py:runlocal --workdir=DIR

Arguments (comma separated after the colon; ARGS below, with defaults):
variant, c (code channels), res, batch, steps, data, lpips (weight), rec
(l1|l2), latent (Latent ViTok tokens), mask (Masked ViTok lengths,
'/'-separated), l_eval, dtype (matmuls), eval_data, lpips_weights,
inception_weights, naflex (native resolution and aspect ratio,
docs/naflex.md), max_patches (NaFlex's sequence length; 0: (res / p)^2, the
square's token count), runlocal. `runlocal` changes the defaults in RUNLOCAL
(explicit arguments still win). configs/sweeps.py turns the paper's figures
into sweeps (tools/sweep.py). Every key of the trainer's default config can
also be set with --config.<key>=<value> (docs/configs.md).
The paper's figures:
  Fig. 2/17 sweep point p=8, c=4:  --config=configs/vitok/s_b16_256.py:variant=S-B/8,c=4
  Fig. 4 (512p, p=8):              --config=configs/vitok/s_b16_256.py:variant=S-B/8,res=512
  Fig. 6-9 model sizes:            --config=configs/vitok/s_b16_256.py:variant=L-L/16
  Fig. 10 loss sweep:              --config=configs/vitok/s_b16_256.py:lpips=0.5,rec=l1
  Table 3 (COCO 256p eval):        --config=configs/vitok/s_b16_256.py:eval_data=tfds:coco/2017:validation
  native resolution (NaFlex):      --config=configs/vitok/s_b16_256.py:naflex=True
  Table 2 (float32 vs bfloat16):   --config=configs/vitok/s_b16_256.py:dtype=float32
  all-bfloat16 (stream too):       --config=configs/vitok/s_b16_256.py --config.model.stream_dtype=bfloat16
  Fig. 19 Latent ViTok:            --config=configs/vitok/s_b16_256.py:latent=256
                                   --config=configs/vitok/s_b16_256.py --config.model.num_latent_tokens=256
  Fig. 20 Masked ViTok, l_eval:    --config=configs/vitok/s_b16_256.py:mask=32/64/128/256,l_eval=128
                                   --config=configs/vitok/s_b16_256.py --config.model.mask_lengths="(32,64,128,256)" --config.model.eval_length=128
  bigger batch (lr follows):       --config=configs/vitok/s_b16_256.py --config.input.batch_size=256

The peak lr is optim.base_lr (1e-4 per 256 samples) x batch x frames / 256,
computed by the trainer, so a changed batch keeps the paper's rule.

LPIPS needs converted weights (tools/convert_lpips.py) at `lpips_weights`.
`:runlocal` (the README's demo) trains without LPIPS when they are absent
(a random VGG is no perceptual loss) and evaluates on held-out photos that
it never trains on, next to bicubic resampling with the same floats.
"""
import os

from vitok_jax import config_utils
from vitok_jax.evaluators import common as evaluators
from vitok_jax.models import vitok
from vitok_jax.trainers import tokenizer

ARGS = dict(variant="S-B/16", c=16, res=256, batch=1024, steps=100_000,
            data="tfds:imagenet2012:train", lpips=1.0, rec="l2", latent=0,
            mask="", l_eval=0, dtype="bfloat16",
            eval_data="tfds:imagenet2012:validation",
            lpips_weights="weights/lpips_vgg16.npz",
            inception_weights="weights/fid_inception_v3.npz", naflex=False,
            max_patches=0, runlocal=False)
# The README's demo, for one CPU: a tiny ViTok (p=8, 64 codes of c=16 for a
# 64x64 photo) trained on the 9 embedded photos, bf16 matmuls off (slow on
# CPU).
RUNLOCAL = dict(variant="mu-mu/8", res=64, batch=16, steps=3000,
                data="embedded", dtype="float32")


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))


def make(**args):
  """The config for these arguments (derived configs call this)."""
  a = config_utils.arguments(ARGS, args, who=__name__)
  cfg = tokenizer.default_config()
  cfg.total_steps = a.steps
  cfg.log_every = 100
  cfg.ckpt_every = 2000
  cfg.image_every = 2000

  # bf16 matmuls with a float32 stream (autocast).
  cfg.model.update(variant=a.variant, code_channels=a.c, dtype=a.dtype,
                   num_latent_tokens=a.latent,
                   mask_lengths=tuple(int(l) for l in a.mask.split("/") if l))
  if a.l_eval:
    cfg.model.eval_length = a.l_eval
  cfg.input.update(data=a.data, res=a.res, frames=1, batch_size=a.batch,
                   crop_scale=(0.5, 1.0), flip=True, num_workers=16)
  # L_REC + 1e-3 L_KL + 1.0 L_LPIPS (stage 1: no GAN).
  cfg.loss.update(rec=a.rec, kl_weight=1e-3, lpips_weight=a.lpips,
                  lpips_weights=a.lpips_weights)
  # AdamW (0.9, 0.95), wd 1e-4 on kernels, peak lr 1e-4 * batch * frames /
  # 256 (the trainer scales base_lr), 5% linear warm-up then cosine to 0.
  cfg.optim.update(base_lr=1e-4, b1=0.9, b2=0.95, weight_decay=1e-4,
                   warmup_steps=int(0.05 * a.steps), grad_clip=1.0)
  # rFID/rIS/rPSNR/rSSIM on ImageNet val (50k); the EMA params when present.
  cfg.evals = {"imagenet_val": evaluators.config(
      "reconstruction", log_steps=10_000, batch_size=256,
      inception_weights=a.inception_weights,
      data=dict(data=a.eval_data))}  # res: the input's

  if a.runlocal:  # the same recipe, small enough for a 2-core CPU
    # Scored on 16 tiles of photos it never saw, beside bicubic at the same
    # E = 64 x 16 floats.
    cfg.log_every = 250
    cfg.ckpt_every = 1000
    cfg.image_every = 1000
    cfg.input.num_workers = 0
    cfg.input.crop_scale = (0.05, 1.0)  # 9 photos: zoom in for variety
    cfg.optim.update(base_lr=0.32, warmup_steps=150)  # peak lr 2e-2 at 16
    cfg.evals = {"heldout": evaluators.config(
        "reconstruction", batch_size=16, label="held-out photos",
        inception_weights=a.inception_weights, bicubic_baseline=True,
        data=dict(data="heldout"))}
    if not os.path.exists(a.lpips_weights):
      cfg.loss.lpips_weight = 0.0
  if a.naflex:
    naflex(cfg, a)
  return cfg


def naflex(cfg, a):
  """Native resolution and aspect ratio (docs/naflex.md): rows of at most
  max_patches patches (default: the square's token count, so a step costs
  about the same), mixed-aspect training crops, evaluation of whole images
  at their native aspect ratio beside bicubic at each image's own floats.
  RoPE alone gives the positions (a learned table is made for one grid)."""
  patch = vitok.decode_variant(a.variant)["patch"]
  cfg.model.posemb = "none"
  cfg.input.update(naflex=True, max_patches=a.max_patches or
                   (a.res // patch) ** 2, naflex_aspect=(0.5, 2.0),
                   naflex_area=(0.5, 1.0))
  for name, entry in list(cfg.evals.items()):
    cfg.evals[name] = evaluators.config(
        "reconstruction_native", log_steps=entry.log_steps,
        batch_size=entry.batch_size, label=entry.label,
        inception_weights=entry.inception_weights,
        bicubic_baseline=entry.bicubic_baseline, data=entry.data)
  if a.runlocal:  # crops of 5-100% of a photo at 1:2 to 2:1, as the square's
    cfg.input.naflex_area = (0.05, 1.0)
