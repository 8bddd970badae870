"""The whole chain once, at the smallest shapes, in about a minute: the quick
tier's end-to-end path (`pytest -m "not slow"`). A tokenizer trains two
steps through `python -m vitok_jax.train` and evaluates; the eval job scores
the same params the same way; tools/encode_dataset.py writes its latents as
shards; a DiT trains two steps on them, evaluates its samples and samples
through vitok_jax.sample; both runs export to PyTorch and verify. The slow
tier checks each link against independent calculations."""
import json
import os
import pathlib

import numpy as np
import pytest

from configs.dit import dit_l_vitok_s_b16_256 as dit_config
from configs.vitok import s_b16_256
from tests import helpers
from vitok_jax import cli
from vitok_jax import eval as eval_job
from vitok_jax.evaluators import generation
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax import sample as sample_lib
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.trainers import dit


ARG = "runlocal,lpips=0,steps=2,res=32,batch=8,inception_weights=none.npz"


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
  """Trained by the real entry point, one process of 2 fake devices."""
  wd = str(tmp_path_factory.mktemp("smoke") / "vitok")
  out = helpers.launch("vitok_jax.train", [
      f"--config=configs/vitok/s_b16_256.py:{ARG}", f"--workdir={wd}",
      "--config.log_every=1", "--config.ckpt_every=1",
      # A CPU has no known peak: one is given, so MFU is logged; and a
      # profiler trace of one step.
      "--config.peak_tflops=0.05", "--config.profile_steps=1"], processes=1,
                       devices=2)[0]
  c = s_b16_256.get_config(ARG)
  c.log_every = c.ckpt_every = 1
  return c, wd, out


def _rows(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_tokenizer_trains_evaluates_and_the_eval_job_agrees(tokenizer_run):
  c, wd, out = tokenizer_run
  assert "held-out photos: rPSNR" in out and "[16 images]" in out
  assert all(np.isfinite(r["loss"]) for r in _rows(wd) if "loss" in r)
  assert all(0 < r["perf/mfu"] < 1 for r in _rows(wd) if "loss" in r)
  assert not any("perf/device_memory_gib" in r for r in _rows(wd))  # CPU
  assert list((pathlib.Path(wd) / "profile").rglob("*.xplane.pb"))
  assert ckpt_lib.Checkpointer(wd).all_steps() == [1, 2]
  final = [r for r in _rows(wd) if "heldout/rpsnr" in r]
  assert [r["step"] for r in final] == [2] and final[0][
      "heldout/num_examples"] == 16
  assert os.path.exists(os.path.join(wd, "reconstruction.png"))
  # The eval job without --config: the config the run saved.
  r = eval_job.evaluate(cli.run_config(wd), wd)
  for k in ("heldout/rpsnr", "heldout/rssim", "heldout/bicubic_rpsnr"):
    assert r[k] == pytest.approx(final[0][k], rel=1e-5), k


@pytest.fixture(scope="module")
def dit_run(tokenizer_run):
  root = os.path.dirname(tokenizer_run[1])
  shards, wd = os.path.join(root, "latents"), os.path.join(root, "dit")
  helpers.load_tool("encode_dataset").main([
      f"--tokenizer={tokenizer_run[1]}", "--data=embedded", "--res=32",
      "--shard_size=4", "--batch_size=4", "--workers=1", f"--out={shards}"])
  assert sorted(os.listdir(shards))[:3] == [
      "meta.json", "shard_00000.flipped.npy", "shard_00000.labels.npy"]
  c = dit_config.get_config(f"runlocal,tokenizer={tokenizer_run[1]},steps=2,"
                            f"tokens=16,res=32,batch=8,shards={shards}")
  c.log_every = c.ckpt_every = c.image_every = 1
  c.num_preview = 8
  c.sampling.num_steps = 2
  c.evals.classes.update(num_samples=4, final_num_samples=4, batch_size=8,
                         num_steps=2)
  m = dit.train_and_evaluate(c, wd)
  return c, wd, m


def test_dit_trains_samples_and_evaluates(dit_run):
  c, wd, m = dit_run
  assert np.isfinite(m["loss"]) and m["lr"] > 0
  final = [r for r in _rows(wd) if "classes/num_samples" in r]
  assert final[-1]["classes/num_samples"] == 4 and final[-1]["step"] == 2
  stats = dit.load_run_stats(wd)
  assert stats.mean.shape == (16,) and np.all(stats.std > 0)
  # vitok_jax.sample without --config: the run's saved config and the
  # tokenizer it is pinned to.
  out = sample_lib.sample(cli.run_config(wd), wd, 5, cfg=2.0, steps=2,
                          batch_size=8)
  with np.load(out["npz"]) as f:
    assert f["arr_0"].shape == (5, 32, 32, 3) and f["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(f["labels"], generation.sample_labels(
        5, 9, "random", seed=0))


@pytest.mark.parametrize("which", ["tokenizer", "dit"])
def test_both_runs_export_to_pytorch(which, tokenizer_run, dit_run, tmp_path):
  wd = tokenizer_run[1] if which == "tokenizer" else dit_run[1]
  err = helpers.load_tool("export_pytorch").main(
      ["--workdir", wd, "--ema" if which == "dit" else "--step=2",
       "--out", str(tmp_path / "m.safetensors"), "--verify"])
  assert err < 1e-4


def test_a_resume_with_another_sample_setting_is_refused(dit_run, tmp_path):
  """vitok_jax.sample records every setting that changes a sample besides
  those in its folder's name (step, CFG, seed): a rerun into the same parts
  with another eta, step count, label mode, solver (flow) or tokenizer step
  is refused before it samples, naming the setting."""
  import copy
  import shutil
  c, wd, _ = dit_run
  run = lambda c, wd, **kw: sample_lib.sample(c, wd, 3, cfg=2.0, batch_size=8,
                                              **dict(dict(steps=2), **kw))
  run(c, wd)  # (or resumes test_dit_trains_samples_and_evaluates's)
  for kw, theirs_now in (
      (dict(eta=0.5), ("eta", "0.0, 0.5")),
      (dict(steps=3), ("num_steps", "2, 3")),
      (dict(labels="balanced"), ("labels", "'random', 'balanced'"))):
    with pytest.raises(ValueError, match=rf"'{theirs_now[0]}': "
                       rf"\({theirs_now[1]}\)"):
      run(c, wd, **kw)
  # A flow-matching DiT (here the same params read as velocities): its ODE
  # solver.
  f = copy.deepcopy(c)
  f.diffusion.kind = "flow"
  assert run(f, wd, seed=1)["sample/num_new"] == 3
  f.sampling.solver = "heun"
  with pytest.raises(ValueError, match=r"'flow_solver': \('euler', 'heun'\)"):
    run(f, wd, seed=1)
  # The tokenizer's step: a run without a pin (tokenizer.json; an older
  # run) decodes with the step the config names.
  old = str(tmp_path / "dit")
  shutil.copytree(wd, old)
  os.remove(codec_lib.pin_path(old))
  t = copy.deepcopy(c)
  t.latents.source = "encode"
  t.tokenizer.step = 1
  with pytest.raises(ValueError, match=r"'tokenizer_step': \(2, 1\)"):
    run(t, old)
