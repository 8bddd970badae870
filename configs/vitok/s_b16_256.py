r"""ViTok S-B/16 at 256p, stage 1 (paper §2.3; the headline image tokenizer).

  python -m vitok_jax.train --config=configs/vitok/s_b16_256.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/s_b16_256.py:runlocal --workdir=DIR

Arguments (comma separated after the colon): variant, c (code channels),
res, batch, steps, data, lpips (weight), rec (l1|l2), latent (Latent ViTok
tokens), mask (Masked ViTok lengths, '/'-separated), l_eval, dtype (matmuls),
runlocal. configs/sweeps.py turns the paper's figures into sweeps
(tools/sweep.py). Every
field of config.model can also be set with --config.model.<field>=<value>.
The paper's figures:
  Fig. 2/17 sweep point p=8, c=4:  --config=configs/vitok/s_b16_256.py:variant=S-B/8,c=4
  Fig. 4 (512p, p=8):              --config=configs/vitok/s_b16_256.py:variant=S-B/8,res=512
  Fig. 6-9 model sizes:            --config=configs/vitok/s_b16_256.py:variant=L-L/16
  Fig. 10 loss sweep:              --config=configs/vitok/s_b16_256.py:lpips=0.5,rec=l1
  Table 3 (COCO 256p eval):        --config=configs/vitok/s_b16_256.py:eval_data=tfds:coco/2017:validation
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


def get_config(arg=None, **defaults):
  spec = dict(variant="S-B/16", c=16, res=256, batch=1024, steps=100_000,
      data="tfds:imagenet2012:train", lpips=1.0, rec="l2", latent=0, mask="",
      l_eval=0, dtype="bfloat16", eval_data="tfds:imagenet2012:validation",
      lpips_weights="weights/lpips_vgg16.npz",
      inception_weights="weights/fid_inception_v3.npz", runlocal=False)
  spec.update(defaults)  # the named headline configs start from here
  arg = config_utils.parse_arg(arg, **spec)
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
  c = config_utils.ml_collections.ConfigDict()
  c.trainer = "tokenizer"
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 2000
  c.keep_ckpts = 3
  c.image_every = 2000

  # Every vitok.Model field; bf16 matmuls with a float32 stream (autocast).
  c.model = tokenizer.model_config_fields()
  c.model.update(variant=arg.variant, code_channels=arg.c, dtype=arg.dtype,
                 num_latent_tokens=arg.latent,
                 mask_lengths=tuple(int(l) for l in arg.mask.split("/") if l))
  if arg.l_eval:
    c.model.eval_length = arg.l_eval
  c.input = dict(data=arg.data, res=arg.res, frames=1, batch_size=arg.batch,
                 crop_scale=(0.5, 1.0), flip=True, num_workers=16)
  # L_REC + 1e-3 L_KL + 1.0 L_LPIPS (stage 1: no GAN).
  c.loss = dict(rec=arg.rec, kl_weight=1e-3, lpips_weight=arg.lpips,
                lpips_weights=arg.lpips_weights)
  # AdamW (0.9, 0.95), wd 1e-4 on kernels, peak lr 1e-4 * batch * frames /
  # 256 (the trainer scales base_lr), 5% linear warm-up then cosine to 0.
  c.optim = dict(base_lr=1e-4, b1=0.9, b2=0.95, weight_decay=1e-4,
                 warmup_steps=int(0.05 * arg.steps), grad_clip=1.0)
  c.mesh = [("data", -1), ("fsdp", 1)]
  # rFID/rIS/rPSNR/rSSIM on ImageNet val (50k); the EMA params when present.
  c.evals = {"imagenet_val": dict(
      type="reconstruction", log_steps=10_000, batch_size=256,
      num_examples=None, inception_weights=arg.inception_weights,
      data=dict(data=arg.eval_data))}  # res: input's

  if arg.runlocal:  # the same recipe, small enough for a 2-core CPU
    # ~2 minutes on 2 cores: a tiny ViTok (p=8, 64 codes of c=16 for a 64x64
    # photo) trained on the 9 embedded photos, and scored on 16 tiles of
    # photos it never saw, beside bicubic at the same E = 64 x 16 floats.
    c.total_steps = 3000 if arg.steps == 100_000 else arg.steps
    c.log_every = 250
    c.ckpt_every = 1000
    c.image_every = 1000
    c.model.variant = "mu-mu/8"
    c.model.dtype = "float32"  # bf16 matmuls are slow on CPU
    c.input.update(data="embedded", res=64, batch_size=16, num_workers=0)
    c.input.crop_scale = (0.05, 1.0)  # 9 photos: zoom in for variety
    c.optim.update(base_lr=0.32, warmup_steps=150)  # peak lr 2e-2 at 16
    c.evals = {"heldout": dict(
        type="reconstruction", log_steps=None, batch_size=16,
        label="held-out photos", inception_weights=arg.inception_weights,
        bicubic_baseline=True,
        data=dict(data="heldout"))}
    if not os.path.exists(arg.lpips_weights):
      c.loss.lpips_weight = 0.0
  return c
