"""rFVD, like every reconstruction metric, does not depend on how many
processes computed it: a video ViTok's eval job (python -m vitok_jax.eval)
on 1 x 4 and 2 x 2 processes x fake CPU devices. (Its own file, so
that a parallel test run can schedule it beside test_multihost_jobs.py.)"""
import json
import os
import shutil

import jax
import pytest

from tests.helpers import ROOT, launch

pytestmark = pytest.mark.slow


def _video_args():
  """A tiny video ViTok's eval job: 6 pans of 10 frames (I3D needs 9) in
  batches of 4, so every layout pads the last batch; a random I3D."""
  return ["--config=configs/vitok/video_s_b4x8_128.py:runlocal,frames=10,"
          "real_videos=false",
          "--config.evals.val.num_examples=6",
          "--config.evals.val.batch_size=4",
          "--config.evals.val.i3d_weights=random",
          "--config.evals.val.inception_weights=none.npz"]


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory):
  return checkpoint_dir(tmp_path_factory.mktemp("video") / "run")


def checkpoint_dir(wd):
  """A freshly initialised video ViTok saved as step 1 of a run in `wd`
  (the eval job restores it like any run; training it first would only add
  compile time)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from vitok_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax import sharding as sh  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
  argv = ["eval"] + _video_args()
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                           sys_argv=argv)
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    fv(argv)
    config = tokenizer.resolve_config(holder.value)
  finally:
    os.chdir(cwd)
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  setup = tokenizer.make_setup(config, mesh)
  state = setup.init(jax.random.key(0))
  ckpt = ckpt_lib.Checkpointer(str(wd), async_save=False)
  ckpt.save(1, state, {}, config)
  ckpt.close()
  return wd


def test_video_eval_job_is_the_same_on_any_process_count(video_checkpoint,
                                                         tmp_path):
  """rPSNR, rSSIM and rFVD (whole-clip I3D features, reduced in float64
  across processes) on 1 x 4 and 2 x 2 processes x devices."""
  results = {}
  for procs, devs in [(1, 4), (2, 2)]:
    copy = tmp_path / f"{procs}x{devs}"
    shutil.copytree(video_checkpoint, copy)
    launch("vitok_jax.eval", _video_args() + [f"--workdir={copy}"],
           processes=procs, devices=devs)
    results[procs, devs] = json.loads(
        (copy / "eval" / "results_1.json").read_text())
  ref = results[1, 4]
  assert ref["val/num_examples"] == 6 * 10  # frames of 6 clips
  assert ref["val/rfvd_random_i3d"] == 1 and ref["val/rfvd"] > 0
  for k in ["val/rpsnr", "val/rssim", "val/rfvd", "val/bicubic_rpsnr"]:
    for layout, r in results.items():
      assert r[k] == pytest.approx(ref[k], rel=1e-5), (k, layout)
