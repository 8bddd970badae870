"""ADM's evaluator protocol in the generation evaluator: improved
precision/recall against torch-fidelity's, sFID against ADM's numpy
formulas, DiT's random labels, the periodic and final sample budgets, and an
Inception compiled once per run. The Inception here is a fixed random
linear map (its port is tested in test_inception.py), so that every number
can be recomputed independently from the images the sampler made."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from tests import torch_reference as tr
from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import precision_recall as pr
from vitok_jax.evaluators import ref_stats
from vitok_jax.models import inception
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh

SPATIAL = 24  # ADM's 2023 dims need > 2023 samples for a full-rank sigma


def adm_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """ADM evaluator's formula (guided-diffusion evaluations/evaluator.py):
  scipy's sqrtm of the product, an eps offset if it is not finite."""
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(
      covmean)


def adm_statistics(features):
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


def torch_fidelity_pr(samples, refs, k=3):
  prc = tr.import_torch_fidelity_prc()
  t = lambda a: tr.torch.from_numpy(np.asarray(a, np.float32))
  return prc.calculate_precision_recall_full(t(samples), t(refs), k)


@pytest.mark.parametrize("block", [10_000, 37])
def test_precision_recall_is_torch_fidelitys(block):
  rng = np.random.default_rng(0)
  refs = rng.normal(size=(150, 16))
  samples = 0.7 * rng.normal(size=(110, 16)) + 0.6  # partly off the manifold
  p, r = pr.precision_recall(samples, refs, block=block)
  want = torch_fidelity_pr(samples, refs)
  assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95, want  # not trivial
  assert (p, r) == (pytest.approx(want[0], abs=1e-6),
                    pytest.approx(want[1], abs=1e-6))
  # The radii: squared distance to the 3rd neighbour, the row itself the 0th.
  d = ((refs[:, None] - refs[None]) ** 2).sum(-1)
  np.testing.assert_allclose(pr.radii(refs, block=block),
                             np.sort(d, axis=1)[:, 3], rtol=1e-4)


def test_precision_recall_errors_name_the_problem():
  with pytest.raises(ValueError, match="k=3 needs more than 3"):
    pr.radii(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="same D"):
    pr.precision_recall(np.zeros((5, 4)), np.zeros((5, 3)))


def test_gather_rows_places_each_row_once():
  rows = np.arange(12.0).reshape(6, 2)
  out = multihost.gather_rows(rows, np.array([5, 0, 1, 2, 3, 4]), 6)
  np.testing.assert_array_equal(out[5], rows[0])
  with pytest.raises(ValueError, match="each must appear once"):
    multihost.gather_rows(rows, np.array([0, 0, 1, 2, 3, 4]), 6)


def test_labels_are_uniform_random_by_default_and_balanced_on_request():
  y = generation.sample_labels(1000, 10, seed=4)
  np.testing.assert_array_equal(
      y, np.random.default_rng(4).integers(0, 10, 1000))
  assert not np.array_equal(y[:10], np.arange(10))
  assert not np.array_equal(y, generation.sample_labels(1000, 10, seed=5))
  np.testing.assert_array_equal(
      np.bincount(generation.sample_labels(1000, 10, "balanced")), [100] * 10)
  with pytest.raises(ValueError, match="labels='sorted'"):
    generation.sample_labels(4, 2, "sorted")


def test_reference_subset_is_seeded_random_not_the_first_rows():
  rows = input_pipeline.subset_rows(1000, 50, seed=0)
  assert len(set(rows)) == 50 and (np.diff(rows) > 0).all()
  assert rows.max() > 500  # not the first classes of a sorted folder
  np.testing.assert_array_equal(rows, input_pipeline.subset_rows(1000, 50, 0))
  np.testing.assert_array_equal(input_pipeline.subset_rows(1000, 50, None),
                                np.arange(50))
  # The embedded photos' label is their number: the rows read are `rows`.
  cfg = input_pipeline.default_config(data="embedded", res=32, frames=1)
  want = input_pipeline.subset_rows(9, 4, seed=1)
  got = np.concatenate([b["label"][b["mask"]] for b in
                        input_pipeline.make_eval_dataset(cfg, 2, 4,
                                                         subset_seed=1)])
  np.testing.assert_array_equal(got, want)


