"""Samples on disk as parts (io/sample_parts.py) and per-sample DDIM noise:
what makes sampling resumable and independent of the batch and mesh."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.diffusion import ddpm
from vitok_jax.io import sample_parts

SETTINGS = dict(step=4, cfg=1.5, seed=0, classes=[], num_steps=10, eta=0.0)


def _images(index):
  """A distinct uint8 image per sample number."""
  return (np.asarray(index)[:, None, None, None] * 7 +
          np.arange(2 * 2 * 3).reshape(1, 2, 2, 3)).astype(np.uint8)


def test_parts_cover_merge_and_read_in_sample_order(tmp_path):
  parts = sample_parts.Parts(str(tmp_path / "p"), SETTINGS)
  # Written out of order, in uneven pieces, as processes would.
  for index in ([4, 5, 6], [0, 1], [9], [2, 3], [7, 8]):
    index = np.asarray(index)
    parts.write(_images(index), index % 3, index)
  parts.write(_images([]), np.zeros(0), np.zeros(0, int))  # nothing: no file
  assert len(parts.files()) == 5
  np.testing.assert_array_equal(parts.covered(12), [True] * 10 + [False] * 2)
  out = str(tmp_path / "s.npz")
  parts.merge(10, out)
  with np.load(out) as f:
    np.testing.assert_array_equal(f["arr_0"], _images(np.arange(10)))
    np.testing.assert_array_equal(f["labels"], np.arange(10) % 3)
  got = list(parts.read_sharded(10, batch_size=4))
  assert [list(i) for _, _, i in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  for images, labels, index in got:
    np.testing.assert_array_equal(images, _images(index))
    np.testing.assert_array_equal(labels, index % 3)
  with pytest.raises(ValueError, match="lacks 2 of the 12 samples"):
    parts.merge(12, out)


def test_parts_made_with_other_settings_are_refused(tmp_path):
  sample_parts.Parts(str(tmp_path), SETTINGS)
  assert json.loads((tmp_path / "manifest.json").read_text())["cfg"] == 1.5
  sample_parts.Parts(str(tmp_path), dict(SETTINGS))  # the same: fine
  with pytest.raises(ValueError, match=r"'cfg': \(1.5, 3.0\)"):
    sample_parts.Parts(str(tmp_path), dict(SETTINGS, cfg=3.0))
  # A setting that only the folder's manifest has (a flow DiT's solver
  # against a DDPM run's settings) differs as well.
  with pytest.raises(ValueError, match=r"'eta': \(0.0, None\)"):
    sample_parts.Parts(str(tmp_path), {k: v for k, v in SETTINGS.items()
                                       if k != "eta"})


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_per_example_ddim_noise_does_not_depend_on_the_batch(eta):
  """With a key per example, example j's sample is the same alone or in any
  batch (eta > 0 draws DDIM noise per example too)."""
  sched = ddpm.linear_schedule(1000)
  eps_fn = lambda x, t: 0.1 * x + 1e-4 * t[:, None, None]
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(
      jnp.arange(4))
  x_T = jax.random.normal(jax.random.key(1), (4, 3, 2))
  run = lambda x, k: ddpm.ddim_sample(eps_fn, sched, x, k, num_steps=10,
                                           eta=eta)
  together = run(x_T, keys)
  for j in range(4):
    np.testing.assert_allclose(run(x_T[j:j + 1], keys[j:j + 1])[0],
                               together[j], rtol=1e-6, atol=1e-6)
  if eta:  # the noise is used, and it differs per example
    det = ddpm.ddim_sample(eps_fn, sched, x_T, num_steps=10)
    assert np.abs(np.asarray(together - det)).max() > 0.1
    per = run(jnp.repeat(x_T[:1], 2, 0), keys[:2])
    assert np.abs(np.asarray(per[0] - per[1])).max() > 0.1


# --------------------------------------------------------------------------
# The sampler (sampler.make_sample_fn) with a stand-in DiT and tokenizer
# --------------------------------------------------------------------------
NUM_CLASSES, TOKENS, CHANNELS = 5, 3, 2


class _LinearDiT:
  """eps or v = a x + w[label] + b t: depends on the input, the label (the
  null class NUM_CLASSES has its own row) and the time."""
  num_classes = NUM_CLASSES

  def apply(self, variables, x, t, y, grid):
    del grid
    p = variables["params"]
    return (p["a"] * x + p["w"][y][:, None, :] +
            p["b"] * t.astype(jnp.float32)[:, None, None])


class _Codec:
  num_tokens, channels = TOKENS, CHANNELS

  @staticmethod
  def decode(params, z):
    return params["gain"] * z


PARAMS = dict(a=np.float32(0.3), b=np.float32(1e-3), w=np.random.default_rng(
    0).normal(size=(NUM_CLASSES + 1, CHANNELS)).astype(np.float32))
TOK = dict(gain=np.float32(0.5))
STATS = (np.array([0.1, -0.2], np.float32), np.array([2.0, 0.5], np.float32))


def _sampler(kind, cfg_scale, num_steps, eta=0.0, solver="euler"):
  from vitok_jax.diffusion import sampler  # pylint: disable=g-import-not-at-top
  from vitok_jax.parallel import sharding as sh  # pylint: disable=g-import-not-at-top
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  fn = sampler.make_sample_fn(
      _LinearDiT(), _Codec(), ddpm.linear_schedule(1000), mesh=mesh,
      dit_params_sharding=sh.replicated(mesh), num_steps=num_steps, eta=eta,
      cfg_scale=cfg_scale, kind=kind, solver=solver)
  return lambda labels, index, seed=0: tuple(np.asarray(o, np.float64) for o in
                                             fn(PARAMS, TOK, STATS,
                                                np.asarray(labels, np.int32),
                                                np.asarray(index, np.int32),
                                                seed))


def _numpy_model(x, t, y):
  p = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
  return p["a"] * x + p["w"][y][:, None, :] + p["b"] * t


def _x_T(index, seed=0):
  """Sample i's starting noise, as diffusion/sampler.py documents it: the first key
  of split(fold_in(key(seed), i))."""
  first = lambda i: jax.random.split(jax.random.fold_in(jax.random.key(seed),
                                                       i))[0]
  return np.asarray(jax.vmap(lambda i: jax.random.normal(
      first(i), (TOKENS, CHANNELS)))(jnp.asarray(index)), np.float64)


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_guidance_is_uncond_plus_scale_times_the_difference(kind):
  """At CFG 2.5 the sampler steps on u + 2.5 (c - u) (DiT's scale; not
  c + 2.5 (c - u)): a 2-step DDIM on guided eps and a 1-step Euler on guided
  velocities, recomputed in numpy, then z = x0 std + mean, decoded."""
  labels, index, s = np.array([0, 3, 4, 1]), np.arange(4), 2.5
  guided = lambda x, t: (_numpy_model(x, t, np.full_like(labels, NUM_CLASSES))
                         + s * (_numpy_model(x, t, labels) -
                                _numpy_model(x, t, np.full_like(
                                    labels, NUM_CLASSES))))
  x = _x_T(index)
  if kind == "flow":  # t = 1 -> 0 in one step: x0 = x1 - v(x1, t = 1000)
    x0 = x - guided(x, 1000.0)
  else:  # DDIM (eta 0) at t = 500 then 0, abar = 1 after the last step
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000)).astype(np.float32)
    for t, prev in ((500, 1.0), (0, None)):
      a = float(abar[t])
      a_prev = 1.0 if prev is None else float(abar[0])
      eps = guided(x, float(t))
      pred = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
      x = np.sqrt(a_prev) * pred + np.sqrt(1 - a_prev) * eps
    x0 = x
  z_want = x0 * STATS[1] + STATS[0]
  images, z = _sampler(kind, s, 1 if kind == "flow" else 2)(labels, index)
  np.testing.assert_allclose(z, z_want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(images, 0.5 * z_want, rtol=1e-4, atol=1e-4)
  # The conventions differ here: c + 2.5 (c - u) is u + 3.5 (c - u).
  x = _x_T(index)
  diff = _numpy_model(x, 1000.0, labels) - _numpy_model(
      x, 1000.0, np.full_like(labels, NUM_CLASSES))
  assert np.abs(diff).max() > 0.5


def test_sample_i_depends_on_the_seed_and_i_alone():
  """One process, one seed: sample i is the same in a batch of 6 in order
  as in batches of 3 with the numbers in other orders (x_T, and DDIM with
  eta 1 draws noise at every step too; a flow DiT's x_T is the same);
  another seed gives other samples."""
  run = _sampler("ddpm", 2.0, 3, eta=1.0)
  labels = np.array([0, 1, 2, 3, 4, 0])
  _, whole = run(labels, np.arange(6))
  for order in ([5, 3, 1], [4, 2, 0], [2, 0, 4]):
    _, part = run(labels[order], order)
    np.testing.assert_allclose(part, whole[order], rtol=1e-5, atol=1e-5)
  assert np.abs(run(labels, np.arange(6), seed=1)[1] - whole).min() > 1e-3
