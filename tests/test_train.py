"""The stage-1 training system: outputs, exact resume, sharding, config errors."""
import json
import os

import jax
import numpy as np
import pytest

from configs.vitok import s_b16_256
from vitok_jax.data import demo_sources
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import tokenizer


def small_config(steps=6, **input_kw):
  c = s_b16_256.get_config("runlocal,lpips=0")
  c.total_steps = steps
  c.log_every = 2
  c.ckpt_every = steps // 2
  c.image_every = 0
  c.evals = {}  # only the runlocal test below evaluates
  c.input.update(res=32, batch_size=8, **input_kw)
  # The demo's lr suits its 3000 steps; these runs take a few dozen.
  c.optim.update(base_lr=0.032, warmup_steps=5)  # peak 1e-3 at batch 8
  return c


def test_runlocal_trains_and_writes_outputs(tmp_path, capsys):
  c = small_config(steps=40)
  c.evals = s_b16_256.get_config("runlocal").evals
  c.log_every = 5
  c.ckpt_every = 20
  tokenizer.train_and_evaluate(c, str(tmp_path))
  files = os.listdir(tmp_path)
  assert any(f.startswith("events.out.tfevents") for f in files)
  assert "reconstruction.png" in files
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
  all_rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  rows = [r for r in all_rows if "loss" in r]
  evals = [r for r in all_rows if "heldout/rpsnr" in r]
  assert [r["step"] for r in evals] == [40]  # the config's final evaluation
  ev = evals[0]
  assert ev["heldout/num_examples"] == 16  # tiles of photos it never saw
  assert ev["heldout/code_floats"] == 16 * 16  # 4x4 codes of c=16 at 32x32
  # Recomputed from the step-40 checkpoint and with PIL's bicubic through
  # 9 x 9 x 3 floats (3 * 9**2 = 243 <= 256 < 3 * 10**2).
  from tests import test_eval as ref
  heldout = dict(data="heldout", res=32)
  want = ref.recompute_from_workdir(c, str(tmp_path), heldout)
  want.update(ref.bicubic_metrics(ref.eval_examples(heldout), side=9))
  ref.assert_matches(ev, "heldout", want, ("rpsnr", "rssim", "bicubic_rpsnr",
                                           "bicubic_rssim"))
  # The run ends with the line people read, beside the bicubic baseline.
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("held-out photos: rPSNR ") and "bicubic at the same E = 256" in last
  assert f"{ev['heldout/rpsnr']:.2f} dB" in last
  # The picture shows held-out photos (top row), not training photos.
  from PIL import Image
  from vitok_jax.data import preprocess as ops
  pic = np.asarray(Image.open(tmp_path / "reconstruction.png"))
  first = ops.center_crop(demo_sources.HeldOutPhotos()[0], 32)
  np.testing.assert_array_equal(pic[:32, :32], first)
  losses = [r["rec_l2"] for r in rows]
  assert [r["step"] for r in rows] == list(range(5, 41, 5))
  assert np.mean(losses[-2:]) < 0.6 * losses[0], losses
  assert all("images_per_sec" in r and "l2_grads" in r and "lr" in r for r in rows)


