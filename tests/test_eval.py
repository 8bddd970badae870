"""The eval job and the reconstruction evaluator, checked against the same
metrics recomputed here independently: numpy PSNR, skimage SSIM, Inception
and I3D features applied outside the evaluator, the Frechet distance in
closed form and the Inception Score written out."""
import json
import math
import os
import pathlib

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest
import scipy.special
from skimage.metrics import structural_similarity

from configs.vitok import s_b16_256
from configs.vitok import video_s_b4x8_128
from tests import helpers
from tests.helpers import load_tool
from vitok_jax.data import input_pipeline
from vitok_jax import eval as eval_job
from vitok_jax.evaluators import common as evaluators
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.models import i3d
from vitok_jax.models import inception
from vitok_jax.models import vitok
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u

# metrics.psnr floors the MSE at 1e-10: identical images score this.
PSNR_OF_IDENTICAL = 10 * math.log10(255.0**2 / 1e-10)


# --------------------------------------------------------------------------
# Independent reference computations (also used by test_train, test_video)
# --------------------------------------------------------------------------
def quantize_np(x):
  """The protocol's uint8 grid, written out: round((x + 1) * 127.5) clipped
  to [0, 255] (float32 arithmetic like the evaluator, half to even)."""
  x = np.asarray(x, np.float32)
  return np.clip(np.round((x + np.float32(1)) * np.float32(127.5)), 0, 255)


def frames_of(x):
  """[B, H, W, 3] or [B, T, H, W, 3] -> [B*T, H, W, 3]."""
  x = np.asarray(x)
  return x.reshape((-1,) + x.shape[-3:])


