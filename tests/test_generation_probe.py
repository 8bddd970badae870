"""The generation probe (evaluators/generation_probe.py, trainers/probe.py):
its training views are the same on any process count, its numbers are
recomputed from its own samples, it is deterministic for a seed, and it runs
periodically in tokenizer training and in the eval job, where 2 processes
give the number 1 process gave."""
import json

import jax
import numpy as np
import pytest

from configs.vitok import mini_e_sweep
from tests.helpers import frechet_np
from tests.helpers import launch
from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import common as evaluators
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import generation_probe
from vitok_jax.evaluators import metrics
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import probe
from vitok_jax.trainers import tokenizer

# A tiny probe: 18 views (2 per photo), a DiT-mu for 12 steps, 8 samples.
PROBE = dict(num_examples=18, encode_batch=8, dit_size="mu", dtype="float32",
             steps=12, batch_size=8, base_lr=0.128, warmup_steps=2,
             ema_decay=0.9, num_samples=8, sample_batch=8, sample_steps=3,
             cfg_scale=3.0, seed=5, nearest=True)


def test_training_views_are_the_same_on_any_process_count(monkeypatch):
  """20 views of the 9 photos (more views than photos: the epochs are
  seeded permutations), each augmented by its own rng: one process reads
  them all; as each of 2 processes, every view once, the same pixels."""
  cfg = input_pipeline.default_config(data="embedded", res=16,
                                      crop_scale=(0.05, 1.0))
  one = {}
  for b in input_pipeline.make_eval_dataset(cfg, 4, 20, views_seed=3):
    for i, x, y in zip(b["index"][b["mask"]], b["image"][b["mask"]],
                       b["label"][b["mask"]]):
      one[int(i)] = (x, int(y))
  assert sorted(one) == list(range(20))
  labels = [one[i][1] for i in range(20)]
  # Epoch by epoch, every photo once: a permutation of the 9 classes.
  assert sorted(labels[:9]) == list(range(9))
  assert sorted(labels[9:18]) == list(range(9))
  # Random crops, not the evaluation's centre crop.
  centre = {int(b["label"][0]): b["image"][0] for b in
            input_pipeline.make_eval_dataset(cfg, 1, 9)}
  assert not any(np.allclose(one[i][0], centre[one[i][1]]) for i in range(9))
  two = {}
  for pid in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda pid=pid: pid)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for b in input_pipeline.make_eval_dataset(cfg, 4, 20, views_seed=3):
      for i, x in zip(b["index"][b["mask"]], b["image"][b["mask"]]):
        assert int(i) not in two
        two[int(i)] = x
    monkeypatch.undo()
  assert sorted(two) == list(range(20))
  for i in range(20):
    np.testing.assert_array_equal(two[i], one[i][0])
  other = list(input_pipeline.make_eval_dataset(cfg, 20, 20, views_seed=4))
  assert not np.allclose(other[0]["image"][0], one[0][0])


def _tokenizer(res=32):
  c = mini_e_sweep.get_config(f"runlocal,p=16,c=4,res={res}")
  c = tokenizer.resolve_config(c)
  mesh = sh.make_mesh(c.mesh, devices=jax.devices()[:2])
  setup = tokenizer.make_setup(c, mesh)
  state = setup.init(jax.random.key(0))
  return c, mesh, setup, state["params"]