def _seeded_rows(total, n, seed):
  """A seeded random n of total rows, in row order, written out here: numpy's
  Generator(seed).choice without replacement."""
  return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def test_subset_rows_are_the_same_on_both_data_paths_and_process_counts(
    tmp_path, monkeypatch):
  """On 9 examples, a subset of 4: the seeded random rows (not the first 4),
  read alike by the image path (make_eval_dataset, on 1 process and as each
  of 2) and the latent-shards path (iterate_latents); another seed, other
  rows."""
  from vitok_jax.data import latent_shards  # pylint: disable=g-import-not-at-top
  shards = str(tmp_path / "shards")
  latent_shards.write_meta(shards, dict(num_shards=3, tokens=1, channels=2))
  for k, rows in enumerate((range(0, 4), range(4, 8), range(8, 9))):
    rows = np.asarray(rows)
    latent_shards.write_shard(shards, k, np.repeat(rows[:, None, None], 2, -1),
                              rows)  # latent = its row number
  cfg = input_pipeline.default_config(data="embedded", res=RES, frames=1)
  chosen = {}
  for seed in (1, 2):
    want = _seeded_rows(9, 4, seed)
    chosen[seed] = want
    from_shards = np.concatenate(list(latent_shards.iterate_latents(
        shards, 4, seed=seed)))
    np.testing.assert_array_equal(from_shards[:, 0, 0], want)
    # The embedded photos' label is their row: the rows read.
    got = np.concatenate([b["label"][b["mask"]] for b in
                          input_pipeline.make_eval_dataset(
                              cfg, 2, 4, subset_seed=seed)])
    np.testing.assert_array_equal(got, want)
    # As each of 2 processes: together, each row once, at its position.
    seen = {}
    for pid in (0, 1):
      monkeypatch.setattr(jax, "process_index", lambda pid=pid: pid)
      monkeypatch.setattr(jax, "process_count", lambda: 2)
      for b in input_pipeline.make_eval_dataset(cfg, 2, 4, subset_seed=seed):
        for i, y in zip(b["index"][b["mask"]], b["label"][b["mask"]]):
          assert int(i) not in seen
          seen[int(i)] = int(y)
      monkeypatch.undo()
    assert [seen[i] for i in range(4)] == want.tolist()
  assert not np.array_equal(chosen[1], chosen[2])
  assert not any(np.array_equal(r, np.arange(4)) for r in chosen.values())


# --------------------------------------------------------------------------
# The evaluator end to end, with a random linear "Inception"
# --------------------------------------------------------------------------
RES = 8
_W = np.random.default_rng(1).normal(size=(RES * RES * 3, 2048)) / 8
_W_LOGITS = np.random.default_rng(2).normal(size=(2048, 1008)) / 64
_W_SPATIAL = np.random.default_rng(3).normal(size=(RES * RES * 3, SPATIAL))


def fake_features(x):
  """(pool, logits, spatial) of images [N, H, W, 3] in [0, 1] (numpy)."""
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  pool = np.tanh(flat @ _W)
  return pool, pool @ _W_LOGITS, flat @ _W_SPATIAL


@pytest.fixture
def fake_inception(monkeypatch):
  """inception.apply_fn -> the linear map above; counts how often a job
  builds (compiles) it."""
  builds = []

  def apply_fn(mesh=None, spatial=False, input_kind="pytorch_fid"):
    del input_kind  # the stand-in has no resize
    builds.append(spatial)
    w, wl, ws = (jnp.asarray(a, jnp.float32)
                 for a in (_W, _W_LOGITS, _W_SPATIAL))

    def f(params, x):
      del params
      flat = x.reshape(x.shape[0], -1)
      pool = jnp.tanh(flat @ w)
      return pool, pool @ wl, flat @ ws
    return jax.jit(f)

  monkeypatch.setattr(inception, "apply_fn", apply_fn)
  monkeypatch.setattr(inception, "SPATIAL_DIM", SPATIAL)
  monkeypatch.setattr(inception, "load", lambda path: {"w": np.zeros(1)})
  return builds


def fake_sampler(seen):
  """Images that depend on (label, sample number): a class's samples are
  alike, with a per-sample wobble."""
  def sample(params, y, index, seed):
    del params
    seen.append(np.asarray(multihost.local_rows(y)))
    base = (y[:, None, None, None] % 5) / 5.0
    wobble = jnp.sin(index[:, None, None, None] * 1.7 + seed +
                     jnp.arange(RES * RES * 3).reshape(1, RES, RES, 3))
    return jnp.clip(base + 0.3 * wobble, 0, 1) * 2 - 1
  return lambda cfg_scale, num_steps: sample