def psnr_np(a, b):
  """Per-image PSNR (float64) of images on [0, 255]."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return 10 * np.log10(255.0**2 / np.mean(d**2, axis=(1, 2, 3)))


def ssim_np(a, b):
  """Per-image SSIM from skimage with the documented protocol. skimage
  filters the whole image (reflect-padded) and then crops (win - 1) // 2 = 5
  pixels from each border before averaging, which leaves exactly the 'valid'
  region that metrics.ssim filters: the two agree to float32 round-off."""
  return np.array([structural_similarity(
      x.astype(np.float64), y.astype(np.float64), gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False, data_range=255,
      channel_axis=-1) for x, y in zip(a, b)])


def inception_score_np(logits, splits=10):
  """exp(E_x KL(p(y|x) || p(y))) in each of `splits` contiguous chunks of the
  examples in evaluation order (np.array_split; empty chunks left out), then
  (mean, std) over the chunks: metrics.InceptionScore's convention."""
  logp = scipy.special.log_softmax(np.asarray(logits, np.float64), axis=1)
  scores = []
  for part in np.array_split(logp, splits):
    if len(part):
      p = np.exp(part)
      log_py = np.log(p.mean(0))
      scores.append(np.exp(np.mean(np.sum(p * (part - log_py), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def eval_examples(data_config, num_examples=None):
  """The evaluation examples (padding and unreadable records left out),
  read one per batch, unlike the evaluator's batches."""
  cfg = input_pipeline.default_config(**dict(data_config))
  return np.concatenate([b["image"][b["mask"]] for b in
                         input_pipeline.make_eval_dataset(cfg, 1, num_examples)])


def bicubic_metrics(x, side):
  """bicubic_rpsnr/rssim of PIL bicubic resampling (float 'F' images, per
  channel) of [N, H, W, 3] images down to side x side and back."""
  def resize(ch, size):
    return np.asarray(Image.fromarray(np.ascontiguousarray(ch, np.float32),
                                      "F").resize(size, Image.BICUBIC))
  bic = np.stack([np.stack([resize(resize(img[..., k], (side, side)),
                                   img.shape[1::-1]) for k in range(3)], -1)
                  for img in np.asarray(x, np.float32)])
  m = recon_metrics(x, bic)
  return dict(bicubic_rpsnr=m["rpsnr"], bicubic_rssim=m["rssim"])


def reconstruct(model, params, x):
  """The model in evaluation mode (z = mean), outside the evaluator."""
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x)[0])(
      params, x))


def eval_params(workdir):
  """The params eval.py must score: the EMA when the run keeps one."""
  tree = ckpt_lib.load_state_tree(workdir)
  return tree["params_ema"] if "params_ema" in tree else tree["params"]


def recon_metrics(x, recon):
  """rPSNR, rSSIM (frame-wise means) and the uint8-grid frames."""
  real, fake = quantize_np(frames_of(x)), quantize_np(frames_of(recon))
  psnr = psnr_np(real, fake)
  return dict(rpsnr=float(psnr.mean()), rssim=float(ssim_np(real, fake).mean()),
              n=len(real), psnr=psnr, real=real, fake=fake)


def recompute_from_workdir(config, workdir, data_config, num_examples=None):
  """recon_metrics of a training run's checkpoint, restored here."""
  model = vitok.from_config(tokenizer.resolve_config(config).model)
  x = eval_examples(data_config, num_examples)
  return recon_metrics(x, reconstruct(model, eval_params(workdir), x))


def inception_outputs(params, q):
  """(pool, logits) of FIDInceptionV3 on uint8-grid images q / 255."""
  f = jax.jit(lambda p, x: inception.FIDInceptionV3().apply({"params": p}, x))
  pool, logits = f(params, (np.asarray(q) / 255.0).astype(np.float32))
  return np.asarray(pool), np.asarray(logits)


def assert_matches(results, name, want, keys=("rpsnr", "rssim")):
  """results[name/k] == want[k]: PSNR, FID, FVD to 1e-4 relative (float32
  features there, float64 here); SSIM, a mean of values near 0, to 1e-5;
  IS - 1 (about 0.02) and its std to 1e-3 relative."""
  for k in keys:
    got, ref = results[f"{name}/{k}"], want[k]
    if k == "ris":
      got, ref = got - 1, ref - 1
    tol = dict(abs=1e-5) if k.endswith("rssim") else dict(
        rel=1e-3 if k.startswith("ris") else 1e-4)
    assert got == pytest.approx(ref, **tol), k


# A stand-in tokenizer whose reconstruction is its input: the predict
# functions a trainer hands the reconstruction evaluator.
IDENTITY = dict(reconstruct=lambda params, images: images)


def one_device_mesh():
  return sh.make_mesh([("data", 1)], jax.devices()[:1])


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """4 steps of a tiny ViTok with an EMA (which eval.py must score)."""
  wd = tmp_path_factory.mktemp("run")
  c = s_b16_256.get_config("runlocal,lpips=0")
  c.total_steps, c.log_every, c.ckpt_every, c.image_every = 4, 2, 4, 0
  c.input.res = 32
  c.ema_decay = 0.5
  c.evals = {}
  tokenizer.train_and_evaluate(c, str(wd))
  return c, str(wd)


def random_weights_npz(path, abstract_params, seed=0, gains=None):
  """utils.random_frozen_params saved as the network's convert tool's .npz."""
  u.save_npz_tree(path, u.random_frozen_params(abstract_params, seed, gains))
  return path


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
  # The logits x10: their spread over images makes IS - 1 about 0.02.
  return random_weights_npz(
      str(tmp_path_factory.mktemp("inc") / "random_inception.npz"),
      inception.abstract_params(), gains={"fc": 10.0})


@pytest.fixture(scope="module")
def random_i3d(tmp_path_factory):
  return random_weights_npz(
      str(tmp_path_factory.mktemp("i3d") / "random_i3d.npz"),
      i3d.abstract_params())


HELDOUT = dict(data="heldout", res=32)  # 16 tiles: IS chunks of 2 and 1


@pytest.fixture(scope="module")
def heldout_reference(run, random_inception):
  """Every metric of the run's EMA params on the held-out tiles, computed
  without the evaluator."""
  c, wd = run
  tree = ckpt_lib.load_state_tree(wd)
  model = vitok.from_config(tokenizer.resolve_config(c).model)
  x = eval_examples(HELDOUT)
  want = recon_metrics(x, reconstruct(model, tree["params_ema"], x))
  raw = recon_metrics(x, reconstruct(model, tree["params"], x))
  # The EMA and the raw params score apart: the checks tell which was used.
  assert abs(raw["rpsnr"] - want["rpsnr"]) > 1e-3 * want["rpsnr"]
  inc = inception.load(random_inception)
  n = want["n"]
  pool, logits = inception_outputs(inc, np.concatenate([want["real"],
                                                        want["fake"]]))
  want["rfid"] = helpers.frechet_np(pool[n:], pool[:n])
  want["ris"], want["ris_std"] = inception_score_np(logits[n:])
  want["pool"] = pool
  # Not degenerate: the scores are far from their trivial values.
  assert want["rfid"] > 1e-2 * np.trace(np.cov(pool[:n].T))
  assert want["ris"] - 1 > 1e-2 and want["ris_std"] > 1e-3
  return want


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------
def test_eval_job_writes_tensorboard_json_and_picture(run, caplog):
  c, wd = run
  c = c.copy_and_resolve_references()
  data = dict(data="embedded", res=32)
  c.evals = {"val": dict(type="reconstruction", batch_size=8, num_examples=5,
                         inception_weights=os.path.join(wd, "missing.npz"),
                         data=data)}
  results = eval_job.evaluate(c, wd)
  assert "rFID and rIS are SKIPPED" in caplog.text
  assert "missing.npz" in caplog.text and "tools/convert_inception.py" in caplog.text
  assert set(results) == {"val/rpsnr", "val/rssim", "val/num_examples"}
  assert results["val/num_examples"] == 5
  assert_matches(results, "val", recompute_from_workdir(c, wd, data, 5))
  out = pathlib.Path(wd) / "eval"
  saved = json.loads((out / "results_4.json").read_text())
  assert saved["ema"] is True
  assert saved["val/rpsnr"] == pytest.approx(results["val/rpsnr"])
  assert (out / "val_reconstruction_4.png").exists()
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(out))
  acc.Reload()
  assert "val/rpsnr" in acc.Tags()["scalars"]
  ev = acc.Scalars("val/rpsnr")[-1]
  assert ev.step == 4 and ev.value == pytest.approx(results["val/rpsnr"], rel=1e-5)


