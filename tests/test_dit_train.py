"""The generation chain: a ViTok run -> latents (on the fly or shards) -> a DiT
trained by the shared host loop -> samples; and its bad-input errors."""
import json
import os

import jax
import numpy as np
import pytest

from configs.dit import dit_l_vitok_s_b16_256 as dit_config
from tests import helpers
from vitok_jax.data import input_pipeline
from vitok_jax.data import latent_shards
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import scoring
from vitok_jax.parallel import sharding as sh
from vitok_jax import sample as sample_lib
from vitok_jax.trainers import dit


@pytest.fixture(scope="module")
def vitok_run(tmp_path_factory):
  """The demo ViTok (mu-mu/8 at 64x64: 64 codes of c=16), 300 steps, by
  the real entry point on one device (as the demo runs: the test process's
  8 fake devices would split each batch of 16 eight ways on 2 cores)."""
  workdir = str(tmp_path_factory.mktemp("vitok"))
  helpers.launch("vitok_jax.train", [
      "--config=configs/vitok/s_b16_256.py:runlocal,lpips=0,steps=300",
      "--config.image_every=0", "--config.log_every=100",
      f"--workdir={workdir}"], processes=1, devices=1, optimized=True)
  return workdir


@pytest.fixture(scope="module")
def photo_latents(vitok_run):
  """What the statistics pass reads, encoded here: the posterior means
  [9, 64, 16] (float64) of the first latents.stats_examples = 9 training
  examples' evaluation crops (the 9 embedded photos), one at a time."""
  c = dit.resolve_config(dit_cfg(vitok_run))
  codec = codec_lib.Codec.load(vitok_run, res=c.input.res)
  enc = jax.jit(lambda p, x: codec.model.apply({"params": p}, x,
                                               method="encode")["mean"])
  z = [np.asarray(enc(codec.params, b["image"]), np.float64)
       for b in input_pipeline.make_eval_dataset(c.input, 1,
                                                 c.latents.stats_examples)]
  return np.concatenate(z)


def assert_numpy_moments(stats, z):
  """stats are the per-channel mean/std over (examples, tokens) of z."""
  std = z.std(axis=(0, 1))
  np.testing.assert_allclose(stats.std, std, rtol=1e-4)
  np.testing.assert_allclose(stats.mean, z.mean(axis=(0, 1)), rtol=1e-4,
                             atol=1e-4 * std.min())


def dit_cfg(vitok_dir, steps=600, **kw):
  c = dit_config.get_config(f"runlocal,tokenizer={vitok_dir},steps={steps}")
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def dit_run(vitok_run, tmp_path_factory):
  """The DiT demo's recipe for 600 steps, on one device (as vitok_run)."""
  workdir = str(tmp_path_factory.mktemp("dit"))
  helpers.launch("vitok_jax.train", [
      "--config=configs/dit/dit_l_vitok_s_b16_256.py:runlocal,"
      f"tokenizer={vitok_run},steps=600", "--config.log_every=10",
      f"--workdir={workdir}"], processes=1, devices=1, optimized=True)
  return workdir


def test_runlocal_chain_learns_each_class(dit_run, photo_latents, capsys):
  del capsys
  rows = [json.loads(l) for l in open(os.path.join(dit_run, "metrics.jsonl"))]
  loss = [r["loss"] for r in rows if "loss" in r]
  assert len(loss) == 60
  # The diffusion loss falls: a fresh DiT predicts 0 (loss ~ E[eps^2] = 1),
  # and it keeps falling after the first 100 steps.
  assert loss[0] > 0.7, loss
  assert np.mean(loss[-10:]) < 0.25 * loss[0], loss
  assert np.mean(loss[-10:]) < 0.75 * np.mean(loss[1:11]), loss
  assert "samples.png" in os.listdir(dit_run)
  # The run standardised with the numpy moments of the photos' latents.
  assert_numpy_moments(dit.load_run_stats(dit_run), photo_latents)
  # Samples at CFG 3.0 of class k (photo k) are nearer photo k than any other.
  ev = [r for r in rows if "classes/own_class_psnr" in r][-1]
  assert ev["classes/num_samples"] == 18
  assert ev["classes/own_class_psnr"] > ev["classes/other_class_psnr"] + 2.0, ev
  assert ev["classes/nearest_is_own_class"] >= 0.6, ev


