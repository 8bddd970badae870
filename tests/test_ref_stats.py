"""Reference statistics are computed once, cached by name, and reused; a
start that would compute them over too many examples names the tool."""
import ml_collections
import numpy as np
import pytest

from tests.helpers import load_tool
from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import scoring
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import ref_stats
from vitok_jax.parallel import sharding as sh


@pytest.fixture
def counted_passes(monkeypatch):
  """ref_stats.compute, counting its passes over the data (the
  statistics of fixed features, so the cached values can be checked)."""
  calls = []
  feats = np.random.default_rng(0).normal(size=(9, 4))

  def fake(data_config, inception_params, num_examples=None, batch_size=50,
           random_subset=False, inception_input="pytorch_fid"):
    del inception_input  # fixed features, whatever the input
    calls.append((data_config.data, data_config.res, num_examples,
                  random_subset))
    stats = metrics.GaussianStats(4)
    stats.update(feats)
    return ref_stats.RefStats(*stats.mean_cov(), stats.n, stats.mean_cov(),
                              feats)

  monkeypatch.setattr(ref_stats, "compute", fake)
  return calls, feats


def _data(res=32):
  return input_pipeline.default_config(data="embedded", res=res, frames=1)


def test_computed_once_then_reused_by_evaluators_and_sample(
    counted_passes, tmp_path):
  calls, feats = counted_passes
  weights = str(tmp_path / "w" / "fid_inception_v3.npz")
  path = ref_stats.default_path(_data(), weights)
  assert path == str(tmp_path / "w" / "ref_stats" /
                     "embedded_32px_all_v2.npz")
  for _ in range(3):  # training start, eval job, sample
    ref = ref_stats.load_or_compute(_data(), None, weights)
    np.testing.assert_allclose(ref.mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ref.sigma, np.cov(feats, rowvar=False),
                               rtol=1e-10)
    np.testing.assert_array_equal(ref.features, feats)  # precision/recall
    np.testing.assert_allclose(ref.spatial[0], feats.mean(0), rtol=1e-12)
  assert len(calls) == 1
  # Another resolution or count (the first 5, or a random 5) is another
  # file and another pass.
  ref_stats.load_or_compute(_data(64), None, weights)
  ref_stats.load_or_compute(_data(), None, weights, num_examples=5)
  ref_stats.load_or_compute(_data(), None, weights, num_examples=5,
                            random_subset=True)
  assert len(calls) == 4 and calls[-1][-1] is True
  assert sorted(p.name for p in (tmp_path / "w" / "ref_stats").iterdir()) == [
      "embedded_32px_5_v2.npz", "embedded_32px_all_v2.npz",
      "embedded_32px_random5_v2.npz", "embedded_64px_all_v2.npz"]


def test_a_cache_from_before_sfid_is_recomputed(counted_passes, tmp_path):
  calls, _ = counted_passes
  weights = str(tmp_path / "fid_inception_v3.npz")
  path = ref_stats.default_path(_data(), weights)
  (tmp_path / "ref_stats").mkdir()
  np.savez(path, mu=np.zeros(4), sigma=np.eye(4))  # mu and sigma only
  ref = ref_stats.load_or_compute(_data(), None, weights)
  assert len(calls) == 1 and ref.features is not None
  assert ref_stats.load(path).spatial is not None


def test_generation_evaluator_uses_the_cache(counted_passes, tmp_path,
                                             monkeypatch):
  calls, _ = counted_passes
  monkeypatch.setattr(scoring.inception, "load", lambda path: {"w": 0.0})
  mesh = sh.make_mesh([("data", -1)])
  config = ml_collections.ConfigDict(dict(
      type="generation", num_samples=8, batch_size=8,
      inception_weights=str(tmp_path / "inc.npz")))
  for _ in range(2):
    ev = generation.Evaluator(
        "gen", config, predict_fns=dict(sample=lambda cfg, steps: None,
                                        num_classes=9),
        mesh=mesh, input_config=_data())
    assert ev.nets.ref_stats.mu.shape == (4,)
  # The default reference is all of the data set: no subset.
  assert len(calls) == 1 and calls[0][2] is None


def test_too_many_examples_name_the_tool_which_fills_the_cache(
    counted_passes, tmp_path, monkeypatch):
  calls, _ = counted_passes
  monkeypatch.setattr(ref_stats, "MAX_AT_START", 5)  # embedded has 9
  weights = str(tmp_path / "fid_inception_v3.npz")
  with pytest.raises(ValueError, match="read 9 examples at every start") as e:
    ref_stats.load_or_compute(_data(), None, weights)
  assert not calls
  cmd = str(e.value).splitlines()[-1].split()
  assert cmd[:2] == ["python", "tools/compute_ref_stats.py"]
  tool = load_tool("compute_ref_stats")
  import vitok_jax.models.inception as inception_lib
  monkeypatch.setattr(inception_lib, "load", lambda path: {"w": 0.0})
  tool.main(cmd[2:])  # the command as printed
  assert len(calls) == 1
  ref_stats.load_or_compute(_data(), None, weights)  # now reused
  assert len(calls) == 1


def test_each_cache_is_another_file_for_another_subset_size_or_seed(
    counted_passes, tmp_path, monkeypatch):
  """The Inception and the gFVD reference caches of a seeded random subset
  are named by its size and (when not 0) its seed: another size or seed is
  another file and another pass, the same ones are reused."""
  calls, feats = counted_passes
  weights = str(tmp_path / "fid_inception_v3.npz")
  fvd_calls = []
  clip_feats = np.random.default_rng(1).normal(size=(6, 400))

  def fake_fvd(data_config, i3d_params, num_examples=None, batch_size=8):
    fvd_calls.append((num_examples, ref_stats.SUBSET_SEED))
    stats = metrics.GaussianStats(400)
    stats.update(clip_feats * (1 + len(fvd_calls)))  # each pass its own
    return stats

  monkeypatch.setattr(ref_stats, "compute_fvd", fake_fvd)
  video = input_pipeline.default_config(data="embedded", res=32, frames=16,
                                        fps=8.0)
  i3d_weights = str(tmp_path / "i3d" / "i3d_kinetics400.npz")

  def both(n):
    ref = ref_stats.load_or_compute(_data(), None, weights, num_examples=n,
                                    random_subset=True)
    np.testing.assert_allclose(ref.mu, feats.mean(0), rtol=1e-12)
    return ref_stats.load_or_compute_fvd(video, None, i3d_weights,
                                         num_examples=n)

  first = both(5)
  np.testing.assert_allclose(first[0], 2 * clip_feats.mean(0), rtol=1e-12)
  again = both(5)  # reused: the first pass's numbers
  np.testing.assert_array_equal(again[0], first[0])
  assert len(calls) == 1 and fvd_calls == [(5, 0)]
  both(6)
  assert len(calls) == 2 and fvd_calls[-1] == (6, 0)
  monkeypatch.setattr(ref_stats, "SUBSET_SEED", 3)
  third = both(5)
  assert len(calls) == 3 and fvd_calls[-1] == (5, 3)
  np.testing.assert_allclose(third[0], 4 * clip_feats.mean(0), rtol=1e-12)
  both(5)
  assert len(calls) == 3 and len(fvd_calls) == 3
  inc = sorted(p.name for p in (tmp_path / "ref_stats").iterdir())
  assert inc == ["embedded_32px_random5_v2.npz",
                 "embedded_32px_random5seed3_v2.npz",
                 "embedded_32px_random6_v2.npz"], inc
  assert len(list((tmp_path / "i3d" / "ref_stats").iterdir())) == 3
