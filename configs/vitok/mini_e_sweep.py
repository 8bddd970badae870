r"""The paper's first finding in miniature (Fig. 2): does E = codes x c predict
reconstruction, whatever the patch size p? And does generation follow it
(Fig. 5)? A tiny ViTok (mu-mu/p) trained on crops of the 9 embedded photos
for a fixed number of steps at 64 x 64, scored on 16 tiles of photos it
never saw (rPSNR, rSSIM, bicubic at the same E), and at its last step by the
generation probe (evaluators/generation_probe.py): a DiT-mu trained 1000
steps on the latents of 144 training views (16 random crops per photo), 72
samples scored against those views (probe gFID; a RANDOM Inception, flagged, unless
weights/fid_inception_v3.npz exists) and by PSNR to the nearest view of the
sample's class.

  python tools/sweep.py --sweep=mini_e --root=workdirs/mini_e --run
  python tools/plot_sweep.py --root=workdirs/mini_e --out=workdirs/mini_e
  python -m vitok_jax.train --config=configs/vitok/mini_e_sweep.py:p=8,c=16 --workdir=workdirs/mini_e/p8_c16

Arguments: p (patch), c (code channels), steps, res, probe (the generation
probe at the last step), probe_seed, runlocal (a few steps, for tests; no
probe). The sweep (configs/sweeps.py "mini_e") is p in {4, 8, 16} x c in
{4, 8, 16}: E from 16 x 4 = 64 to 256 x 16 = 4096 floats per 64 x 64 image.
"""
import os

from configs.vitok import s_b16_256
from vitok_jax import config_utils
from vitok_jax.evaluators import common as evaluators

ARGS = dict(p=8, c=16, steps=1500, res=64,
            lpips_weights="weights/lpips_vgg16.npz",
            inception_weights="weights/fid_inception_v3.npz", probe=True,
            probe_seed=0, runlocal=False)


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, **ARGS))


def make(**args):
  a = config_utils.arguments(ARGS, args, who=__name__)
  args = {**s_b16_256.ARGS, **s_b16_256.RUNLOCAL}  # the demo's recipe
  args.update(variant=f"mu-mu/{a.p}", c=a.c, steps=a.steps, res=a.res,
              lpips_weights=a.lpips_weights, runlocal=True)
  cfg = s_b16_256.make(**args)
  cfg.log_every = 100
  cfg.ckpt_every = 500
  cfg.image_every = 0
  cfg.keep_ckpts = 1
  if a.runlocal:  # a smoke run for tests
    cfg.total_steps = min(a.steps, 4)
    cfg.log_every = cfg.ckpt_every = 2
  if not os.path.exists(a.lpips_weights):
    cfg.loss.lpips_weight = 0.0
  if a.probe and not a.runlocal:
    # The DiT demo's recipe (configs/dit, :runlocal) on 16 random training
    # crops per photo, one class per photo.
    cfg.evals.probe = evaluators.config(
        "generation_probe", num_examples=144, encode_batch=16,
        dit_size="mu", dtype="float32", steps=1000, batch_size=16,
        base_lr=0.128, warmup_steps=50, ema_decay=0.99, num_samples=72,
        sample_batch=24, sample_steps=50, cfg_scale=3.0, seed=a.probe_seed,
        nearest=True, inception_weights=(
            a.inception_weights if os.path.exists(a.inception_weights)
            else "random"))
  return cfg
