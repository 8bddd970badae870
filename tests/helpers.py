"""Shared test helpers."""
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

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
  for hundreds of steps spends more time running code than compiling it,
  and the unoptimised code runs about twice as slow."""
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