def test_resume_is_exact(tmp_path):
  c = small_config(steps=6)
  tokenizer.train_and_evaluate(c, str(tmp_path / "straight"))
  tokenizer.train_and_evaluate(c, str(tmp_path / "split"), max_steps=3)
  assert os.listdir(tmp_path / "split" / "checkpoints") == ["3"]
  tokenizer.train_and_evaluate(c, str(tmp_path / "split"))  # resumes at 3
  a = ckpt_lib.load_state_tree(str(tmp_path / "straight"))
  b = ckpt_lib.load_state_tree(str(tmp_path / "split"))
  assert int(a["step"]) == int(b["step"]) == 6
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt"], b["opt"])
  # The resumed run continued the data stream instead of restarting it.
  def losses(run):
    rows = map(json.loads, open(tmp_path / run / "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
  la, lb = losses("straight"), losses("split")
  assert sorted(lb) == [2, 3, 4, 6]  # the stopped run also logged its last step
  assert [la[s] for s in (2, 4, 6)] == [lb[s] for s in (2, 4, 6)]


def _one_config():
  c = tokenizer.resolve_config(small_config())
  c.input.batch_size = 8
  c.sharding.fsdp_min_size = 1  # shard every divisible leaf
  return c


def _run_steps(config, mesh, n=2):
  setup = tokenizer.make_setup(config, mesh)
  state = setup.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(n):
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    state, m = setup.step(state, sh.put_global_batch(x, setup.batch_sharding), {})
    losses.append(float(m["loss"]))
  return setup, state, losses


@pytest.mark.parametrize("axes", [[("data", 8), ("fsdp", 1)],
                                  [("data", 2), ("fsdp", 4)],
                                  [("data", 1), ("fsdp", 8)]])
def test_sharded_step_matches_single_device(axes):
  c = _one_config()
  _, ref_state, ref_losses = _run_steps(c, sh.make_mesh([("data", 1)], jax.devices()[:1]))
  setup, state, losses = _run_steps(c, sh.make_mesh(axes))
  if dict(axes).get("fsdp", 1) > 1:  # FSDP really shards something
    specs = [s.spec for s in jax.tree.leaves(setup.state_sharding["params"])]
    assert any("fsdp" in tuple(s) for s in specs)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(state["params"]), jax.device_get(ref_state["params"]))


def test_checkpoint_restores_on_another_mesh(tmp_path):
  c = _one_config()
  fsdp = sh.make_mesh([("data", 2), ("fsdp", 4)])
  setup8, state8, _ = _run_steps(c, fsdp, n=1)
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  ck.save(1, state8, {"next_index": 7}, c)
  ck.close()
  expected = jax.device_get(state8)
  for mesh in (sh.make_mesh([("data", 1)], jax.devices()[:1]),
               sh.make_mesh([("data", 8), ("fsdp", 1)])):
    setup = tokenizer.make_setup(c, mesh)
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    state, data_state, cfg = ck.restore(setup.abstract_state, setup.state_sharding)
    ck.close()
    assert data_state == {"next_index": 7}
    assert cfg["model"]["variant"] == "mu-mu/8"
    leaf = state["params"]["decoder"]["block_0"]["mlp"]["up"]["kernel"]
    assert leaf.sharding.mesh.devices.size == mesh.devices.size
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), expected)
    # ... and training continues from it on the new mesh.
    x = np.zeros((8, 32, 32, 3), np.float32)
    setup.step(state, sh.put_global_batch(x, setup.batch_sharding), {})


def test_unknown_config_key_is_named(tmp_path):
  c = small_config()
  c.optim.lrr = 1.0
  with pytest.raises(ValueError, match="config.optim.lrr"):
    tokenizer.train_and_evaluate(c, str(tmp_path))


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
  c = small_config()
  c.input.batch_size = 6  # 8 devices
  with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 8 devices"):
    tokenizer.train_and_evaluate(c, str(tmp_path))


def test_missing_dataset_is_named(tmp_path):
  c = small_config(data=f"folder:{tmp_path}/nope")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope"):
    tokenizer.train_and_evaluate(c, str(tmp_path / "wd"))
  c = small_config(data="tfds:no_such_dataset_xyz:train", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no_such_dataset_xyz"):
    tokenizer.train_and_evaluate(c, str(tmp_path / "wd2"))


def test_resolution_not_divisible_by_patch_fails_at_start(tmp_path):
  c = small_config()
  c.input.res = 36
  with pytest.raises(ValueError, match="height H=36 is not divisible"):
    tokenizer.train_and_evaluate(c, str(tmp_path))


def test_unreadable_files_are_skipped_and_reported(tmp_path, caplog):
  from tests.test_input_pipeline import _folder_with_bad_files
  data = tmp_path / "data"
  data.mkdir()
  _folder_with_bad_files(data)  # 8 photos, 3 unreadable files
  c = small_config(steps=6, data=f"folder:{data}", max_bad_fraction=0.5)
  with caplog.at_level("WARNING"):
    tokenizer.train_and_evaluate(c, str(tmp_path / "run"))
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  counts = [r["data/skipped_records"] for r in rows if "loss" in r]
  assert [r["step"] for r in rows if "loss" in r][-1] == 6  # trained to the end
  # 48 photos read = 6 epochs: the 3 bad files come up about 3 times each.
  assert counts == sorted(counts) and counts[-1] >= 15
  assert any("unreadable training records skipped so far" in r.getMessage()
             for r in caplog.records)
  # At the default 1% the same folder stops the run, naming the key.
  c = small_config(steps=6, data=f"folder:{data}")
  with pytest.raises(ValueError, match="config.input.max_bad_fraction"):
    tokenizer.train_and_evaluate(c, str(tmp_path / "run2"))


@pytest.mark.parametrize("key,value", [
    ("total_steps", -5), ("total_steps", 0), ("log_every", 0),
    ("input.batch_size", 0), ("optim.base_lr", -1e-4),
    ("optim.base_lr", float("nan")), ("ema_decay", 1.0), ("optim.b2", 1.0),
    ("loss.kl_weight", -1.0), ("input.max_bad_fraction", 1.0),
    ("disc.lr", -2e-5), ("model.code_channels", 0)])
def test_values_out_of_range_fail_at_start_naming_the_key(key, value):
  c = tokenizer.resolve_config(small_config())  # every key present
  parent = c
  for part in key.split(".")[:-1]:
    parent = parent[part]
  parent[key.split(".")[-1]] = value
  with pytest.raises(ValueError, match=f"config.{key}="):
    tokenizer.resolve_config(c)