def test_latent_stats_are_numpy_moments_of_the_encoded_photos(
    vitok_run, photo_latents, tmp_path):
  """The statistics a DiT run computes and keeps in its state when it
  first starts (batches padded to 64 on the 8-device mesh) against
  np.mean/np.std."""
  c = dit.resolve_config(dit_cfg(vitok_run))
  setup = dit.make_setup(c, sh.make_mesh(c.mesh), codec_lib.load_pinned(c))
  tok_params = jax.device_put(setup.codec.params, sh.replicated(setup.mesh))
  state = dit.init_state_with_stats(c, setup, tok_params, jax.random.key(0))
  mean, std = jax.device_get(dit.stats_of(state))
  assert photo_latents.shape == (9, 64, 16)
  assert_numpy_moments(codec_lib.LatentStats(mean, std), photo_latents)


def test_sample_writes_grid_npz_and_scores_classes(dit_run, vitok_run):
  c = dit_cfg(vitok_run)
  out = sample_lib.sample(c, dit_run, 9, cfg=3.0, steps=50, batch_size=8)
  assert out["step"] == 600
  with np.load(out["npz"]) as f:
    assert f["arr_0"].shape == (9, 64, 64, 3) and f["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(f["labels"], generation.sample_labels(
        9, 9, "random", seed=0))
    images = f["arr_0"]
  from PIL import Image
  assert np.asarray(Image.open(out["png"])).shape == (2 * 64, 8 * 64, 3)
  # The same samples scored against the photos (class k = photo k).
  refs = generation.reference_photos(c.input)
  scorer = scoring.Scorer(9, references=refs)
  scorer.update(images.astype(np.float32) / 127.5 - 1.0, out["labels"])
  r = scorer.results("s")
  assert r["s/own_class_psnr"] > r["s/other_class_psnr"], r
  with pytest.raises(ValueError, match=r"--classes \[12\]"):
    sample_lib.sample(c, dit_run, 2, classes=["12"], steps=5)


def test_resume_is_exact(vitok_run, tmp_path):
  c = dit_cfg(vitok_run, steps=4, log_every=1, ckpt_every=2, image_every=0,
              evals={})
  dit.train_and_evaluate(c, str(tmp_path / "split"), max_steps=2)
  dit.train_and_evaluate(c, str(tmp_path / "split"))
  dit.train_and_evaluate(c, str(tmp_path / "straight"))
  from vitok_jax.io import checkpoint as ckpt_lib
  a = ckpt_lib.load_state_tree(str(tmp_path / "split"))
  b = ckpt_lib.load_state_tree(str(tmp_path / "straight"))
  assert int(a["step"]) == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_tokenizer_is_pinned_at_the_first_start(vitok_run, tmp_path):
  """A DiT run records its tokenizer's workdir and step when it first
  starts; when the tokenizer run moves on, restoring (eval, sample, export,
  resume) still decodes with the pinned step, and a config naming another
  step or workdir is refused, naming both."""
  import shutil
  tok = tmp_path / "vitok"
  shutil.copytree(vitok_run, tok)
  c = dit_cfg(str(tok), steps=2, log_every=1, ckpt_every=2, image_every=0,
              evals={})
  # A flow-matching DiT (the same trainer, sampler and CLI).
  c.diffusion.update(kind="flow", t_sampling="logit_normal")
  c.sampling.solver = "heun"
  dit.train_and_evaluate(c, str(tmp_path / "dit"))
  pin = json.load(open(tmp_path / "dit" / "tokenizer.json"))
  assert pin == dict(workdir=str(tok), step=300)
  shutil.copytree(tok / "checkpoints" / "300", tok / "checkpoints" / "400")
  assert codec_lib.Codec.load(str(tok)).step == 400  # its latest now
  run = dit.restore_run(dit.resolve_config(c), str(tmp_path / "dit"))
  assert run.setup.codec.step == 300
  out = sample_lib.sample(c, str(tmp_path / "dit"), 2, steps=3, batch_size=8)
  with np.load(out["npz"]) as f:
    assert f["arr_0"].shape == (2, 64, 64, 3) and f["arr_0"].std() > 1
  meta = json.load(open(next((tmp_path / "dit" / "samples").glob(
      "parts_*/manifest.json"))))
  assert meta["flow_solver"] == "heun"
  c.tokenizer.step = 400
  with pytest.raises(ValueError, match=r"step differs: .*tokenizer.json has "
                     r"300, but this run would use 400"):
    dit.restore_run(dit.resolve_config(c), str(tmp_path / "dit"))
  c.tokenizer.step, c.tokenizer.workdir = None, vitok_run
  with pytest.raises(ValueError, match="workdir differs"):
    dit.train_and_evaluate(c, str(tmp_path / "dit"))


