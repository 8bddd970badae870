"""The paper's chain rehearsed as multi-process jobs through the real entry
points (jax.distributed on localhost, fake CPU devices, tiny shapes):

  stage 1 (2 x 2) -> stage 2 (2 x 2) -> eval job (1 x 4, 2 x 2: the
  same numbers; test_video_protocol.py does the same for rFVD) ->
  encode_dataset (2 processes) -> DiT on the shards (2 x 2)
  -> sample (1 and 2 processes: the same samples; resumed) -> gFID
  -> PyTorch export of both runs.
"""
import json
import shutil

import numpy as np
import pytest

from tests.helpers import ROOT, launch
from vitok_jax.models import inception
import vitok_jax.utils as u

pytestmark = pytest.mark.slow


def _config_args(inception_npz="none.npz", steps=4):
  return [f"--config=configs/vitok/s_b16_256.py:runlocal,steps={steps},"
          f"inception_weights={inception_npz}",
          "--config.log_every=2", f"--config.ckpt_every={steps}",
          "--config.image_every=0", "--config.input.res=32",
          "--config.input.batch_size=8",
          # 16 held-out tiles in batches of 12: the last batch is padded on
          # every process count.
          "--config.evals.heldout.batch_size=12"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run trained as 2 processes x 2 devices, with its final
  evaluation (rPSNR, rSSIM, bicubic; no Inception, which is slow to
  compile on 2 cores) on both processes."""
  tmp = tmp_path_factory.mktemp("mh")
  npz = str(tmp / "random_inception.npz")
  u.save_npz_tree(npz, u.random_frozen_params(inception.abstract_params()))
  wd = tmp / "run"
  outs = launch("vitok_jax.train", _config_args() + [f"--workdir={wd}"],
                processes=2, devices=2)
  return wd, npz, outs


def _stage2_args(stage1):
  return [f"--config=configs/vitok/s_b16_256_stage2.py:init_from={stage1},"
          "runlocal,steps=2",
          "--config.log_every=1", "--config.ckpt_every=2",
          "--config.image_every=0", "--config.input.res=32",
          "--config.input.batch_size=8",
          "--config.evals.heldout.batch_size=12"]


@pytest.fixture(scope="module")
def stage2(trained):
  """Stage 2 (frozen encoder, GAN, EMA) from stage 1, as 2 x 2."""
  wd = trained[0].parent / "stage2"
  outs = launch("vitok_jax.train", _stage2_args(trained[0]) +
                [f"--workdir={wd}"], processes=2, devices=2)
  return wd, outs


def test_training_evaluates_on_two_processes(trained):
  wd, _, outs = trained
  # Only process 0 prints the summary line.
  assert "held-out photos: rPSNR" in outs[0] and "[16 images]" in outs[0]
  assert "rPSNR" not in outs[1]
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in rows if "heldout/rpsnr" in r]
  assert len(final) == 1 and final[0]["step"] == 4
  assert final[0]["heldout/num_examples"] == 16


def test_eval_job_is_the_same_on_any_process_count(stage2, trained, tmp_path):
  """Stage 2's EMA params scored by the eval job on 2 layouts, and by the
  training run's own final evaluation."""
  wd, outs = stage2
  assert "held-out photos: rPSNR" in outs[0]
  npz = trained[1]
  results = {}
  for procs, devs in [(1, 4), (2, 2)]:
    copy = tmp_path / f"{procs}x{devs}"
    shutil.copytree(wd, copy)
    launch("vitok_jax.eval", _stage2_args(trained[0]) + [
        f"--workdir={copy}",
        f"--config.evals.heldout.inception_weights={npz}"],
           processes=procs, devices=devs, optimized=True)
    results[procs, devs] = json.loads(
        (copy / "eval" / "results_2.json").read_text())
    # Only process 0 writes.
    assert sorted(p.name for p in (copy / "eval").iterdir()
                  if p.suffix == ".json") == ["results_2.json"]
  ref = results[1, 4]
  assert ref["ema"] is True
  keys = ["heldout/rpsnr", "heldout/rssim", "heldout/rfid", "heldout/ris",
          "heldout/bicubic_rpsnr"]
  assert ref["heldout/num_examples"] == 16
  for k in keys:
    for layout, r in results.items():
      assert r[k] == pytest.approx(ref[k], rel=1e-5), (k, layout)
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in rows if "heldout/rpsnr" in r][-1]
  for k in ["heldout/rpsnr", "heldout/rssim", "heldout/bicubic_rpsnr"]:
    assert final[k] == pytest.approx(ref[k], rel=1e-5), k


def _dit_args(tokenizer_wd, shards, steps=4):
  return [f"--config=configs/dit/dit_l_vitok_s_b16_256.py:runlocal,"
          f"tokenizer={tokenizer_wd},shards={shards},steps={steps},tokens=16",
          "--config.log_every=2", f"--config.ckpt_every={steps}",
          "--config.image_every=0", "--config.input.res=32",
          "--config.input.batch_size=8", "--config.sampling.num_steps=4",
          "--config.evals.classes.num_steps=4",
          "--config.evals.classes.num_samples=10",
          "--config.evals.classes.final_num_samples=10"]


def _encode(tokenizer_wd, out, processes, devices):
  tool = str(ROOT / "tools" / "encode_dataset.py")
  return launch(None, [tool, f"--tokenizer={tokenizer_wd}", "--data=embedded",
                       "--res=32", "--shard_size=2", "--batch_size=2",
                       "--workers=2", f"--out={out}"], processes, devices)


@pytest.fixture(scope="module")
def shards(stage2):
  out = stage2[0].parent / "latents"
  return out, _encode(stage2[0], out, 2, 2)


