"""The eval job and the reconstruction evaluator."""
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from configs.vitok import s_b16_256
from tests.helpers import load_tool
from vitok_jax import eval as eval_job
from vitok_jax import sharding as sh
from vitok_jax.evaluators import common as evaluators
from vitok_jax.models import inception
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run")
  c = s_b16_256.get_config("runlocal,lpips=0")
  c.total_steps, c.log_every, c.ckpt_every, c.image_every = 4, 2, 4, 0
  c.input.res = 32
  c.evals = {}
  tokenizer.train_and_evaluate(c, str(wd))
  return c, str(wd)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inc") / "random_inception.npz")
  params = jax.jit(lambda: inception.FIDInceptionV3().init(
      jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32))["params"])()
  u.save_npz_tree(path, jax.device_get(params))
  return path


def test_eval_job_writes_tensorboard_json_and_picture(run, caplog):
  c, wd = run
  c = c.copy_and_resolve_references()
  c.evals = {"val": dict(type="reconstruction", batch_size=8, num_examples=5,
                         inception_weights=os.path.join(wd, "missing.npz"),
                         data=dict(data="embedded", res=32))}
  results = eval_job.evaluate(c, wd)
  assert "rFID and rIS are SKIPPED" in caplog.text
  assert "missing.npz" in caplog.text and "tools/convert_inception.py" in caplog.text
  assert set(results) == {"val/rpsnr", "val/rssim", "val/num_examples"}
  assert results["val/num_examples"] == 5
  assert 5 < results["val/rpsnr"] < 60 and -1 < results["val/rssim"] <= 1
  out = pathlib.Path(wd) / "eval"
  saved = json.loads((out / "results_4.json").read_text())
  assert saved["val/rpsnr"] == pytest.approx(results["val/rpsnr"])
  assert (out / "val_reconstruction_4.png").exists()
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(out))
  acc.Reload()
  assert "val/rpsnr" in acc.Tags()["scalars"]
  ev = acc.Scalars("val/rpsnr")[-1]
  assert ev.step == 4 and ev.value == pytest.approx(results["val/rpsnr"], rel=1e-5)


def test_evaluator_fid_is_and_cached_reference_stats(run, random_inception, tmp_path):
  c, wd = run
  c = tokenizer.resolve_config(c)
  mesh = sh.make_mesh(c.mesh)
  setup = tokenizer.make_setup(c, mesh)
  state = setup.init(jax.random.key(0))
  ev_cfg = dict(type="reconstruction", batch_size=8, inception_weights=random_inception,
                data=dict(data="embedded", res=32))
  ev = evaluators.build("val", ev_cfg, model=setup.model, mesh=mesh,
                        params_sharding=setup.state_sharding["params"])
  r = dict(ev.run(state["params"]))
  assert r["val/num_examples"] == 9 and r["val/rfid"] > 0 and r["val/ris"] >= 1.0
  # Reference statistics cached by the tool give the same rFID.
  load_tool("compute_ref_stats").main(["--data", "embedded", "--res", "32", "--inception", random_inception,
             "--batch_size", "4", "--out", str(tmp_path / "ref.npz")])
  ev2 = evaluators.build("val", dict(ev_cfg, ref_stats=str(tmp_path / "ref.npz")),
                         model=setup.model, mesh=mesh,
                         params_sharding=setup.state_sharding["params"])
  r2 = dict(ev2.run(state["params"]))
  assert r2["val/rfid"] == pytest.approx(r["val/rfid"], rel=1e-3)


def test_unknown_evaluator_type():
  with pytest.raises(ValueError, match="config.evals.x.type='nope'"):
    evaluators.build("x", dict(type="nope"))