def test_sharded_step_matches_single_device(vitok_run):
  c = dit.resolve_config(dit_cfg(vitok_run, steps=2))
  codec = codec_lib.load_pinned(c)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (16, 64, 64, 3)).astype(np.float32)
  labels = np.arange(16, dtype=np.int32) % 9
  out = []
  for mesh in (sh.make_mesh([("data", 1)], jax.devices()[:1]),
               sh.make_mesh([("data", 2), ("fsdp", 4)])):
    setup = dit.make_setup(c, mesh, codec)
    state = setup.init(jax.random.key(0))
    for _ in range(2):
      state, m = setup.step(state, *sh.put_global_batch(
          (images, labels), setup.batch_sharding), codec.params)
    out.append((float(m["loss"]), jax.device_get(state["params"])))
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               out[0][1], out[1][1])


def test_shards_resume_and_train(vitok_run, photo_latents, tmp_path, capsys):
  enc = helpers.load_tool("encode_dataset")
  out = str(tmp_path / "shards")
  meta = enc.encode(vitok_run, "embedded", 64, out, shard_size=4,
                    batch_size=4)
  assert (meta["num_shards"], meta["tokens"], meta["channels"]) == (3, 64, 16)
  src = latent_shards.LatentShards(out)
  assert len(src) == 9 and src[5]["label"] == 5
  # The shards hold what the tokenizer encodes on the fly.
  c = dit.resolve_config(dit_cfg(vitok_run))
  codec = codec_lib.load_pinned(c)
  setup = dit.make_setup(c, sh.make_mesh([("data", 1)], jax.devices()[:1]),
                         codec)
  on_the_fly = dit.compute_latent_stats(c, setup, codec.params)
  c_sh = dit.resolve_config(dit_cfg(vitok_run))
  c_sh.latents.source = f"shards:{out}"
  from_shards = dit.compute_latent_stats(c_sh, setup, None)
  np.testing.assert_allclose(from_shards.mean, on_the_fly.mean, atol=1e-4)
  np.testing.assert_allclose(from_shards.std, on_the_fly.std, rtol=1e-4)
  assert_numpy_moments(from_shards, photo_latents)
  # Over 4 of the 9: a seeded random 4 (not photos 0-3), the same rows on
  # both paths.
  rows = input_pipeline.subset_rows(9, 4, seed=5)
  assert not np.array_equal(rows, np.arange(4))
  for cfg in (c, c_sh):
    cfg.latents.update(stats_examples=4, stats_seed=5)
  assert_numpy_moments(dit.compute_latent_stats(c, setup, codec.params),
                       photo_latents[rows])
  assert_numpy_moments(dit.compute_latent_stats(c_sh, setup, None),
                       photo_latents[rows])
  # Flips: the shards hold the encodings of the mirrored crops too, and with
  # config.input.flip the training data is one or the other, at random.
  crops = np.concatenate([b["image"] for b in input_pipeline.make_eval_dataset(
      c.input, 1, 9)])
  enc_fn = jax.jit(lambda p, x: codec.model.apply({"params": p}, x,
                                                  method="encode")["mean"])
  np.testing.assert_allclose(np.stack([src[k]["flipped"] for k in range(9)]),
                             enc_fn(codec.params, crops[:, :, ::-1]),
                             atol=1e-4)
  assert not np.allclose(src[0]["flipped"], src[0]["latent"], atol=1e-2)
  seen = set()
  it = iter(latent_shards.make_train_dataset(out, 3, seed=0, flip=True))
  for _ in range(12):
    b = next(it)
    for z, y in zip(b["latent"], b["label"]):
      is_flipped = np.array_equal(z, src[int(y)]["flipped"])
      assert is_flipped or np.array_equal(z, src[int(y)]["latent"])
      seen.add(is_flipped)
  assert seen == {True, False}
  b = next(iter(latent_shards.make_train_dataset(out, 9, seed=0)))
  assert "flipped" not in b and all(np.array_equal(
      z, src[int(y)]["latent"]) for z, y in zip(b["latent"], b["label"]))
  # An interrupted encoding goes on from the missing shard only.
  os.remove(latent_shards.shard_paths(out, 1)[1])
  capsys.readouterr()
  enc.encode(vitok_run, "embedded", 64, out, shard_size=4, batch_size=4)
  printed = capsys.readouterr().out
  assert "2 of 3 shards already" in printed and "shard 2/3" in printed
  assert "shard 1/3" not in printed
  # A DiT trains from them: a fresh DiT predicts 0 (loss E[eps^2] ~ 1), and
  # 8 steps at the peak lr (no warmup) bring the loss to ~0.38 of it (a DiT
  # that does not learn stays at ~1).
  c = dit_cfg(vitok_run, steps=8, log_every=1, image_every=0, evals={})
  c.latents.source = f"shards:{out}"
  c.optim.warmup_steps = 0
  c.input.flip = True
  dit.train_and_evaluate(c, str(tmp_path / "dit"))
  loss = [json.loads(l)["loss"] for l in open(
      str(tmp_path / "dit" / "metrics.jsonl")) if '"loss"' in l]
  assert len(loss) == 8 and loss[0] == pytest.approx(1.0, abs=0.1), loss
  assert np.mean(loss[-3:]) < 0.6 * loss[0], loss
  with pytest.raises(ValueError, match="another encoding"):
    enc.encode(vitok_run, "embedded", 32, out, shard_size=4)
  no_flips = str(tmp_path / "no_flips")
  enc.encode(vitok_run, "embedded", 64, no_flips, shard_size=9, flips=False)
  assert not os.path.exists(latent_shards.flipped_path(no_flips, 0))
  with pytest.raises(ValueError, match="hold no flipped encodings"):
    latent_shards.make_train_dataset(no_flips, 3, seed=0, flip=True)


