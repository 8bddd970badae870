r"""ViTok S-B/16 at 256p, stage 1 (paper §2.3; the headline image tokenizer).

  python -m vitok_jax.train --config=configs/vitok/s_b16_256.py --workdir=DIR
  python -m vitok_jax.train --config=configs/vitok/s_b16_256.py:runlocal --workdir=DIR

Arguments (comma separated after the colon): variant, c (code channels),
res, batch, steps, data, lpips (weight), rec (l1|l2), runlocal. E.g.
  Fig. 2/17 sweep point p=8, c=4:   :variant=S-B/8,c=4
  Fig. 4 (512p):                    :variant=S-B/8,res=512
  Fig. 6-9 model sizes:             :variant=L-L/16
  Fig. 10 loss sweep:               :lpips=0.5,rec=l1   (lpips in {0, 0.5, 1})
  Table 2 (float32 vs bfloat16):    --config.model.dtype=float32
  Fig. 19/20 variants:              --config.model.num_latent_tokens=256
                                    --config.model.mask_lengths="(32,64,128,256)"

LPIPS needs converted weights (tools/convert_lpips.py) at `lpips_weights`;
`:runlocal` uses a random VGG (and says so in the log) when they are absent.
"""
import os

from vitok_jax import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(
      arg, variant="S-B/16", c=16, res=256, batch=1024, steps=100_000,
      data="tfds:imagenet2012:train", lpips=1.0, rec="l2",
      lpips_weights="weights/lpips_vgg16.npz",
      inception_weights="weights/fid_inception_v3.npz", runlocal=False)
  c = config_utils.ml_collections.ConfigDict()
  c.trainer = "tokenizer"
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 2000
  c.keep_ckpts = 3
  c.image_every = 2000

  c.model = dict(variant=arg.variant, code_channels=arg.c, posemb="learn",
                 dtype="bfloat16", remat=False, attn_impl=None)
  c.input = dict(data=arg.data, res=arg.res, frames=1, batch_size=arg.batch,
                 crop_scale=(0.5, 1.0), flip=True, num_workers=16)
  # L_REC + 1e-3 L_KL + 1.0 L_LPIPS (stage 1: no GAN).
  c.loss = dict(rec=arg.rec, kl_weight=1e-3, lpips_weight=arg.lpips,
                lpips_weights=arg.lpips_weights)
  # AdamW (0.9, 0.95), wd 1e-4 on kernels, peak lr 1e-4 * batch * frames / 256,
  # 5% linear warm-up then cosine to 0.
  c.optim = dict(lr=1e-4 * arg.batch * 1 / 256, b1=0.9, b2=0.95,
                 weight_decay=1e-4, warmup_steps=int(0.05 * arg.steps),
                 grad_clip=1.0)
  c.mesh = [("data", -1), ("fsdp", 1)]
  # rFID/rIS/rPSNR/rSSIM on ImageNet val (50k); the EMA params when present.
  c.evals = {"imagenet_val": dict(
      type="reconstruction", log_steps=10_000, batch_size=256,
      num_examples=None, inception_weights=arg.inception_weights,
      data=dict(data="tfds:imagenet2012:validation"))}  # res: input's

  if arg.runlocal:  # the same recipe, small enough for a laptop CPU
    c.total_steps = 60 if arg.steps == 100_000 else arg.steps
    c.log_every = 10
    c.ckpt_every = 30
    c.image_every = 30
    c.model.variant = "mu-mu/8"
    c.model.dtype = "float32"  # bf16 matmuls are slow on CPU
    c.input.update(data="embedded", res=64, batch_size=8, num_workers=0)
    c.optim.update(lr=1e-3, warmup_steps=5)
    c.evals = {"embedded": dict(
        type="reconstruction", log_steps=None, batch_size=8,
        inception_weights=arg.inception_weights,
        data=dict(data="embedded"))}
    if not os.path.exists(arg.lpips_weights):
      c.loss.update(lpips_weights=None, lpips_allow_random=True)
  return c
