r"""The paper's first finding in miniature (Fig. 2): does E = codes x c predict
reconstruction, whatever the patch size p? A tiny ViTok (mu-mu/p) trained on
crops of the 9 embedded photos for a fixed number of steps at 64 x 64, scored
on 16 tiles of photos it never saw (rPSNR, rSSIM, bicubic at the same E).

  python tools/sweep.py --sweep=mini_e --root=workdirs/mini_e --run
  python tools/plot_sweep.py --root=workdirs/mini_e --out=workdirs/mini_e
  python -m vitok_jax.train --config=configs/vitok/mini_e_sweep.py:p=8,c=16 --workdir=workdirs/mini_e/p8_c16

Arguments: p (patch), c (code channels), steps, res, runlocal (a few steps,
for tests). The sweep (configs/sweeps.py "mini_e") is p in {4, 8, 16} x c in
{4, 8, 16}: E from 16 x 4 = 64 to 256 x 16 = 4096 floats per 64 x 64 image.
"""
import os

from vitok_jax import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, p=8, c=16, steps=1500, res=64,
                               lpips_weights="weights/lpips_vgg16.npz",
                               runlocal=False)
  from configs.vitok import s_b16_256  # pylint: disable=g-import-not-at-top
  c = s_b16_256.get_config(f"runlocal,steps={arg.steps}")
  c.model.update(variant=f"mu-mu/{arg.p}", code_channels=arg.c)
  c.input.res = arg.res
  c.log_every = 100
  c.ckpt_every = 500
  c.image_every = 0
  c.keep_ckpts = 1
  if arg.runlocal:  # a smoke run for tests
    c.total_steps = min(arg.steps, 4)
    c.log_every = c.ckpt_every = 2
  if not os.path.exists(arg.lpips_weights):
    c.loss.lpips_weight = 0.0
  return c
