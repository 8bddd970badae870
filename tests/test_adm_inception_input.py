"""ADM's Inception input (issue: the numbers DiT and the paper report come
from ADM's evaluator): TF1's legacy ResizeBilinear and (x - 128) / 128,
checked against a transcription of TensorFlow's kernel; the Inception
Score over ADM's splits of 5,000; statistics of one input never compared
with samples of the other; every output naming what it used."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import ref_stats
from vitok_jax.evaluators import scoring
from vitok_jax.models import inception


def tf1_resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
  """tf.compat.v1.image.resize_bilinear(x, [size, size]) (align_corners=
  False, half_pixel_centers=False), transcribed from TensorFlow's kernel
  (core/kernels/image/resize_bilinear_op.cc): for each output index,
  in = out * (in_size / out_size), lower = floor(in), upper = min(lower + 1,
  in_size - 1), lerp = in - lower; top = tl + (tr - tl) * x_lerp, bottom =
  bl + (br - bl) * x_lerp, out = top + (bottom - top) * y_lerp."""
  x = x.astype(np.float64)
  _, h, w, _ = x.shape

  def axis(n_in):
    src = np.arange(size) * (n_in / size)
    lower = np.floor(src).astype(int)
    return lower, np.minimum(lower + 1, n_in - 1), src - lower

  y0, y1, yl = axis(h)
  x0, x1, xl = axis(w)
  xl, yl = xl[None, None, :, None], yl[None, :, None, None]
  tl, tr = x[:, y0][:, :, x0], x[:, y0][:, :, x1]
  bl, br = x[:, y1][:, :, x0], x[:, y1][:, :, x1]
  top = tl + (tr - tl) * xl
  bottom = bl + (br - bl) * xl
  return top + (bottom - top) * yl


@pytest.mark.parametrize("res", [256, 512])
def test_adm_resize_is_tensorflows_legacy_bilinear(res):
  x = np.random.default_rng(res).uniform(size=(1, res, res, 3))
  got = np.asarray(jax.jit(inception.resize_bilinear_legacy)(
      jnp.asarray(x, jnp.float32)))
  want = tf1_resize_bilinear(x, 299)
  assert got.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # Not the half-pixel grid of pytorch-fid's input: the test can tell.
  half = np.asarray(inception.resize_bilinear(jnp.asarray(x, jnp.float32)))
  assert np.abs(half - want).max() > 1e-2


def test_adm_input_scales_the_uint8_grid_by_128():
  q = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3))
  got = np.asarray(inception.preprocess(jnp.asarray(q / 255.0), "adm"))
  want = (tf1_resize_bilinear(q.astype(np.float64), 299) - 128.0) / 128.0
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  torchlike = np.asarray(inception.preprocess(jnp.asarray(q / 255.0),
                                              "pytorch_fid"))
  np.testing.assert_allclose(
      torchlike, 2.0 * np.asarray(inception.resize_bilinear(
          jnp.asarray(q / 255.0, jnp.float32))) - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="input_kind='tf'"):
    inception.apply_fn(input_kind="tf")


def test_inception_score_in_adm_splits_of_a_fixed_size():
  """ADM: contiguous chunks of split_size, the last one shorter (here 23
  examples in chunks of 10: 10, 10, 3), fed out of order by index."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(23, 7)) * 2
  score = metrics.InceptionScore(23, classes=7, split_size=10)
  order = rng.permutation(23)
  for part in np.array_split(order, 4):
    score.update(logits[part], index=part)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  want = []
  for lo, hi in ((0, 10), (10, 20), (20, 23)):
    c = p[lo:hi]
    kl = np.sum(c * (np.log(c) - np.log(c.mean(0))), 1).mean()
    want.append(np.exp(kl))
  assert score.splits == 3
  mean, std = score.result()
  assert mean == pytest.approx(np.mean(want), rel=1e-9)
  assert std == pytest.approx(np.std(want), rel=1e-9)
  # 10k samples: ADM's two splits of 5,000; 50k: ten.
  assert metrics.InceptionScore(10_000, split_size=5000).splits == 2
  assert metrics.InceptionScore(50_000, split_size=5000).splits == 10


def test_statistics_of_one_input_are_refused_for_the_other(tmp_path):
  data = input_pipeline.default_config(data="embedded", res=32)
  adm = ref_stats.cache_name(data, 100, True, inception_input="adm")
  torch_name = ref_stats.cache_name(data, 100, True)
  assert adm != torch_name and "_adm_" in adm
  ref = ref_stats.RefStats(np.zeros(4), np.eye(4), 10,
                           inception_input="pytorch_fid")
  path = str(tmp_path / "ref.npz")
  ref_stats.save(ref, path)
  loaded = ref_stats.load(path)
  assert loaded.inception_input == "pytorch_fid"
  ref_stats.check_input(loaded, "pytorch_fid", path)
  with pytest.raises(ValueError, match="pytorch-fid's Inception input.*"
                     "ADM's Inception input"):
    ref_stats.check_input(loaded, "adm", path)


def test_the_summary_names_the_input_and_the_splits():
  r = {"g/num_samples": 10_000.0, "g/gfid": 3.0, "g/gis": 200.0,
       "g/gis_splits": 2.0, "g/inception_input_adm": 1.0}
  line = scoring.summary("g", r, "random", 1.5)
  assert "gFID-10k 3.00" in line and "(2 splits of up to 5000)" in line
  assert "[ADM's Inception input]" in line
  r["g/inception_input_adm"] = 0.0
  assert "[pytorch-fid's Inception input]" in scoring.summary(
      "g", r, "random", 1.5)


def test_generation_scoring_uses_adms_input_by_default(monkeypatch, tmp_path):
  """The generation evaluator's config and vitok_jax.sample's scoring
  build Inception with ADM's input unless told otherwise."""
  from vitok_jax.evaluators import generation  # pylint: disable=g-import-not-at-top
  from vitok_jax.parallel import sharding as sh  # pylint: disable=g-import-not-at-top
  kinds = []
  monkeypatch.setattr(inception, "load", lambda path: {"w": np.zeros(1)})
  monkeypatch.setattr(inception, "apply_fn", lambda mesh=None, spatial=False,
                      input_kind="pytorch_fid": kinds.append(input_kind))
  assert generation.default_config().inception_input == "adm"
  path = str(tmp_path / "ref.npz")
  ref_stats.save(ref_stats.RefStats(np.zeros(4), np.eye(4), 10,
                                    inception_input="adm"), path)
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  data = input_pipeline.default_config(data="embedded", res=32)
  nets = scoring.load_nets(data, mesh, "test", inception_weights="w.npz",
                           ref_stats=path)
  assert kinds == ["adm"] and nets.inception_input == "adm"
  torch_path = str(tmp_path / "ref_torch.npz")
  ref_stats.save(ref_stats.RefStats(np.zeros(4), np.eye(4), 10,
                                    inception_input="pytorch_fid"), torch_path)
  scoring.load_nets(data, mesh, "test", inception_weights="w.npz",
                    inception_input="pytorch_fid", ref_stats=torch_path)
  assert kinds == ["adm", "pytorch_fid"]
  with pytest.raises(ValueError, match="recompute them"):
    scoring.load_nets(data, mesh, "test", inception_weights="w.npz",
                      ref_stats=torch_path)