@pytest.mark.slow
def test_probe_numbers_are_recomputed_from_its_samples_and_repeat():
  """On an untrained mu-mu/16 (2 devices): gFID against the views and the
  nearest-view PSNRs recomputed in numpy from the probe's own samples
  (the same fit, labels and noise); a second run (latents from the cache)
  and a fresh evaluator give the same numbers bit for bit; another seed,
  another probe."""
  c, mesh, setup, params = _tokenizer()
  cfg = evaluators.config("generation_probe", inception_weights="random",
                          **PROBE)
  fns = tokenizer.predict_fns(setup)
  ev = generation_probe.Evaluator("probe", cfg, predict_fns=fns, mesh=mesh,
                                  input_config=c.input)
  r = dict(ev.run(params))
  assert r["probe/num_samples"] == 8 and r["probe/gfid_random_inception"] == 1
  assert "probe DiT-mu (ddpm, 9 classes) trained 12 steps at batch 8" in (
      ev.summary(r))
  assert "RANDOM Inception" in ev.summary(r)
  assert dict(ev.run(params)) == r
  fresh = generation_probe.Evaluator("probe", cfg, predict_fns=fns,
                                     mesh=mesh, input_config=c.input)
  assert dict(fresh.run(params)) == r
  # The recomputation: views' and samples' Inception pool features.
  views, view_labels = [], []
  for b in input_pipeline.make_eval_dataset(ev.data_config, 8, 18,
                                            views_seed=0):
    views.append(np.asarray(metrics.quantize(b["image"][b["mask"]])))
    view_labels.append(b["label"][b["mask"]])
  views, view_labels = np.concatenate(views), np.concatenate(view_labels)
  tok = jax.device_put(params, sh.replicated(mesh))
  z = ev.latents(params, tok)
  want_z = np.asarray(jax.jit(ev.codec.encode)(params, views / 127.5 - 1.0))
  np.testing.assert_allclose(z, want_z, atol=1e-3)
  sample, loss = probe.fit(ev.config, mesh, ev.codec, tok, z, view_labels, 9)
  assert loss == pytest.approx(r["probe/probe_loss"], rel=1e-6)
  labels = generation.sample_labels(8, 9, "random", 5)
  (images, y, _), = generation.generate(lambda p, y, i, s: sample(y, i, s),
                                        None, labels, 8, mesh, 5)
  np.testing.assert_array_equal(y, labels)
  q = np.asarray(metrics.quantize(images))

  def pool(x):  # Inception pool features of uint8 images, 8 at a time
    out = []
    for k in range(0, len(x), 8):
      part = x[k:k + 8]
      pad = np.zeros((8 - len(part),) + x.shape[1:], x.dtype)
      f = ev.nets.inception_net(ev.nets.inception_params, sh.put_global_batch(
          np.concatenate([part, pad]).astype(np.float32) / 255.0,
          sh.batch_sharding(mesh)))[0]
      out.append(np.asarray(f, np.float64)[:len(part)])
    return np.concatenate(out)

  real, fake = pool(views), pool(q)
  assert r["probe/gfid"] == pytest.approx(frechet_np(fake, real), rel=1e-6)
  psnr = 10 * np.log10(255.0**2 / np.maximum(((
      q[:, None].astype(np.float64) - views[None]) ** 2).mean((2, 3, 4)),
                                             1e-10))
  same = labels[:, None] == view_labels[None]
  own = np.where(same, psnr, -np.inf).max(1)
  other = np.where(~same, psnr, -np.inf).max(1)
  assert r["probe/own_class_psnr"] == pytest.approx(own.mean(), rel=1e-9)
  assert r["probe/other_class_psnr"] == pytest.approx(other.mean(), rel=1e-9)
  # Another seed, another probe (its DiT, labels and noise); without an
  # Inception file, its own numbers, which carry the samples.
  cfg.update(seed=6, inception_weights="none.npz")
  reseeded = dict(generation_probe.Evaluator(
      "probe", cfg, predict_fns=fns, mesh=mesh, input_config=c.input).run(
          params))
  assert "probe/gfid" not in reseeded
  for k in ("probe/probe_loss", "probe/own_class_psnr"):
    assert reseeded[k] != r[k], k


def test_a_dit_run_cannot_use_the_probe():
  with pytest.raises(ValueError, match=r"needs the predict functions "
                     r"\['codec', 'fit_probe'\]"):
    evaluators.build("probe", evaluators.config("generation_probe"),
                     predict_fns={"sample": None, "num_classes": 9},
                     mesh=None)


@pytest.mark.slow
def test_periodic_in_training_and_the_eval_job_on_two_processes(tmp_path):
  """The real entry points: a mini-sweep run (1 process x 2 devices) probes
  at steps 2 and 4; the eval job on its checkpoint as 2 processes x 1 device
  gives the final probe's numbers (no Inception file: the nearest-view PSNRs
  and the probe's loss, which carry the views, the DiT and its samples)."""
  wd = tmp_path / "run"
  args = ["--config=configs/vitok/mini_e_sweep.py:p=16,c=4,steps=4,res=32",
          "--config.log_every=2", "--config.ckpt_every=4",
          "--config.evals.probe.inception_weights=none.npz",
          "--config.evals.heldout.num_examples=8",
          "--config.evals.heldout.batch_size=8",
          "--config.evals.probe.log_steps=2"] + [
              f"--config.evals.probe.{k}={v}" for k, v in PROBE.items()
              if k not in ("nearest",)]
  out = launch("vitok_jax.train", args + [f"--workdir={wd}"], processes=1,
               devices=2)[0]
  line = [l for l in out.splitlines() if l.startswith("probe:")]
  assert len(line) == 1 and "[probe DiT-mu (ddpm, 9 classes)" in line[0]
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  probes = [r for r in rows if "probe/probe_loss" in r]
  assert [r["step"] for r in probes] == [2, 4]
  assert "probe/gfid" not in probes[-1]  # no Inception weights
  launch("vitok_jax.eval", args + [f"--workdir={wd}"], processes=2, devices=1)
  saved = json.loads((wd / "eval" / "results_4.json").read_text())
  assert saved["protocols"]["probe"].startswith("probe DiT-mu (ddpm, 9 "
                                                "classes) trained 12 steps")
  for k in ("probe/probe_loss", "probe/own_class_psnr",
            "probe/other_class_psnr", "probe/nearest_is_own_class"):
    assert saved[k] == pytest.approx(probes[-1][k], rel=1e-4, abs=1e-6), k