@pytest.fixture(scope="module")
def dit_trained(stage2, shards, tmp_path_factory):
  """A tiny DiT on stage 2's latent shards, trained as 2 processes x 2
  devices: latent statistics, steps, its generation evaluator."""
  wd = tmp_path_factory.mktemp("dit") / "run"
  outs = launch("vitok_jax.train", _dit_args(stage2[0], shards[0]) +
                [f"--workdir={wd}"], processes=2, devices=2)
  return wd, outs


def test_dit_trains_and_evaluates_on_two_processes(dit_trained):
  wd, outs = dit_trained
  assert "classes: 10 samples" in outs[0] and "classes:" not in outs[1]
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in rows if "classes/num_samples" in r]
  assert final[-1]["classes/num_samples"] == 10
  assert (wd / "samples.png").exists()


def _samples(workdir, name="4_cfg3"):
  with np.load(workdir / "samples" / f"samples_{name}.npz") as f:
    return f["arr_0"], f["labels"]


def test_sample_is_the_same_on_any_process_count_and_resumes(
    dit_trained, stage2, shards, trained, tmp_path):
  wd, _ = dit_trained
  npz = trained[1]
  args = _dit_args(stage2[0], shards[0]) + [
      "--num=10", "--seed=3", "--cfg=3.0", "--steps=4", f"--inception={npz}"]
  results = {}
  for procs, devs, batch in [(1, 2, 4), (2, 1, 6)]:
    copy = tmp_path / f"{procs}x{devs}"
    shutil.copytree(wd, copy)
    # Inception weights in a folder of their own: each layout computes the
    # reference statistics (and their precision/recall subset) itself.
    own = tmp_path / f"inception_{procs}" / "inception.npz"
    own.parent.mkdir()
    shutil.copy(npz, own)
    launch("vitok_jax.sample", args[:-1] + [
        f"--inception={own}", f"--workdir={copy}", f"--batch_size={batch}"],
           processes=procs, devices=devs)
    assert list((own.parent / "ref_stats").glob("*.npz"))
    results[procs] = json.loads(
        (copy / "samples" / "results_4_cfg3.json").read_text())
  one, two = _samples(tmp_path / "1x2"), _samples(tmp_path / "2x1")
  assert one[0].shape == (10, 32, 32, 3) and one[0].dtype == np.uint8
  # DiT's protocol: uniform random classes, seeded by --seed.
  np.testing.assert_array_equal(
      one[1], np.random.default_rng(3).integers(0, 9, 10))
  np.testing.assert_array_equal(one[1], two[1])
  # One seed, the same samples (sample i's noise depends on (seed, i) only);
  # XLA may round differently on other shardings: at most one grey level.
  assert np.abs(one[0].astype(int) - two[0].astype(int)).max() <= 1
  assert results[1]["sample/num_new"] == results[2]["sample/num_new"] == 10
  # ADM's metrics, each process scoring its own samples (precision/recall
  # on the gathered features): the same numbers on 1 and 2 processes.
  for k in ["sample/gfid", "sample/gis", "sample/sfid"]:
    assert results[2][k] == pytest.approx(results[1][k], rel=1e-5), k
  for k in ["sample/precision", "sample/recall"]:
    assert results[2][k] == results[1][k], k
  # Killed midway: the parts of two batches never got written. The rerun
  # (another process count and batch) samples exactly what is missing.
  parts = sorted((tmp_path / "2x1" / "samples").glob("parts_*/part_*.npz"))
  lost = parts[:2]
  n_lost = 0
  for p in lost:
    with np.load(p) as f:
      n_lost += len(f["index"])
    p.unlink()
  (tmp_path / "2x1" / "samples" / "samples_4_cfg3.npz").unlink()
  launch("vitok_jax.sample", args[:-1] + [
      f"--workdir={tmp_path / '2x1'}", "--batch_size=4",
      "--inception=none.npz"], processes=1, devices=2)
  r = json.loads((tmp_path / "2x1" / "samples" / "results_4_cfg3.json"
                  ).read_text())
  assert r["sample/num_new"] == n_lost and r["sample/num_reused"] == 10 - n_lost
  again = _samples(tmp_path / "2x1")
  assert np.abs(again[0].astype(int) - two[0].astype(int)).max() <= 1
  np.testing.assert_array_equal(again[1], two[1])


def test_encode_dataset_on_two_processes_writes_each_shard_once(
    stage2, shards, tmp_path):
  """Process i writes shards i, i + 2, ...; together they equal a
  one-process encoding."""
  two, outs = shards
  assert "this process's 3 of 5 shards" in outs[0]
  assert "this process's 2 of 5 shards" in outs[1]
  _encode(stage2[0], tmp_path / "one", 1, 4)
  for s in range(5):
    for kind in ("latents", "labels"):
      a = np.load(two / f"shard_{s:05d}.{kind}.npy")
      b = np.load(tmp_path / "one" / f"shard_{s:05d}.{kind}.npy")
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not list(two.glob("*.tmp*"))


def test_both_runs_export_to_pytorch(stage2, dit_trained, tmp_path):
  """The last link: the 2-process runs' checkpoints export and verify."""
  tool = str(ROOT / "tools" / "export_pytorch.py")
  for wd, name in ((stage2[0], "vitok"), (dit_trained[0], "dit")):
    out = launch(None, [tool, f"--workdir={wd}", "--ema",
                        f"--out={tmp_path / name}.safetensors", "--verify"],
                 processes=1, devices=1)[0]
    err = float(out.strip().splitlines()[-1].split(":")[-1])
    assert err < 1e-4, (name, out[-2000:])
    assert (tmp_path / f"{name}.safetensors").exists()