def test_generation_evaluator_scores_as_adm(fake_inception, tmp_path):
  rng = np.random.default_rng(7)
  ref_images = rng.uniform(size=(40, RES, RES, 3))
  ref_pool, _, ref_spatial = fake_features(np.round(ref_images * 255) / 255)
  ref_path = str(tmp_path / "ref.npz")
  ref_stats.save(ref_stats.RefStats(
      *adm_statistics(ref_pool), 40, adm_statistics(ref_spatial), ref_pool),
      ref_path)
  seen = []
  mesh = sh.make_mesh([("data", -1)])
  config = ml_collections.ConfigDict(dict(
      type="generation", num_samples=16, final_num_samples=48, batch_size=16,
      inception_weights=str(tmp_path / "inc.npz"), ref_stats=ref_path,
      seed=2))
  ev = generation.Evaluator("gen", config, predict_fns=dict(
      sample=fake_sampler(seen), num_classes=10), mesh=mesh,
                            input_config=ml_collections.ConfigDict(dict(
                                data="embedded", res=RES, frames=1)))
  periodic = dict(ev.run({}))
  assert periodic["gen/num_samples"] == 16 and len(seen) == 1
  seen.clear()
  final = dict(ev.run({}, final=True))
  assert final["gen/num_samples"] == 48
  assert fake_inception == [True]  # built (compiled) once for both runs
  labels = np.concatenate(seen)
  np.testing.assert_array_equal(
      labels, np.random.default_rng(2).integers(0, 10, 48))

  # The same numbers from the samples, recomputed with ADM's formulas.
  index = np.arange(48)
  images = np.asarray(fake_sampler([])(None, None)(
      None, jnp.asarray(labels), jnp.asarray(index), 2))
  q = np.clip(np.round((images + 1) * 127.5), 0, 255) / 255.0
  pool, _, spatial = fake_features(q)
  assert final["gen/gfid"] == pytest.approx(adm_frechet_distance(
      *adm_statistics(pool), *adm_statistics(ref_pool)), rel=1e-4)
  assert final["gen/sfid"] == pytest.approx(adm_frechet_distance(
      *adm_statistics(spatial), *adm_statistics(ref_spatial)), rel=1e-4)
  p, r = torch_fidelity_pr(pool, ref_pool)
  assert (final["gen/precision"], final["gen/recall"]) == (
      pytest.approx(p, abs=1e-6), pytest.approx(r, abs=1e-6))
  assert 0 < final["gen/precision"] < 1 or 0 < final["gen/recall"] < 1
  line = ev.summary(final)
  assert "48 samples (random labels)" in line and "gFID-48 " in line
  assert "sFID" in line and "precision" in line


def test_old_reference_files_skip_sfid_and_pr_with_a_warning(
    fake_inception, tmp_path, caplog):
  old = str(tmp_path / "old.npz")
  np.savez(old, mu=np.zeros(2048), sigma=np.eye(2048))
  config = ml_collections.ConfigDict(dict(
      type="generation", num_samples=8, batch_size=8, labels="balanced",
      inception_weights=str(tmp_path / "inc.npz"), ref_stats=old))
  ev = generation.Evaluator("gen", config, predict_fns=dict(
      sample=fake_sampler(seen := []), num_classes=4),
                            mesh=sh.make_mesh([("data", -1)]),
                            input_config=ml_collections.ConfigDict(dict(
                                data="embedded", res=RES, frames=1)))
  r = dict(ev.run({}))
  assert "gen/gfid" in r and "gen/sfid" not in r and "gen/precision" not in r
  assert "tools/compute_ref_stats.py" in caplog.text
  np.testing.assert_array_equal(np.concatenate(seen), np.arange(8) % 4)
  with pytest.raises(ValueError, match="labels='cycled'"):
    config.labels = "cycled"
    generation.Evaluator("gen", config, predict_fns=dict(
        sample=fake_sampler([]), num_classes=4),
                         mesh=sh.make_mesh([("data", -1)]))


