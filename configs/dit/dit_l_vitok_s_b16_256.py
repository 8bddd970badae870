r"""DiT-L on ViTok S-B/16 latents at 256p: the generation sweep model
(paper §2.3, Fig. 5): 256 tokens x c=16, ImageNet classes, DDPM
1000 steps, batch 256, 500k steps, DDIM 250 steps, CFG 1.5 and 3.0.

  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR --workdir=DIR
  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR,shards=LATENTS_DIR --workdir=DIR
  python -m vitok_jax.sample --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR --workdir=DIR --num=50000 --cfg=1.5

Arguments: tokenizer (a ViTok run's workdir), shards (latents written by
tools/encode_dataset.py; default: encode on the fly), size (mu|S|B|L|XL),
res, tokens, c, batch, steps, classes, data, cfg, inception_weights,
ref_stats (tools/compute_ref_stats.py over the training set), runlocal.
Fig. 5 (a DiT per Fig. 2 tokenizer, p=8, c=4 at 256p -> 1024 tokens):
  --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR,tokens=1024,c=4

`:runlocal` is the README's generation chain on a 2-core CPU: a tiny DiT on
the latents that the demo ViTok (s_b16_256.py:runlocal) gives the 9 embedded
photos, one class per photo, a few hundred steps; samples at CFG 3.0 are
scored against the photos by PSNR (is a sample nearest to its own class?):
  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b16_256.py:runlocal,tokenizer=/tmp/vitok_local --workdir=/tmp/dit_local
"""
from vitok_jax import config_utils


def get_config(arg=None, **defaults):
  spec = dict(size="L", tokenizer="", shards="", res=256, tokens=256, c=16,
              batch=256, steps=500_000, classes=1000,
              data="tfds:imagenet2012:train", cfg=1.5,
              inception_weights="weights/fid_inception_v3.npz", ref_stats="",
              runlocal=False)
  spec.update(defaults)  # the XL configs start from here
  arg = config_utils.parse_arg(arg, **spec)
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  c = dit.default_config()
  c.total_steps = arg.steps
  c.log_every = 100
  c.ckpt_every = 5000
  c.image_every = 5000
  c.tokenizer.workdir = arg.tokenizer or None
  c.latents.source = f"shards:{arg.shards}" if arg.shards else "encode"
  c.latents.tokens, c.latents.channels = arg.tokens, arg.c
  c.num_classes = arg.classes
  c.model.size = arg.size  # bf16 matmuls, float32 stream (autocast)
  c.input.update(data=arg.data, res=arg.res, batch_size=arg.batch,
                 crop="center", flip=True, num_workers=16)
  c.sampling = dict(num_steps=250, eta=0.0, cfg_scale=arg.cfg)
  c.ema_decay = 0.9999
  gen = dict(type="generation", num_samples=50_000, batch_size=256,
             num_steps=250, log_steps=50_000,
             inception_weights=arg.inception_weights,
             ref_stats=arg.ref_stats or None)
  c.evals = {"gen_cfg15": dict(gen, cfg_scale=1.5),
             "gen_cfg30": dict(gen, cfg_scale=3.0, log_steps=None)}

  if arg.runlocal:  # the same recipe, small enough for a 2-core CPU
    c.total_steps = 1000 if arg.steps == spec["steps"] else arg.steps
    c.log_every = 50
    c.ckpt_every = 200
    c.image_every = 200
    c.num_preview = 9
    c.latents.tokens = 64 if arg.tokens == spec["tokens"] else arg.tokens
    c.latents.stats_examples = 9
    c.num_classes = 9  # one class per embedded photo
    c.model.update(size="mu" if arg.size == spec["size"] else arg.size,
                   dtype="float32")
    # One centre crop per photo: the DiT learns 9 latents, one per class.
    c.input.update(data="embedded", res=64, batch_size=16, flip=False,
                   num_workers=0)
    c.optim.update(base_lr=0.128, warmup_steps=50)  # peak lr 8e-3 at 16
    c.ema_decay = 0.99
    c.sampling = dict(num_steps=50, eta=0.0, cfg_scale=3.0)
    c.evals = {"classes": dict(
        type="generation", num_samples=18, batch_size=8, cfg_scale=3.0,
        num_steps=50, nearest=True, inception_weights=arg.inception_weights,
        data=dict(data="embedded"))}
  return c
