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
           random_subset=False):
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