def test_eval_job_metrics_equal_an_independent_recomputation(
    run, random_inception, heldout_reference):
  # rPSNR/rSSIM/rFID/rIS of the EMA params in evaluation mode, recomputed
  # from the checkpoint with numpy, skimage and Inception applied here.
  c, wd = run
  c = c.copy_and_resolve_references()
  c.evals = {"val": dict(type="reconstruction", batch_size=8,
                         inception_weights=random_inception, data=HELDOUT)}
  r = eval_job.evaluate(c, wd)
  assert r["val/num_examples"] == 16
  assert_matches(r, "val", heldout_reference,
                 ("rpsnr", "rssim", "rfid", "ris", "ris_std"))


def test_cached_reference_stats_give_the_same_scores(
    run, random_inception, heldout_reference, tmp_path):
  # Inception statistics of the originals cached by the tool stand in for
  # the ones the evaluator would compute (on the first 8 tiles).
  c, wd = run
  c = tokenizer.resolve_config(c)
  mesh = sh.make_mesh(c.mesh)
  setup = tokenizer.make_setup(c, mesh)
  params = jax.device_put(eval_params(wd), setup.state_sharding["params"])
  load_tool("compute_ref_stats").main([
      "--data", "heldout", "--res", "32", "--inception", random_inception,
      "--batch_size", "8", "--num_examples", "8",
      "--out", str(tmp_path / "ref.npz")])
  ev = evaluators.build("val", dict(
      type="reconstruction", batch_size=8, num_examples=8,
      inception_weights=random_inception,
      ref_stats=str(tmp_path / "ref.npz"), data=HELDOUT),
      predict_fns=tokenizer.predict_fns(setup), mesh=mesh)
  r = dict(ev.run(params))
  want, n = heldout_reference, heldout_reference["n"]
  assert_matches(r, "val", dict(rpsnr=want["psnr"][:8].mean(), rfid=helpers.frechet_np(
      want["pool"][n:n + 8], want["pool"][:8])), ("rpsnr", "rfid"))