def test_bad_latent_shapes_and_missing_tokenizer_are_named(vitok_run, tmp_path):
  c = dit_cfg(vitok_run)
  c.latents.tokens = 32
  with pytest.raises(ValueError, match=r"wants latents of 32 tokens x 16 .*"
                     r"gives 64 tokens x 16 channels"):
    dit.train_and_evaluate(c, str(tmp_path / "a"))
  c = dit_cfg(vitok_run)
  c.latents.channels = 8
  with pytest.raises(ValueError, match=r"64 tokens x 8 channels.*64 tokens x "
                     r"16 channels"):
    dit.train_and_evaluate(c, str(tmp_path / "b"))
  c = dit_cfg(str(tmp_path / "no_such_run"))
  with pytest.raises(FileNotFoundError, match="config.tokenizer.workdir=.*"
                     "no_such_run.*no ViTok checkpoint"):
    dit.train_and_evaluate(c, str(tmp_path / "c"))
  c = dit_config.get_config("runlocal")
  with pytest.raises(ValueError, match="config.tokenizer.workdir is not set"):
    dit.train_and_evaluate(c, str(tmp_path / "d"))
  c = dit_cfg(vitok_run, steps=2, evals={}, image_every=0)
  c.num_classes = 3  # the embedded photos have labels up to 8
  with pytest.raises(ValueError, match="config.num_classes=3"):
    dit.train_and_evaluate(c, str(tmp_path / "e"))


