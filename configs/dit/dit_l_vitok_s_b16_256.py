r"""DiT-L on ViTok S-B/16 latents at 256p: the generation sweep model
(paper §2.3, Fig. 5): 256 tokens x c=16, ImageNet classes, DDPM
1000 steps, batch 256, 500k steps, DDIM 250 steps, CFG 1.5 and 3.0.

  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR --workdir=DIR
  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR,shards=LATENTS_DIR --workdir=DIR
  python -m vitok_jax.sample --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR --workdir=DIR --num=50000 --cfg=1.5

Arguments: tokenizer (a ViTok run's workdir), shards (latents written by
tools/encode_dataset.py; default: encode on the fly), size (mu|S|B|L|XL),
res, tokens, c, batch, steps, classes, data, cfg, inception_weights,
ref_stats (tools/compute_ref_stats.py over the training set), labels
(random | balanced | data), runlocal; for video DiTs frames, fps and
i3d_weights (gFVD).
Fig. 5 (a DiT per Fig. 2 tokenizer, p=8, c=4 at 256p -> 1024 tokens):
  --config=configs/dit/dit_l_vitok_s_b16_256.py:tokenizer=VITOK_DIR,tokens=1024,c=4

`:runlocal` is the README's generation chain on a 2-core CPU: a tiny DiT on
the latents that the demo ViTok (s_b16_256.py:runlocal) gives the 9 embedded
photos, one class per photo, a few hundred steps; samples at CFG 3.0 are
scored against the photos by PSNR (is a sample nearest to its own class?):
  python -m vitok_jax.train --config=configs/dit/dit_l_vitok_s_b16_256.py:runlocal,tokenizer=/tmp/vitok_local --workdir=/tmp/dit_local
"""
from vitok_jax import config_utils
from vitok_jax.evaluators import common as evaluators
from vitok_jax.trainers import dit

ARGS = dict(size="L", tokenizer="", shards="", res=256, tokens=256, c=16,
            batch=256, steps=500_000, classes=1000,
            data="tfds:imagenet2012:train", cfg=1.5,
            inception_weights="weights/fid_inception_v3.npz", ref_stats="",
            frames=1, fps=8.0, i3d_weights="", labels="random",
            runlocal=False)
# The README's chain on 2 cores: the demo ViTok's 64 tokens, a tiny DiT.
RUNLOCAL = dict(size="mu", tokens=64, res=64, batch=16, steps=1000, classes=9,
                data="embedded", cfg=3.0)


def get_config(arg=None):
  return make(**config_utils.parse_arg(arg, local_defaults=RUNLOCAL, **ARGS))


def make(**args):
  """The config for these arguments (derived configs call this; videos set
  frames and fps)."""
  a = config_utils.arguments(ARGS, args, who=__name__)
  config = dit.default_config()
  config.total_steps = a.steps
  config.log_every = 100
  config.ckpt_every = 5000
  config.image_every = 5000
  config.tokenizer.workdir = a.tokenizer
  config.latents.source = f"shards:{a.shards}" if a.shards else "encode"
  config.latents.tokens, config.latents.channels = a.tokens, a.c
  config.num_classes = a.classes
  config.model.size = a.size  # bf16 matmuls, float32 stream (autocast)
  config.input.update(data=a.data, res=a.res, frames=a.frames, fps=a.fps,
                      batch_size=a.batch, crop="center", flip=True,
                      num_workers=16)
  config.sampling.update(num_steps=250, eta=0.0, cfg_scale=a.cfg)
  config.ema_decay = 0.9999
  # ADM's protocol: 10k samples at the periodic evaluations, 50k at the end
  # of the run and in the eval job; uniform random labels.
  gen = dict(num_samples=10_000, final_num_samples=50_000, batch_size=256,
             num_steps=250,
             inception_weights=a.inception_weights, ref_stats=a.ref_stats,
             i3d_weights=a.i3d_weights, labels=a.labels)
  config.evals = {
      "gen_cfg15": evaluators.config("generation", cfg_scale=1.5,
                                     log_steps=50_000, **gen),
      "gen_cfg30": evaluators.config("generation", cfg_scale=3.0, **gen)}

  if a.runlocal:  # the same recipe, small enough for a 2-core CPU
    config.log_every = 50
    config.ckpt_every = 200
    config.image_every = 200
    config.num_preview = 9
    config.latents.stats_examples = 9  # one class per embedded photo
    config.model.dtype = "float32"
    # One centre crop per photo: the DiT learns 9 latents, one per class.
    config.input.update(flip=False, num_workers=0)
    config.optim.update(base_lr=0.128, warmup_steps=50)  # peak lr 8e-3 at 16
    config.ema_decay = 0.99
    config.sampling.num_steps = 50
    config.evals = {"classes": evaluators.config(
        "generation", num_samples=18, final_num_samples=18, batch_size=8,
        cfg_scale=a.cfg,
        num_steps=50, nearest=True, inception_weights=a.inception_weights,
        i3d_weights=a.i3d_weights, data=dict(data="embedded"))}
  return config