def test_video_gfvd_is_the_frechet_distance_of_i3d_features(tmp_path):
  """A video DiT's gFVD: I3D features of whole sample clips against those of
  a seeded random subset of the training clips (here 3 held-out pans of 10
  frames, a random I3D: flagged), recomputed here from the same clips."""
  from vitok_jax.models import i3d
  frames, res = 10, 32
  data = input_pipeline.default_config(data="heldout", res=res,
                                       frames=frames, fps=8.0)

  def sample(params, y, index, seed):
    del params
    t = jnp.arange(frames).reshape(1, frames, 1, 1, 1)
    grid = jnp.arange(res * res * 3).reshape(1, 1, res, res, 3)
    return jnp.sin(0.01 * grid + 0.3 * t * (1 + index[:, None, None, None,
                                                       None]) + y[:, None,
                                                                   None, None,
                                                                   None])

  config = ml_collections.ConfigDict(dict(
      type="generation", num_samples=4, batch_size=4, i3d_weights="random",
      ref_examples=3, seed=1))
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  ev = generation.Evaluator("vid", config, predict_fns=dict(
      sample=lambda cfg, steps: sample, num_classes=5), mesh=mesh,
                            input_config=data)
  r = dict(ev.run({}))
  assert r["vid/gfvd_random_i3d"] == 1.0 and "vid/gfid" not in r
  params = ev.nets.i3d_params
  q = lambda x: np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255)
  labels = generation.sample_labels(4, 5, seed=1)
  fake = q(sample(None, jnp.asarray(labels), jnp.arange(4), 1))
  real = np.concatenate([q(b["image"][b["mask"]]) for b in
                         input_pipeline.make_eval_dataset(
                             data, 3, 3, subset_seed=ref_stats.SUBSET_SEED)])
  feats = np.asarray(jax.jit(i3d.features)(
      params, np.concatenate([fake, real]) / 127.5 - 1.0), np.float64)
  from vitok_jax.evaluators import metrics
  want = metrics.frechet_distance(
      feats[:4].mean(0), np.cov(feats[:4], rowvar=False),
      feats[4:].mean(0), np.cov(feats[4:], rowvar=False))
  assert want > 1e-3 * np.trace(np.cov(feats[4:], rowvar=False))
  assert r["vid/gfvd"] == pytest.approx(want, rel=1e-4)
  assert "gFVD-4 " in ev.summary(r) and "RANDOM I3D" in ev.summary(r)
  # The line names the clips, the reference set and the labels.
  assert ("gFVD of 4 sampled clips of 10 frames against 3 real clips of 10 "
          "frames at 8 fps, short side 32 (bicubic) + centre crop, 1 per video, "
          "heldout") in ev.summary(r)
  assert "(random labels)" in ev.summary(r)
  # Fewer than 9 frames fail at start, naming config.input.frames.
  data.frames = 8
  with pytest.raises(ValueError, match="config.input.frames=8"):
    generation.Evaluator("vid", config, predict_fns=dict(
        sample=lambda cfg, steps: sample, num_classes=5), mesh=mesh,
                         input_config=data)


def test_reference_statistics_are_over_a_seeded_random_subset(
    fake_inception, monkeypatch):
  """ref_stats.compute over a random 4 of the 9 embedded photos: mu, sigma,
  ADM's spatial statistics and the precision/recall features are those of
  the seeded random rows (not the first 4), recomputed here with numpy from
  all 9 crops; with another SUBSET_SEED, of other rows."""
  data = input_pipeline.default_config(data="embedded", res=RES, frames=1)
  crops = np.concatenate([b["image"] for b in
                          input_pipeline.make_eval_dataset(data, 9)])
  pool, _, spatial = fake_features(
      np.clip(np.round((crops + 1) * 127.5), 0, 255) / 255.0)
  seen = []
  for seed in (0, 3):
    monkeypatch.setattr(ref_stats, "SUBSET_SEED", seed)
    rows = _seeded_rows(9, 4, seed)
    seen.append(rows)
    ref = ref_stats.compute(data, None, num_examples=4, batch_size=2,
                            random_subset=True)
    assert ref.n == 4
    mu, sigma = adm_statistics(pool[rows])
    np.testing.assert_allclose(ref.mu, mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ref.sigma, sigma, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(ref.spatial[0], spatial[rows].mean(0),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref.features, pool[rows], rtol=1e-4, atol=1e-5)
    assert np.abs(ref.mu - pool[:4].mean(0)).max() > 1e-3  # not the first 4
  assert not np.array_equal(*seen)


def test_gfvd_reference_is_over_a_seeded_random_subset_of_clips(monkeypatch):
  """ref_stats.compute_fvd over a random 4 of the 9 evaluation pans: the
  mean and covariance of the seeded random clips' features (a stand-in I3D,
  a fixed random map recomputed here in numpy), not the first 4's."""
  frames, res = 9, 8
  data = input_pipeline.default_config(data="embedded", res=res,
                                       frames=frames, fps=8.0)
  w = np.random.default_rng(4).normal(size=(frames * res * res * 3, 400)) / 40

  def apply_fn(mesh=None):
    del mesh
    return jax.jit(lambda p, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w))

  monkeypatch.setattr(ref_stats, "i3d_apply_fn", apply_fn)
  clips = {}
  for b in input_pipeline.make_eval_dataset(data, 9):
    for i, x in zip(b["index"][b["mask"]], b["image"][b["mask"]]):
      clips[int(i)] = x
  q = np.stack([clips[i] for i in range(9)]).astype(np.float64)
  q = np.clip(np.round((q + 1) * 127.5), 0, 255) / 127.5 - 1.0
  feats = np.tanh(q.reshape(9, -1) @ w)
  rows = _seeded_rows(9, 4, ref_stats.SUBSET_SEED)
  mu, sigma = ref_stats.compute_fvd(data, None, num_examples=4).mean_cov()
  np.testing.assert_allclose(mu, feats[rows].mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sigma, np.cov(feats[rows], rowvar=False),
                             rtol=1e-3, atol=1e-6)
  assert np.abs(mu - feats[:4].mean(0)).max() > 1e-3  # not the first 4
