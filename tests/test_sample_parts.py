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
