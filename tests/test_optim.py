"""The learning rate follows the batch: peak lr = base_lr * batch * frames / 256."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.vitok import s_b16_256
from vitok_jax.models import vitok
from vitok_jax import optim
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import tokenizer


def test_peak_lr_rule():
  c = s_b16_256.get_config()
  assert c.optim.base_lr == 1e-4 and "lr" not in c.optim
  assert optim.peak_lr(c.optim, c.input) == pytest.approx(4e-4)  # batch 1024
  c.input.batch_size = 256
  assert optim.peak_lr(c.optim, c.input) == pytest.approx(1e-4)
  c.input.frames = 16  # 256 clips of 16 frames: 4096 samples
  assert optim.peak_lr(c.optim, c.input) == pytest.approx(1.6e-3)


@pytest.mark.parametrize("batch,frames", [(8, 1), (16, 1), (8, 2)])
def test_trainer_schedule_peaks_at_the_scaled_lr(batch, frames):
  c = s_b16_256.get_config("runlocal,lpips=0")
  c.input.update(res=32, batch_size=batch, frames=frames)
  c.optim.update(base_lr=0.01, warmup_steps=0)  # step 0 of a cosine = peak
  c.evals = {}
  c = tokenizer.resolve_config(c)
  setup = tokenizer.make_setup(c, sh.make_mesh(c.mesh))
  state = setup.init(jax.random.key(0))
  x = np.zeros(tokenizer.input_shape(c), np.float32)
  _, m = setup.step(state, sh.put_global_batch(x, setup.batch_sharding), {})
  np.testing.assert_allclose(float(m["lr"]), 0.01 * batch * frames / 256,
                             rtol=1e-6)


def _optim_config(**kw):
  base = dict(base_lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.1, warmup_steps=0,
              end_lr_factor=0.0, grad_clip=None, freeze=())
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_weight_decay_shrinks_kernels_only():
  # Zero gradients: Adam's step is 0, so one AdamW step is the decay alone,
  # p <- p (1 - lr wd) on `*/kernel` leaves and nothing elsewhere. The tree
  # is ViTok's (names and shapes) filled with random values.
  model = vitok.create("mu-mu/8", 4, mask_lengths=(1,), num_latent_tokens=2)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32),
                        shapes["params"])
  lr, wd = 0.5, 0.1
  tx, _ = optim.make(_optim_config(weight_decay=wd), params, 10, lr)
  step = jax.jit(lambda p: optax.apply_updates(
      p, tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0]))
  new = step(params)
  kinds = set()
  for (path, p), n in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(new)):
    name = path[-1].key
    kinds.add(name)
    if name == "kernel":
      np.testing.assert_allclose(n, np.asarray(p) * (1 - lr * wd), rtol=1e-6)
    else:
      np.testing.assert_array_equal(n, p, err_msg=jax.tree_util.keystr(path))
  # Biases, norm scales, position embeddings and learned tokens are spared.
  assert {"kernel", "bias", "scale", "mask_token", "latent_tokens",
          "dec_mask_token"} <= kinds


def test_grad_clip_scales_the_gradient_to_the_clip_norm():
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros((4,))}}
  rng = np.random.default_rng(0)

  def grad_of_norm(norm):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    total = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
    return jax.tree.map(lambda x: x * norm / total, g)

  g1, g2 = grad_of_norm(5.0), grad_of_norm(0.5)  # above, below the clip 1
  c = _optim_config(grad_clip=1.0, weight_decay=0.01)
  tx, sched = optim.make(c, params, 10, 1e-2)
  state = tx.init(params)
  p = params
  for k, g in enumerate((g1, g2)):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    if k == 0:  # Adam's first moment sees the gradient scaled to norm 1
      mu = optax.tree_utils.tree_get(state, "mu")
      jax.tree.map(lambda m, g: np.testing.assert_allclose(
          m, (1 - c.b1) * g / 5.0, rtol=1e-6), mu, g1)
  # The same as optax's AdamW fed the gradients clipped by hand (Adam is
  # not scale invariant over two steps of different norms).
  ref = optax.adamw(sched, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                    mask=optim.decay_mask(params))
  ref_state, q = ref.init(params), params
  for g in (jax.tree.map(lambda x: x / 5.0, g1), g2):
    u, ref_state = ref.update(g, ref_state, q)
    q = optax.apply_updates(q, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p, q)
  unclipped = params
  tx0, _ = optim.make(_optim_config(grad_clip=0.0, weight_decay=0.01), params, 10, 1e-2)
  s0 = tx0.init(params)
  for g in (g1, g2):
    u, s0 = tx0.update(g, s0, unclipped)
    unclipped = optax.apply_updates(unclipped, u)
  assert not np.allclose(unclipped["dense"]["kernel"], p["dense"]["kernel"])


@pytest.mark.parametrize("warmup", [0, 10])
def test_schedule_ends_at_end_lr_factor_times_peak(warmup):
  peak, total, end = 2e-3, 100, 0.1
  _, sched = optim.make(_optim_config(warmup_steps=warmup, end_lr_factor=end),
                        {"w": jnp.zeros(2)}, total, peak)

  def closed_form(s):  # linear warm-up, then cosine from peak to end * peak
    if s < warmup:
      return peak * s / warmup
    t = min(s - warmup, total - warmup) / (total - warmup)
    return end * peak + (1 - end) * peak * 0.5 * (1 + np.cos(np.pi * t))

  for s in (0, 5, warmup, 37, 80, total, total + 20):
    np.testing.assert_allclose(float(sched(s)), closed_form(s), rtol=1e-5,
                               err_msg=f"step {s}")
  np.testing.assert_allclose(float(sched(total)), end * peak, rtol=1e-5)


DIT_CONFIGS = ["dit_l_vitok_s_b16_256", "dit_xl_vitok_s_b16_256",
               "dit_xl_vitok_s_b16_512", "dit_l_vitok_s_b4x8_128"]


@pytest.mark.parametrize("name", DIT_CONFIGS)
def test_dit_peak_lr_has_no_frames_factor(name):
  """The DiT recipe: 1e-4 at batch 256, constant; a video latent is one
  sample (the tokenizer's batch x frames rule is not the DiT's)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module(f"configs.dit.{name}")
  c = dit.resolve_config(mod.get_config("tokenizer=/runs/t"))
  assert dit.peak_lr(c) == pytest.approx(1e-4)  # batch 256, any frames
  assert c.optim.end_lr_factor == 1.0 and c.optim.warmup_steps == 0
  local = dit.resolve_config(mod.get_config("runlocal,tokenizer=/runs/t"))
  assert dit.peak_lr(local) == pytest.approx(
      local.optim.base_lr * local.input.batch_size / 256)


def test_video_dit_step_trains_at_the_frameless_lr():
  """The lr the video DiT's step reports is base_lr x batch / 256."""
  from configs.dit import dit_l_vitok_s_b4x8_128  # pylint: disable=g-import-not-at-top
  from vitok_jax.diffusion import codec as codec_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  c = dit.resolve_config(dit_l_vitok_s_b4x8_128.get_config(
      "runlocal,tokenizer=/runs/t"))
  c.optim.warmup_steps = 0
  c.latents.source = "shards:unused"  # the step takes latents
  assert c.input.frames == 16
  codec = codec_lib.Codec(vitok.create("mu-mu/2x8", 16), None, 32, 16)
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  setup = dit.make_setup(c, mesh, codec)
  state = setup.init(jax.random.key(0))
  z = np.zeros((c.input.batch_size, codec.num_tokens, 16), np.float32)
  y = np.zeros((c.input.batch_size,), np.int32)
  _, m = setup.step(state, z, y, {})
  assert float(m["lr"]) == pytest.approx(c.optim.base_lr * 8 / 256)