def test_export_tool_on_a_dit_run(dit_run, tmp_path, capsys):
  out = str(tmp_path / "dit.safetensors")
  err = helpers.load_tool("export_pytorch").main(
      ["--workdir", dit_run, "--ema", "--out", out, "--verify"])
  assert err < 1e-4
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
      "max relative error: ")
  cfg = json.load(open(str(tmp_path / "dit.json")))
  assert cfg["kind"] == "dit" and cfg["model"]["grid"] == [1, 8, 8]
  stats = dit.load_run_stats(dit_run)
  assert np.std(stats.std) > 0  # not the placeholder ones of a fresh state
  np.testing.assert_allclose(cfg["latent_stats"]["std"], stats.std)


def test_eval_job_runs_the_generation_evaluators(dit_run, vitok_run, capsys):
  from vitok_jax import eval as eval_lib
  c = dit_cfg(vitok_run)
  # The eval job is a final evaluation: final_num_samples, not num_samples.
  c.evals.classes.update(num_samples=5, final_num_samples=9)
  r = eval_lib.evaluate(c, dit_run)
  assert r["classes/num_samples"] == 9
  assert r["classes/own_class_psnr"] > r["classes/other_class_psnr"]
  assert "9 samples (random labels) at CFG 3.0" in capsys.readouterr().out
  saved = json.load(open(os.path.join(dit_run, "eval", "results_600.json")))
  assert saved["classes/own_class_psnr"] == pytest.approx(r["classes/own_class_psnr"])


def numpy_inception_score(logits, splits=10):
  """(mean, std) over contiguous splits of exp(E_x KL(p(y|x) || p(y)))."""
  scores = []
  for part in np.array_split(np.asarray(logits, np.float64), splits):
    logp = part - part.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    kl = np.sum(p * (logp - np.log(p.mean(0))), axis=1)
    scores.append(np.exp(kl.mean()))
  return np.mean(scores), np.std(scores)


