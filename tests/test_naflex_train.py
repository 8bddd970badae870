"""NaFlex through the real trainer and the real eval job (trainers/naflex.py,
evaluators/reconstruction_native.py): training on mixed aspect ratios lowers
the loss and ends with native evaluation rows; the eval job gives the same
numbers on 1 process x 4 devices and 2 processes x 2 devices, and the
training run's own final evaluation; config errors name their keys."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs.vitok import s_b16_256
from tests.helpers import launch
from vitok_jax.data import naflex_pipeline
from vitok_jax.models import inception
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import naflex
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u

# The demo at 32 px: rows of at most 16 patches of 8 px.
ARG = "runlocal,naflex=True,lpips=0,res=32,inception_weights=none.npz"


def small_config(steps):
  c = s_b16_256.get_config(ARG + f",steps={steps}")
  c.log_every = 5
  c.ckpt_every = steps
  c.image_every = steps
  c.input.batch_size = 8
  c.evals.heldout.batch_size = 8
  # The demo's lr suits its 3000 steps; this run takes a few dozen.
  c.optim.update(base_lr=0.064, warmup_steps=5)  # peak 2e-3 at batch 8
  return c


def test_config_errors_name_the_keys():
  c = s_b16_256.get_config(ARG)
  c.model.posemb = "learn"
  with pytest.raises(ValueError, match=r"config\.model\.posemb='learn'"):
    tokenizer.resolve_config(c)
  c = s_b16_256.get_config(ARG + ",latent=4")
  with pytest.raises(ValueError, match=r"config\.model\.num_latent_tokens=4"):
    tokenizer.resolve_config(c)
  # The square setup (tools/bench.py, aot_compile.py) says it does not apply.
  with pytest.raises(NotImplementedError, match="naflex"):
    tokenizer.input_shape(tokenizer.resolve_config(s_b16_256.get_config(ARG)))
  # The square recipe is untouched: a learned table, no NaFlex.
  square = s_b16_256.get_config("runlocal")
  assert not square.input.naflex and square.model.posemb == "learn"
  assert square.evals.heldout.type == "reconstruction"


def test_training_on_mixed_aspects_learns_and_evaluates_natively(
    tmp_path, capsys):
  c = small_config(steps=40)
  tokenizer.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 8 and losses[-1] < 0.7 * losses[0], losses
  final = [r for r in rows if "heldout/rpsnr" in r]
  assert [r["step"] for r in final] == [40]
  ev = final[0]
  # 12 tiles of the 3 held-out photos at their own aspect ratios (3:2, 6:7).
  assert ev["heldout/num_examples"] == 12
  assert 0 <= ev["heldout/padding_fraction"] < 0.25
  assert ev["heldout/code_floats"] <= 16 * 16  # <= 16 codes of c=16
  for k in ("rpsnr", "rssim", "bicubic_rpsnr", "bicubic_rssim"):
    assert np.isfinite(ev[f"heldout/{k}"]), k
  assert "reconstruction.png" in os.listdir(tmp_path)
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("held-out photos (native): rPSNR ")
  assert "bicubic at the same floats per image" in last
  assert "[12 images at native aspect ratio, NaFlex <= 16 patches" in last


@pytest.mark.slow
def test_eval_job_is_the_same_on_any_process_count(tmp_path):
  """The real entry points: a run trained in 2 processes x 2 devices, then
  `python -m vitok_jax.eval` (with a random Inception, so that the named
  rFID is compared too) on 1 x 4 and 2 x 2."""
  npz = str(tmp_path / "random_inception.npz")
  u.save_npz_tree(npz, u.random_frozen_params(inception.abstract_params()))
  args = [f"--config=configs/vitok/s_b16_256.py:{ARG},steps=4",
          "--config.log_every=2", "--config.ckpt_every=4",
          "--config.image_every=0", "--config.input.batch_size=8",
          # 12 tiles in batches of 8: the last batch is padded everywhere.
          "--config.evals.heldout.batch_size=8"]
  wd = tmp_path / "run"
  outs = launch("vitok_jax.train", args + [f"--workdir={wd}"], processes=2,
                devices=2)
  assert "held-out photos (native): rPSNR" in outs[0]
  assert "rPSNR" not in outs[1]  # only process 0 prints
  results = {}
  for procs, devs in [(1, 4), (2, 2)]:
    copy = tmp_path / f"{procs}x{devs}"
    shutil.copytree(wd, copy)
    launch("vitok_jax.eval", args + [
        f"--workdir={copy}",
        f"--config.evals.heldout.inception_weights={npz}"],
           processes=procs, devices=devs, optimized=True)
    results[procs, devs] = json.loads(
        (copy / "eval" / "results_4.json").read_text())
    assert sorted(p.name for p in (copy / "eval").iterdir()
                  if p.suffix == ".json") == ["results_4.json"]
  ref = results[1, 4]
  assert ref["heldout/num_examples"] == 12
  assert "rfid_native_cc256" in ref["protocols"]["heldout"]
  keys = ["heldout/rpsnr", "heldout/rssim", "heldout/rfid_native_cc256",
          "heldout/bicubic_rpsnr", "heldout/bicubic_rssim",
          "heldout/padding_fraction", "heldout/code_floats"]
  for k in keys:
    assert results[2, 2][k] == pytest.approx(ref[k], rel=1e-5), k
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in rows if "heldout/rpsnr" in r][-1]
  for k in ["heldout/rpsnr", "heldout/rssim", "heldout/bicubic_rpsnr"]:
    assert final[k] == pytest.approx(ref[k], rel=1e-5), k


def test_stage2_terms_lpips_and_gan_on_the_canvas():
  """The whole loss on rows (LPIPS with random weights, the GAN with R1)
  over a 2-device mesh: finite, every term measured, D updated."""
  c = small_config(steps=4)
  c.loss.update(lpips_weight=1.0, lpips_allow_random=True, lpips_weights="",
                gan_weight=0.5,
                r1_weight=1.0)
  c.disc.update(channel_base=256, channel_max=16, mbstd_group=2,
                warmup_steps=0)
  c = tokenizer.resolve_config(c)
  mesh = sh.make_mesh(c.mesh, devices=jax.devices()[:2])
  setup = naflex.make_setup(c, mesh)
  state = setup.init(jax.random.key(0))
  d_before = jax.device_get(state["d_params"])
  rows = next(iter(naflex_pipeline.make_train_dataset(
      c.input, 0, setup.model.patch)))
  rows = sh.put_global_batch({k: rows[k] for k in naflex.ROW_KEYS},
                             setup.batch_sharding)
  state, m = setup.step(state, rows, tokenizer.load_frozen(c, mesh))
  m = jax.device_get(m)
  assert m["finite"]
  for k in ("rec_l2", "kl", "lpips", "gan_g", "d_real", "d_fake", "r1"):
    assert k in m and np.isfinite(m[k]), k
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), d_before,
                       jax.device_get(state["d_params"]))
  assert max(jax.tree.leaves(moved)) > 0
