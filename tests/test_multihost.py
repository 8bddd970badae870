"""Two processes on localhost (JAX's distributed runtime, CPU collectives)
run sharded train steps and agree with each other and with one process."""
import json
import os
import pathlib
import socket
import subprocess
import sys

from tests import helpers

ROOT = pathlib.Path(__file__).parents[1]
TOOL = ROOT / "tools" / "multihost_check.py"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=helpers.xla_flags(devices))
  return env


def _result(stdout):
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  assert lines, stdout
  return json.loads(lines[-1])


def test_two_processes_agree_with_one():
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(TOOL), "--coordinator", f"127.0.0.1:{port}",
       "--num_processes", "2", "--process_id", str(i)],
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-3000:]
    outs.append(_result(out))
  single = subprocess.run([sys.executable, str(TOOL)], env=_env(4),
                          capture_output=True, text=True, timeout=400)
  assert single.returncode == 0, single.stderr[-3000:]
  ref = _result(single.stdout)
  assert [o["processes"] for o in outs] == [2, 2]
  assert outs[0]["devices"] == outs[1]["devices"] == ref["devices"] == 4
  assert outs[0]["losses"] == outs[1]["losses"]
  assert outs[0]["param_l2"] == outs[1]["param_l2"]
  for a, b in zip(outs[0]["losses"], ref["losses"]):
    assert abs(a - b) <= 1e-5 * abs(b)
  assert abs(outs[0]["param_l2"] - ref["param_l2"]) <= 1e-5 * ref["param_l2"]
