"""StyleGAN2 discriminator: blur on H and W only, shapes, GAN losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax import losses
from vitok_jax.models import discriminator as disc


def test_blur_acts_on_height_and_width_only():
  # Varies along H only (stripes), one channel only.
  h = np.arange(16, dtype=np.float32) % 2
  x = np.zeros((1, 16, 16, 3), np.float32)
  x[..., 1] = h[:, None]
  y = np.asarray(disc.blur(jnp.asarray(x), (2, 2)))
  assert y.shape == (1, 17, 17, 3)  # H + 2 + 2 - 3
  # No channel mixing: the empty channels stay empty.
  np.testing.assert_array_equal(y[..., 0], 0)
  np.testing.assert_array_equal(y[..., 2], 0)
  # Constant along W stays constant along W (away from the zero-padded edge).
  np.testing.assert_allclose(y[0, :, 3:-3, 1], y[0, :, 3:4, 1] * np.ones((1, 11)), rtol=1e-6)
  # Along H the 0/1 stripes are low-passed to their mean 0.5 (interior rows).
  np.testing.assert_allclose(y[0, 3:-3, 8, 1], 0.5, rtol=1e-6)
  # And the transposed image is blurred the same way along W.
  yt = np.asarray(disc.blur(jnp.asarray(x.transpose(0, 2, 1, 3)), (2, 2)))
  np.testing.assert_allclose(yt, y.transpose(0, 2, 1, 3), rtol=1e-6)


def _torch_dblock(x, p, blur_first=True):
  """The published StyleGAN2 ResBlock, written independently in torch
  (NCHW): conv3x3 -> act; blur(pad 2) -> conv3x3 stride 2 -> act;
  skip: blur(pad 1) -> conv1x1 stride 2 (no bias); (main + skip) / sqrt 2.
  Equalised lr: weight * 1/sqrt(fan_in); act: leaky_relu(x + b, 0.2) * sqrt 2."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  t = lambda a: torch.from_numpy(np.array(a, np.float32))
  x = t(x).permute(0, 3, 1, 2)
  k = torch.tensor([1.0, 3.0, 3.0, 1.0])
  k = torch.outer(k, k)
  k = (k / k.sum())[None, None]

  def blur(v, pad, stride=1):
    return F.conv2d(F.pad(v, (pad, pad, pad, pad)),
                    k.repeat(v.shape[1], 1, 1, 1), groups=v.shape[1],
                    stride=stride)

  def conv(v, w, stride=1, padding=0):  # w: our HWIO kernel
    w = t(w).permute(3, 2, 0, 1)
    return F.conv2d(v, w / np.sqrt(w[0].numel()), stride=stride, padding=padding)

  def act(v, b):
    return F.leaky_relu(v + t(b)[None, :, None, None], 0.2) * np.sqrt(2)

  h = act(conv(x, p["conv0"]["kernel"], padding=1), p["conv0"]["bias"])
  if blur_first:
    h = act(conv(blur(h, 2), p["conv1"]["kernel"], stride=2), p["conv1"]["bias"])
  else:  # conv at full resolution, then blur-pool
    h = blur(act(conv(h, p["conv1"]["kernel"], padding=1), p["conv1"]["bias"]),
             1, stride=2)
  skip = conv(blur(x, 1), p["skip"]["kernel"], stride=2)
  return ((h + skip) / np.sqrt(2)).permute(0, 2, 3, 1).numpy()


def test_dblock_matches_published_stylegan2_order():
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 8)).astype(np.float32)
  block = disc.DBlock(12)
  # Jitted: one compile, not one per op (eager Flax on 2 cores: seconds).
  params = jax.jit(block.init)(jax.random.key(0), x)["params"]
  assert "bias" not in params["skip"]  # the skip conv has no bias
  ours = np.asarray(jax.jit(block.apply)({"params": params}, x))
  assert ours.shape == (2, 8, 8, 12)
  np.testing.assert_allclose(ours, _torch_dblock(x, params), atol=1e-5)
  # Blur-pool *after* a full-resolution conv (this module's old order)
  # gives another function: the test tells the orders apart.
  old = _torch_dblock(x, params, blur_first=False)
  assert np.abs(ours - old).max() > 1e-2