def test_identity_model_scores_zero_fid_and_the_psnr_ceiling(random_inception):
  mesh = one_device_mesh()
  ev = evaluators.build("id", dict(
      type="reconstruction", batch_size=4, num_examples=4,
      inception_weights=random_inception, data=dict(data="embedded", res=32)),
      predict_fns=IDENTITY, mesh=mesh)
  r = dict(ev.run({}))
  assert r["id/num_examples"] == 4
  assert abs(r["id/rfid"]) < 1e-3  # Tr Sigma of these features is ~20
  assert r["id/rpsnr"] == pytest.approx(PSNR_OF_IDENTICAL, rel=1e-6)
  assert r["id/rssim"] == pytest.approx(1.0, abs=1e-6)


def test_video_rfvd_equals_the_frechet_distance_of_i3d_features_here(
    random_i3d):
  # A random video ViTok (evaluation mode) on 2 pans of 10 frames (I3D needs
  # at least 9) on one device; then the identity, which scores rFVD 0.
  mesh = one_device_mesh()
  c = tokenizer.resolve_config(video_s_b4x8_128.get_config("runlocal,frames=10"))
  c.input.batch_size = 2
  setup = tokenizer.make_setup(c, mesh)
  params = setup.init(jax.random.key(0))["params"]
  data = dict(data="heldout", res=32, frames=10, fps=8.0)
  ev_cfg = dict(type="reconstruction", batch_size=2, num_examples=2,
                i3d_weights=random_i3d, data=data)
  ev = evaluators.build("v", ev_cfg, predict_fns=tokenizer.predict_fns(setup),
                        mesh=mesh)
  r = dict(ev.run(params))
  assert r["v/num_examples"] == 2 * 10
  x = eval_examples(data, 2)
  want = recon_metrics(x, reconstruct(setup.model, jax.device_get(params), x))
  clip = lambda q: (q.reshape(x.shape) / 127.5 - 1.0).astype(np.float32)
  feats = np.asarray(jax.jit(i3d.features)(
      i3d.load(random_i3d), np.concatenate([clip(want["real"]),
                                            clip(want["fake"])])))
  want["rfvd"] = helpers.frechet_np(feats[2:], feats[:2])
  scale = np.sum(np.var(feats[:2], axis=0, ddof=1))  # Tr Sigma_real
  assert want["rfvd"] > 1e-2 * scale  # far from the real-vs-real 0
  assert_matches(r, "v", want, ("rpsnr", "rssim", "rfvd"))

  ev = evaluators.build("id", ev_cfg, predict_fns=IDENTITY, mesh=mesh)
  r = dict(ev.run({}))
  assert abs(r["id/rfvd"]) < 1e-6 * scale
  assert r["id/rpsnr"] == pytest.approx(PSNR_OF_IDENTICAL, rel=1e-6)
  assert r["id/rssim"] == pytest.approx(1.0, abs=1e-6)


def test_unknown_evaluator_type():
  with pytest.raises(ValueError, match="config.evals.x.type='nope'"):
    evaluators.build("x", dict(type="nope"), predict_fns={}, mesh=None)
  # A type whose predict functions the trainer does not provide.
  with pytest.raises(ValueError, match=r"needs the predict functions "
                     r"\['num_classes', 'sample'\]"):
    evaluators.build("g", dict(type="generation"), predict_fns=IDENTITY,
                     mesh=None)