def test_adm_metrics_run_periodically_in_training(vitok_run, tmp_path):
  """gFID, gIS, sFID, precision and recall of the generation evaluator, at
  10k-style periodic and 50k-style final budgets (here 16 and 24 samples),
  against the same numbers from the pieces: numpy IS, torch-fidelity's
  precision/recall, the Frechet distance of ADM's spatial features."""
  from vitok_jax.evaluators import metrics
  from vitok_jax.evaluators import ref_stats
  from vitok_jax.models import inception
  from tests import torch_reference as tr
  import vitok_jax.utils as u
  prc = tr.import_torch_fidelity_prc()
  # ADM's Inception input: the generation evaluator's default.
  net = jax.jit(lambda p, x: inception.FIDInceptionV3(
      spatial=True, input_kind="adm").apply({"params": p}, x))
  inc_params = jax.device_get(jax.jit(lambda: inception.FIDInceptionV3().init(
      jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32))["params"])())
  # A seeded random 4 of the training photos' eval crops: the reference.
  rc = dit.resolve_config(dit_cfg(vitok_run))
  photos = np.concatenate([
      np.asarray(metrics.quantize(b["image"])) / 255.0
      for b in input_pipeline.make_eval_dataset(
          rc.input, 4, 4, subset_seed=ref_stats.SUBSET_SEED)])
  photo_pool, _, photo_spatial = (np.asarray(o, np.float64)
                                  for o in net(inc_params, photos))
  # A random Inception's pool features differ between images by ~1% of
  # their common part, so its logits give every image nearly the same p(y|x)
  # and an IS of 1 + 1e-10, whatever logits it is computed from. Its fc is
  # remade: the photos' mean feature direction projected out and the rest
  # scaled so that logits differ between samples by units (gIS ~1.9): IS
  # from other numbers (the pool, softmax twice) is then another number.
  m = photo_pool.mean(0) / np.linalg.norm(photo_pool.mean(0))
  w = np.asarray(inc_params["fc"]["kernel"], np.float64)
  inc_params["fc"]["kernel"] = (3e5 * (w - np.outer(m, m @ w))).astype(
      np.float32)
  inc_path = str(tmp_path / "random_inception.npz")
  u.save_npz_tree(inc_path, inc_params)
  # 24 samples: one IS split (ADM's splits hold 5,000 samples each).
  gen = dict(type="generation", num_samples=16, final_num_samples=24,
             batch_size=24, cfg_scale=1.5, num_steps=2, log_steps=2,
             inception_weights=inc_path, seed=3, ref_examples=4)
  c = dit_cfg(vitok_run, steps=4, log_every=2, image_every=0,
              evals={"gen": gen})
  workdir = str(tmp_path / "dit")
  dit.train_and_evaluate(c, workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in rows if "gen/gfid" in r]
  assert [r["step"] for r in evals] == [2, 4]  # every log_steps and at the end
  assert [r["gen/num_samples"] for r in evals] == [16, 24]
  assert all(np.isfinite(r["gen/gfid"]) for r in evals)
  # The same numbers from the pieces: the step-4 EMA params' samples (same
  # seed) through Inception, against the training photos' statistics.
  rc = dit.resolve_config(c)
  mesh = sh.make_mesh(rc.mesh)
  setup = dit.make_setup(rc, mesh, codec_lib.load_pinned(rc))
  from vitok_jax.io import checkpoint as ckpt_lib
  state = ckpt_lib.load_state_tree(workdir)
  stats = dit.load_run_stats(workdir)
  sampler = dit.make_sampler(rc, setup, cfg_scale=1.5, num_steps=2)
  fn = lambda p, y, i, seed: sampler(p, setup.codec.params,
                                     (stats.mean, stats.std), y, i, seed)[0]
  labels = np.random.default_rng(3).integers(0, 9, 24)  # DiT's protocol
  pools, logits, spatials = [], [], []
  for images, y, _ in generation.generate(fn, state["params_ema"], labels, 24,
                                          mesh, seed=3):
    np.testing.assert_array_equal(y, labels)
    pool, lg, spatial = net(inc_params,
                            np.asarray(metrics.quantize(images)) / 255.0)
    pools.append(np.asarray(pool, np.float64))
    logits.append(np.asarray(lg))
    spatials.append(np.asarray(spatial, np.float64))
  pools, spatials = np.concatenate(pools), np.concatenate(spatials)
  # Frechet distances in closed form from the features (helpers.frechet_np).
  assert evals[-1]["gen/gfid"] == pytest.approx(
      helpers.frechet_np(pools, photo_pool), rel=1e-5)
  assert spatials.shape == (24, 2023)
  assert evals[-1]["gen/sfid"] == pytest.approx(
      helpers.frechet_np(spatials, photo_spatial), rel=1e-5)
  want = prc.calculate_precision_recall_full(
      tr.torch.from_numpy(pools.astype(np.float32)),
      tr.torch.from_numpy(photo_pool.astype(np.float32)), 3)
  # Counts over 24 samples and 4 references: equal, up to torch's float32.
  assert (evals[-1]["gen/precision"], evals[-1]["gen/recall"]) == (
      pytest.approx(want[0], abs=1e-6), pytest.approx(want[1], abs=1e-6))
  gis, gis_std = numpy_inception_score(np.concatenate(logits), splits=1)
  assert gis > 1.2, gis  # the logits tell samples apart (see above)
  assert evals[-1]["gen/gis"] == pytest.approx(gis, rel=1e-4)
  assert evals[-1]["gen/gis_splits"] == 1 and gis_std == 0
  assert evals[-1]["gen/gis_std"] == 0
  assert evals[-1]["gen/inception_input_adm"] == 1
