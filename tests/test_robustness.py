"""What clusters and real data do to a run: preemption, NaN, a second job on
the workdir, damaged checkpoints, failures right after a save, typos."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs.vitok import s_b16_256
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.io import workdir_lock
from vitok_jax.trainers import tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The command line and the in-process config of one small run.
OVERRIDES = {"input.res": 32, "input.batch_size": 8, "total_steps": 100_000,
             "log_every": 5, "ckpt_every": 100_000, "image_every": 0,
             "optim.warmup_steps": 5}


def config(**changes):
  c = s_b16_256.get_config("runlocal,lpips=0")
  for key, value in {**OVERRIDES, **changes}.items():
    parent = c
    for part in key.split(".")[:-1]:
      parent = parent[part]
    parent[key.split(".")[-1]] = value
  return c


def command(workdir, **changes):
  return ([sys.executable, "-m", "vitok_jax.train",
           "--config=configs/vitok/s_b16_256.py:runlocal,lpips=0",
           f"--workdir={workdir}"] +
          [f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()])


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(l) for l in open(path) if l.strip().endswith("}")]


def test_sigterm_saves_that_step_and_the_restart_is_exact(tmp_path):
  run = str(tmp_path / "run")
  log = open(tmp_path / "log.txt", "w")
  p = subprocess.Popen(command(run), cwd=ROOT, stdout=log, stderr=log)
  deadline = time.time() + 300
  while not any(r.get("step", 0) >= 10 for r in _rows(run)):
    assert p.poll() is None and time.time() < deadline, open(tmp_path / "log.txt").read()
    time.sleep(0.5)
  p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=120) == 128 + signal.SIGTERM
  stopped = ckpt_lib.Checkpointer(run).latest_step()
  assert stopped is not None and stopped >= 10  # the step it was at, saved
  assert "Stopped at step %d" % stopped in open(tmp_path / "log.txt").read()
  tokenizer.train_and_evaluate(config(evals={}), run, max_steps=3)
  straight = str(tmp_path / "straight")
  tokenizer.train_and_evaluate(config(evals={}), straight, max_steps=stopped + 3)
  a, b = ckpt_lib.load_state_tree(run), ckpt_lib.load_state_tree(straight)
  assert int(a["step"]) == int(b["step"]) == stopped + 3
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt"], b["opt"])


def test_failure_right_after_a_save_exits_nonzero_at_once(tmp_path):
  run = tmp_path / "run"
  (run / "reconstruction.png").mkdir(parents=True)  # the picture cannot be written
  t0 = time.time()
  r = subprocess.run(command(run, ckpt_every=5, image_every=5), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-3000:]
  assert "IsADirectoryError" in r.stderr and "vitok_jax.train failed" in r.stderr
  assert time.time() - t0 < 240
  # The save just before the failure was finished, not lost.
  state = ckpt_lib.load_state_tree(str(run))
  assert int(state["step"]) == 5


def test_non_finite_state_is_never_saved(tmp_path):
  run = str(tmp_path / "run")
  c = config(evals={}, total_steps=40, ckpt_every=2, log_every=100)
  c.optim.update(base_lr=1e9, warmup_steps=0, grad_clip=0.0)
  with pytest.raises(FloatingPointError, match=r"first at step (\d+)") as e:
    tokenizer.train_and_evaluate(c, run)
  first = int(e.value.args[0].split("first at step ")[1].split()[0])
  latest = ckpt_lib.Checkpointer(run).latest_step()
  assert latest is None or latest < first
  if latest is not None:
    state = ckpt_lib.load_state_tree(run)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_a_second_job_on_the_workdir_fails_naming_the_first(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "LOCK").write_text(json.dumps(
      {"host": __import__("socket").gethostname(), "pid": os.getpid(), "since": 0}))
  with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {os.getpid()}"):
    tokenizer.train_and_evaluate(config(evals={}, total_steps=2), str(run))
  assert not (run / "checkpoints").exists()
  # The lock of a process that has died is taken over, and released at the end.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (run / "LOCK").write_text(json.dumps(
      {"host": __import__("socket").gethostname(), "pid": dead.pid, "since": 0}))
  tokenizer.train_and_evaluate(config(evals={}, total_steps=2), str(run))
  assert not (run / "LOCK").exists()
  assert ckpt_lib.Checkpointer(str(run)).latest_step() == 2


def test_a_damaged_latest_checkpoint_falls_back_and_metrics_stay_unique(tmp_path):
  c = config(evals={}, total_steps=6, ckpt_every=3, log_every=1)
  run, straight = str(tmp_path / "run"), str(tmp_path / "straight")
  tokenizer.train_and_evaluate(c, run)
  tokenizer.train_and_evaluate(c, straight)
  state_dir = os.path.join(run, "checkpoints", "6", "state")
  for root, _, files in os.walk(state_dir):  # damage every stored array
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 3, 1))
  c_resume = config(evals={}, total_steps=6, ckpt_every=3, log_every=1)
  tokenizer.train_and_evaluate(c_resume, run)  # falls back to 3, redoes 4..6
  assert os.path.isdir(os.path.join(run, "checkpoints_damaged", "6"))
  a, b = ckpt_lib.load_state_tree(run), ckpt_lib.load_state_tree(straight)
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  steps = [r["step"] for r in _rows(run) if "loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]  # one row per step after the resume


def test_eval_on_a_mistyped_workdir_creates_nothing(tmp_path):
  from vitok_jax import eval as eval_lib
  with pytest.raises(FileNotFoundError, match="no checkpoints folder"):
    eval_lib.evaluate(config(evals={}), str(tmp_path / "typo"))
  assert not (tmp_path / "typo").exists()


def test_a_missing_config_file_is_named(tmp_path):
  r = subprocess.run([sys.executable, "-m", "vitok_jax.train",
                      "--config=configs/vitok/nope.py", f"--workdir={tmp_path}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert r.returncode == 2  # a config error: one line, exit 2
  assert ("vitok_jax.train: config error: --config: no file "
          "'configs/vitok/nope.py'") in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
