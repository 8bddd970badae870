"""Shared test helpers."""
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).parents[1]

# XLA flags of every test process. At the tests' tiny shapes compiling costs
# more than running, and LLVM's optimisation passes are most of a compile:
# without them the suite does the same computations with about a third
# less CPU time (BENCHMARKS.md). XLA:CPU's newer fusion emitters (MLIR) take
# longer again to compile than the older ones they replace; with the old
# ones test_vitok, test_dit and test_optim need 57 s of CPU instead of 93.
# The jobs users run keep XLA's defaults.
COMPILE_FLAGS = ("--xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true "
                 "--xla_cpu_use_fusion_emitters=false")


def xla_flags(devices: int, optimized: bool = False) -> str:
  """XLA_FLAGS for a test process with `devices` fake CPU devices; with
  `optimized`, XLA's default optimisation (as users run): a job that trains
  for hundreds of steps, or runs Inception at 299 px over its images (the
  jobs that score FID), spends more time running code than compiling it,
  and the unoptimised code runs about 1.5-2 times as slow."""
  flags = f"--xla_force_host_platform_device_count={devices}"
  return flags if optimized else f"{flags} {COMPILE_FLAGS}"


def load_tool(name: str):
  """tools/<name>.py as a module (tools/ is scripts, not a package)."""
  spec = importlib.util.spec_from_file_location(f"tool_{name}",
                                                ROOT / "tools" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(module, args, processes, devices, timeout=600, optimized=False):
  """Runs `python -m module args` (module None: `python args`, a script) as
  `processes` processes of `devices` fake CPU devices each; returns their
  stdouts (asserting every one exits 0). `optimized`: see xla_flags."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=xla_flags(devices, optimized))
  port = _free_port()
  dist = lambda i: ([f"--coordinator_address=127.0.0.1:{port}",
                     f"--num_processes={processes}", f"--process_id={i}"]
                    if processes > 1 else [])
  run = [sys.executable] + (["-m", module] if module else [])
  procs = [subprocess.Popen(run + [*args, *dist(i)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, f"{module} {args} failed:\n{err[-4000:]}"
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def frechet_np(f1, f2):
  """Frechet distance of Gaussians fitted to two sets of n1, n2 feature
  vectors, in closed form. With A, B the centred [n, d] features,
  S1 = A'A / (n1-1), S2 = B'B / (n2-1), and the non-zero eigenvalues of
  S1 S2 are the squared singular values of A B' / sqrt((n1-1)(n2-1)), so
  Tr sqrt(S1 S2) = ||A B'||_* / sqrt((n1-1)(n2-1)): an n1 x n2 SVD, exact
  for the rank-deficient covariances of fewer examples than dimensions (no
  d x d matrix square root, which loses ~1e-3 there and takes half a
  minute at d = 2048)."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  n1, n2 = len(f1), len(f2)
  assert min(n1, n2) >= 2
  a, b = f1 - f1.mean(0), f2 - f2.mean(0)
  diff = f1.mean(0) - f2.mean(0)
  nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
  return float(diff @ diff + np.sum(a * a) / (n1 - 1) +
               np.sum(b * b) / (n2 - 1) -
               2 * nuclear / np.sqrt((n1 - 1) * (n2 - 1)))