def test_equalised_lr_weights_are_unit_normal_and_scaled_at_use():
  d = disc.Discriminator(channel_base=256, channel_max=32)
  params = jax.jit(d.init)(jax.random.key(0),
                           jnp.zeros((2, 16, 16, 3)))["params"]
  k = np.asarray(params["block_16"]["conv1"]["kernel"])
  assert abs(k.std() - 1.0) < 0.1  # stored N(0, 1)
  # Activations keep about unit scale through the blocks (gain sqrt 2).
  x = jax.random.normal(jax.random.key(1), (16, 16, 16, 3))
  block = disc.DBlock(32)
  h = jax.jit(lambda x: block.apply(
      {"params": block.init(jax.random.key(2), x)["params"]}, x))(x)
  assert 0.3 < float(jnp.std(h)) < 3.0


def test_blur_kernel_is_normalised_binomial():
  k = disc.blur_kernel()
  np.testing.assert_allclose(k.sum(), 1.0)
  np.testing.assert_allclose(k[0], np.array([1, 3, 3, 1]) / 64)


def test_discriminator_sizes_itself_from_resolution():
  d = disc.Discriminator(channel_base=256, channel_max=32)
  x = jnp.zeros((4, 32, 32, 3))
  params = jax.eval_shape(d.init, jax.random.key(0), x)["params"]
  assert sorted(k for k in params if k.startswith("block_")) == ["block_16", "block_32", "block_8"]
  assert jax.eval_shape(d.apply, {"params": params}, x).shape == (4,)
  params64 = jax.eval_shape(d.init, jax.random.key(0),
                            jnp.zeros((2, 64, 64, 3)))["params"]
  assert "block_64" in params64
  with pytest.raises(ValueError, match="power-of-two"):
    jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((2, 48, 48, 3)))


def _np_minibatch_stddev(x, group):
  """StyleGAN2-ADA's MinibatchStdLayer (num_channels=1) in float64 loops:
  example i is member i // (N/G) of group i % (N/G); per group, the std over
  its G members of each feature (population variance + 1e-8 under the
  root), averaged over H, W, C, appended as a constant channel."""
  n, h, w, c = x.shape
  x = x.astype(np.float64)
  groups = n // group
  stat = np.zeros(groups)
  for k in range(groups):
    members = x[k::groups]  # [G, H, W, C]
    var = ((members - members.mean(0)) ** 2).mean(0)
    stat[k] = np.sqrt(var + 1e-8).mean()
  extra = np.empty((n, h, w, 1))
  for i in range(n):
    extra[i] = stat[i % groups]
  return np.concatenate([x, extra], axis=-1)


@pytest.mark.parametrize("n,group,g", [(8, 4, 4), (8, 8, 8), (12, 8, 4)])
def test_minibatch_stddev_matches_stylegan2(n, group, g):
  # Per-example scales make every group's statistic different.
  rng = np.random.default_rng(n + group)
  x = (rng.normal(size=(n, 4, 4, 5)) * rng.uniform(0.2, 3.0, (n, 1, 1, 1)) +
       rng.normal(size=(n, 1, 1, 1))).astype(np.float32)
  y = np.asarray(disc.minibatch_stddev(jnp.asarray(x), group))
  assert y.shape == (n, 4, 4, 6)
  np.testing.assert_array_equal(y[..., :5], x)
  # A group size that does not divide N falls back to gcd(group, N) (the
  # official layer requires N % G == 0).
  np.testing.assert_allclose(y, _np_minibatch_stddev(x, g), rtol=1e-5)


def test_gan_losses():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
  l, aux = losses.discriminator(real, fake, "hinge")
  np.testing.assert_allclose(l, (0 + 0.5) / 2 + (0 + 1) / 2)
  np.testing.assert_allclose(losses.generator_adversarial(fake, "hinge"), 1.0)
  l_ns, _ = losses.discriminator(real, fake, "non_saturating")
  expected = np.mean(np.log1p(np.exp(-np.array([2.0, 0.5])))) + np.mean(np.log1p(np.exp([-2.0, 0.0])))
  np.testing.assert_allclose(l_ns, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="gan_loss"):
    losses.discriminator(real, fake, "wgan")
  # R1 of a linear D is the squared norm of its weights.
  w = jnp.arange(12.0).reshape(1, 2, 2, 3)
  r1, _ = losses.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), jnp.ones((3, 2, 2, 3)))
  np.testing.assert_allclose(r1, float(jnp.sum(w**2)))
