"""The paper's experiments as configs and sweeps: every config and every run
of every sweep resolves; tools/sweep.py runs (and resumes) a sweep and
tools/plot_sweep.py turns real run outputs into the plot and the table."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_tool
from vitok_jax import trainers

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
                 if p.name not in ("__init__.py", "sweeps.py"))


def load_config(path: str, arg: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(arg)
  return trainers.get(config.trainer).resolve_config(config)


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_and_its_runlocal_resolve(path, monkeypatch, tmp_path):
  monkeypatch.chdir(ROOT)
  (tmp_path / "s1").mkdir()
  extra = "tokenizer=/runs/t" if "/dit/" in path else (
      f"init_from={tmp_path}/s1" if "stage2" in path else "")
  for arg in (extra, ",".join(a for a in ("runlocal", extra) if a)):
    config = load_config(path, arg)
    assert config.total_steps > 0
  assert config.total_steps <= 3000  # :runlocal is small


def test_every_run_of_every_sweep_resolves(monkeypatch, tmp_path):
  monkeypatch.chdir(ROOT)
  sweep_tool = load_tool("sweep")
  sweeps = sweep_tool.load_sweeps()
  assert {"fig2", "table2", "fig4", "fig5", "fig6", "fig10", "fig11", "fig13",
          "fig18", "fig19", "fig20", "tables3_5", "mini_e"} <= set(sweeps)
  for name, sweep in sweeps.items():
    root = str(tmp_path / name)
    os.makedirs(os.path.join(root, "stage1"))  # fig18's init_from
    runs = sweep_tool.expand(sweep, root)
    assert len({r["workdir"] for r in runs}) == len(runs), name
    configs = [load_config(sweep["config"], r["config_arg"]) for r in runs]
    if len(runs) > 1:  # the runs differ in their configs, not just in name
      assert len({c.to_json() for c in configs}) == len(runs), name
  assert len(sweep_tool.expand(sweeps["fig2"], "/r")) == 15
  assert len(sweep_tool.expand(sweeps["mini_e"], "/r")) == 9


def test_sweep_runs_resumes_skips_and_plots(tmp_path):
  sweep_tool = load_tool("sweep")
  root = str(tmp_path / "sweep")
  sweep = dict(config="configs/vitok/mini_e_sweep.py",
               grid={"p": ["8", "16"], "c": ["4"]})
  runs = sweep_tool.expand(sweep, root, "runlocal")
  # The first run is interrupted after 2 of its 4 steps (a preemption).
  from configs.vitok import mini_e_sweep
  from vitok_jax.trainers import tokenizer
  tokenizer.train_and_evaluate(mini_e_sweep.get_config(runs[0]["config_arg"]),
                               runs[0]["workdir"], max_steps=2)
  assert not sweep_tool.is_finished(runs[0], sweep["config"])
  command = [sys.executable, "tools/sweep.py",
             "--config=configs/vitok/mini_e_sweep.py", "--grid=p=8,16 x c=4",
             f"--root={root}", "--run", "--extra=runlocal"]
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "all 2 runs finished" in out.stdout
  rows = [json.loads(l) for l in open(os.path.join(runs[0]["workdir"], "metrics.jsonl"))]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # resumed, not restarted
  assert all(sweep_tool.is_finished(r, sweep["config"]) for r in runs)
  # A second call skips both.
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert again.stdout.count("finished, skipped") == 2
  res = load_tool("plot_sweep").main(["--root", root])
  assert {r["name"] for r in res["rows"]} == {"p=8_c=4", "p=16_c=4"}
  assert {r["E"] for r in res["rows"]} == {64 * 4, 16 * 4}
  md = (tmp_path / "sweep" / "sweep.md").read_text()
  assert "| p=16_c=4 | 16 | 64 |" in md
  assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
