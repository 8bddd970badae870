"""A user's install: a plain `pip install .` (no extras) into a fresh virtual
environment runs the demo's first steps and every console script's --help,
from a directory that is not the repository (configs resolve against the
installed package), with no torch, libtpu or test tooling installed."""
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]
SCRIPTS = ("vitok-train", "vitok-eval", "vitok-sample", "vitok-export")


def _run(cmd, **kw):
  r = subprocess.run(cmd, capture_output=True, text=True, **kw)
  assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
  return r


def test_plain_install_runs_the_demo_and_every_console_script(tmp_path):
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)])
  bin_dir = venv / "bin"
  # A non-editable install: what a user of a release gets (the package and
  # configs/ copied into site-packages, nothing read from this checkout),
  # built from a clean copy (pip builds in the source tree: a stale build/
  # there could bring files the checkout no longer has).
  src = tmp_path / "src"
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", "build", "dist", "*.egg-info", "workdirs", "weights",
      "__pycache__", ".pytest_cache"))
  # --no-compile: pip does not byte-compile every installed package's
  # sources up front; Python compiles what the demo imports on first use.
  _run([str(bin_dir / "pip"), "install", "-q", "--no-compile",
        "--disable-pip-version-check", str(src)], timeout=1800)
  size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()
             and not f.is_symlink())
  print(f"plain install: {size / 2**30:.2f} GiB in {venv}")  # pytest -s
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYTHON", "JAX_COMPILATION", "XLA_FLAGS"))}
  env.update(JAX_PLATFORMS="cpu", PATH=f"{bin_dir}:{env.get('PATH', '')}")
  py = str(bin_dir / "python")
  missing = _run([py, "-c", (
      "import importlib.util as u; print([m for m in ('torch', 'libtpu', "
      "'pytest') if u.find_spec(m)])")], env=env, cwd=tmp_path)
  assert missing.stdout.strip() == "[]", missing.stdout
  where = _run([py, "-c", "import vitok_jax, configs; print(vitok_jax.__file__)"],
               env=env, cwd=tmp_path).stdout
  assert str(venv) in where and str(ROOT) not in where and str(src) not in where
  for script in SCRIPTS:
    r = _run([str(bin_dir / script), "--help"], env=env, cwd=tmp_path)
    assert "--workdir" in r.stdout, (script, r.stdout)
  # The README's demo, two steps of it, from outside the repository.
  wd = tmp_path / "workdirs" / "demo"
  r = _run([str(bin_dir / "vitok-train"),
            "--config=configs/vitok/s_b16_256.py:runlocal,steps=2",
            f"--workdir={wd}"], env=env, cwd=tmp_path, timeout=1800)
  assert "held-out photos: rPSNR" in r.stdout + r.stderr
  assert (wd / "metrics.jsonl").exists()
  # The eval job on it, with the run's own saved config.
  r = _run([str(bin_dir / "vitok-eval"), f"--workdir={wd}"], env=env,
           cwd=tmp_path, timeout=1800)
  assert "held-out photos: rPSNR" in r.stdout + r.stderr
  # The export needs no torch (only --verify and loading do: the [torch] extra).
  r = _run([str(bin_dir / "vitok-export"), f"--workdir={wd}",
            f"--out={tmp_path / 'demo.safetensors'}"], env=env, cwd=tmp_path,
           timeout=1800)
  assert (tmp_path / "demo.safetensors").exists()
  assert (tmp_path / "demo.json").exists()
