"""The commands as a user meets them (vitok_jax/cli.py): every entry point
and tool has a complete --help that exits 0; a config error is one line that
names the key (and the closest valid one) with exit status 2; configs load
from any working directory; one mesh syntax in two spellings."""
from concurrent import futures
import os
import pathlib
import re
import subprocess
import sys

import pytest

from vitok_jax import cli
from vitok_jax.parallel import sharding

ROOT = pathlib.Path(__file__).parents[1]
ENTRY_POINTS = {"vitok_jax.train": "train.py", "vitok_jax.eval": "eval.py",
                "vitok_jax.sample": "sample.py", "vitok_jax.export": "export.py"}
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py"))


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device is plenty for --help
  return env


def _run(args, cwd=ROOT, timeout=300):
  return subprocess.run([sys.executable] + args, cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _flags_of(source: str):
  """The flags a module defines, from its source: argparse's add_argument
  and absl's DEFINE_*."""
  names = re.findall(r'add_argument\(\s*"(--[\w-]+)"', source)
  names += ["--" + n for n in re.findall(
      r'DEFINE_(?:string|integer|float|bool|enum|list|config_file)\(\s*"(\w+)"',
      source)]
  return sorted(set(names))


def _help_cases():
  for module, f in ENTRY_POINTS.items():
    yield module, ["-m", module, "--help"], (ROOT / "vitok_jax" / f)
  for tool in TOOLS:
    yield f"tools/{tool}.py", [str(ROOT / "tools" / f"{tool}.py"), "--help"], (
        ROOT / "tools" / f"{tool}.py")


def test_every_entry_point_and_tool_has_a_complete_help(tmp_path):
  cases = list(_help_cases())
  # From another directory: nothing may depend on the cwd being the root.
  with futures.ThreadPoolExecutor(4) as pool:
    runs = list(pool.map(lambda c: _run(c[1], cwd=tmp_path), cases))
  bad = []
  for (name, _, source), r in zip(cases, runs):
    if r.returncode != 0:
      bad.append(f"{name}: exit {r.returncode}: {r.stderr[-300:]}")
      continue
    text = r.stdout + r.stderr
    for flag in _flags_of(source.read_text()):
      if flag not in text and flag.replace("--", "--[no]") not in text:
        bad.append(f"{name}: --help does not mention {flag}")
  assert not bad, "\n".join(bad)
  # The startup flags are the entry points' too.
  assert "--coordinator_address" in runs[0].stdout


@pytest.mark.parametrize("override,says", [
    ("--config.optim.lrr=1",
     "--config.optim.lrr: config.optim has no key 'lrr' (closest valid key: "
     "'base_lr')"),
    ("--config.optim.base_lr=abc", "--config.optim.base_lr=abc"),
    ("--config.optim.b1=3.0", "config.optim.b1=3.0 is invalid: it must be in"),
])
def test_a_config_error_is_one_line_naming_the_key_and_exits_2(
    override, says, tmp_path):
  r = _run(["-m", "vitok_jax.train",
            "--config=configs/vitok/s_b16_256.py:runlocal", override,
            f"--workdir={tmp_path}/w"])
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if "config error" in l]
  assert len(lines) == 1 and says in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w")  # nothing started


def test_an_unknown_config_argument_names_the_closest_one(tmp_path):
  r = _run(["-m", "vitok_jax.train",
            "--config=configs/vitok/s_b16_256.py:runlocl",
            f"--workdir={tmp_path}/w"], cwd=tmp_path)
  assert r.returncode == 2
  assert "Unknown config argument 'runlocl' (did you mean 'runlocal'?)" in (
      r.stderr)
  assert "Traceback" not in r.stderr


def test_a_failure_names_the_job(tmp_path):
  r = _run(["-m", "vitok_jax.eval", f"--workdir={tmp_path}"])
  assert r.returncode == 1
  assert "vitok_jax.eval failed: FileNotFoundError: No checkpoint in" in (
      r.stderr)
  assert "Training failed" not in r.stderr


def test_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rel = "configs/vitok/s_b16_256.py"
  assert cli.find_config(rel) == str(ROOT / rel)
  assert cli.resolve_config_args(
      ["x", f"--config={rel}:runlocal,c=8", "--config", f"{rel}:runlocal"]) == [
          "x", f"--config={ROOT / rel}:runlocal,c=8", "--config",
          f"{ROOT / rel}:runlocal"]
  # A file that exists in the cwd wins over the repository's.
  (tmp_path / "configs" / "vitok").mkdir(parents=True)
  (tmp_path / rel).write_text("")
  assert cli.find_config(rel) == rel
  monkeypatch.chdir(ROOT.parent)
  c = cli.load_config_file(f"{ROOT.name}/{rel}:runlocal")
  assert c.trainer == "tokenizer" and c.input.data == "embedded"


def test_one_mesh_syntax_in_two_spellings():
  want = (("data", 4), ("fsdp", -1))
  assert sharding.parse_mesh("data:4,fsdp:-1") == want
  assert sharding.parse_mesh("data:4,fsdp") == want
  assert sharding.parse_mesh("(('data', 4), ('fsdp', -1))") == want
  with pytest.raises(ValueError, match="is not name:size"):
    sharding.parse_mesh("data=4")
  argv = cli.resolve_config_args(["x", "--config.mesh=data:2,fsdp:-1"])
  assert argv[1] == "--config.mesh=(('data', 2), ('fsdp', -1))"
  kept = "--config.mesh=(('data', 2), ('fsdp', -1))"
  assert cli.resolve_config_args(["x", kept])[1] == kept


def test_a_saved_config_without_newer_keys_takes_their_defaults(tmp_path):
  """A run saved before a key existed still evaluates without --config."""
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
  saved = tokenizer.default_config().to_dict()
  del saved["profile_steps"], saved["input"]["max_bad_fraction"]
  saved["total_steps"] = 7
  folder = tmp_path / "checkpoints" / "5" / "config"
  folder.mkdir(parents=True)
  fileio.write_json(str(folder / "metadata"), saved)
  config = cli.run_config(str(tmp_path), None,
                          lambda name: tokenizer.default_config())
  assert config.profile_steps == 0 and config.total_steps == 7
  assert config.input.max_bad_fraction == 0.01
  with pytest.raises(FileNotFoundError, match="No checkpoint for step 4"):
    cli.run_config(str(tmp_path), 4)
