"""StyleGAN2 discriminator: blur on H and W only, shapes, GAN losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax import losses
from vitok_jax.models import discriminator as disc


def test_blur_pool_acts_on_height_and_width_only():
  # Varies along H only (stripes), one channel only.
  h = np.arange(16, dtype=np.float32) % 2
  x = np.zeros((1, 16, 16, 3), np.float32)
  x[..., 1] = h[:, None]
  y = np.asarray(disc.blur_pool(jnp.asarray(x)))
  assert y.shape == (1, 8, 8, 3)
  # No channel mixing: the empty channels stay empty.
  np.testing.assert_array_equal(y[..., 0], 0)
  np.testing.assert_array_equal(y[..., 2], 0)
  # Constant along W stays constant along W (away from the zero-padded edge).
  np.testing.assert_allclose(y[0, :, 1:-1, 1], y[0, :, 1:2, 1] * np.ones((1, 6)), rtol=1e-6)
  # Along H the 0/1 stripes are low-passed to their mean 0.5 (interior rows).
  np.testing.assert_allclose(y[0, 1:-1, 3, 1], 0.5, rtol=1e-6)
  # And the transposed image is blurred the same way along W.
  yt = np.asarray(disc.blur_pool(jnp.asarray(x.transpose(0, 2, 1, 3))))
  np.testing.assert_allclose(yt, y.transpose(0, 2, 1, 3), rtol=1e-6)


def test_blur_kernel_is_normalised_binomial():
  k = disc.blur_kernel()
  np.testing.assert_allclose(k.sum(), 1.0)
  np.testing.assert_allclose(k[0], np.array([1, 3, 3, 1]) / 64)


def test_discriminator_sizes_itself_from_resolution():
  d = disc.Discriminator(channel_base=256, channel_max=32)
  x = jnp.zeros((4, 32, 32, 3))
  params = d.init(jax.random.key(0), x)["params"]
  assert sorted(k for k in params if k.startswith("block_")) == ["block_16", "block_32", "block_8"]
  assert d.apply({"params": params}, x).shape == (4,)
  params64 = d.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))["params"]
  assert "block_64" in params64
  with pytest.raises(ValueError, match="power-of-two"):
    d.init(jax.random.key(0), jnp.zeros((2, 48, 48, 3)))


def test_minibatch_stddev_adds_a_channel():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 5))
  y = disc.minibatch_stddev(x, 4)
  assert y.shape == (8, 4, 4, 6)
  assert float(y[..., -1].min()) > 0


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
