"""Every key of a trainer's default config can be set from the command line,
for every config file and its :runlocal, parsed as train.py parses flags
(ml_collections config_flags, locked config): one idiom, no None fields
that refuse an override, no documented key missing from a config."""
import ast

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from tests.helpers import ROOT
from vitok_jax import trainers

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob(
    "*.py") if p.name not in ("__init__.py", "sweeps.py"))


def parse_like_train(argv):
  """train.py's --config flag (lock_config=True) on fresh flag values;
  config_flags reads the command line (sys.argv in train.py) when the flag
  is defined, to know which overrides to accept."""
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                           lock_config=True,
                                           sys_argv=["train"] + argv)
  fv(["train"] + argv)
  return holder.value


def leaves(cfg, prefix=""):
  """(dotted key, value, type) of every leaf; evals entries included."""
  for key in cfg.keys():
    value, path = cfg[key], prefix + key
    if isinstance(value, ml_collections.ConfigDict) and len(value.keys()):
      yield from leaves(value, path + ".")
    elif not isinstance(value, ml_collections.ConfigDict):
      yield path, value, cfg.get_type(key)


def new_value(key, value, kind):
  """A value of the field's type that differs from `value`, as a flag
  string, and as the config should then hold it."""
  if kind is bool:
    return str(not value).lower(), not value
  if kind is int:
    v = 3 if value is None else value + 1
    return str(v), v
  if kind is float:
    v = 0.5 if not value else (value / 2 if 0 < value < 1 else value + 1.5)
    return repr(v), v
  if kind is str:
    v = "x" if not value else value + "_x"
    return v, v
  if kind is tuple:
    if key.endswith("mesh"):
      v = (("data", 2), ("fsdp", 4))
    elif key.endswith(("rules", "freeze")):
      v = (("encoder/.*",) if key.endswith("freeze")
           else (("kernel", "fsdp"),))
    elif value and isinstance(value[0], float):
      v = tuple(x + 0.25 for x in value)
    else:
      v = (8, 16)
    return repr(v), v
  raise AssertionError(f"{key}: a field of type {kind} cannot be set from the "
                       "command line")


@pytest.mark.parametrize("path", CONFIGS)
def test_every_default_key_can_be_overridden_from_the_command_line(
    path, monkeypatch, tmp_path):
  monkeypatch.chdir(ROOT)
  extra = ("init_from=" + str(tmp_path)) if "stage2" in path else ""
  for arg in (extra, ",".join(a for a in ("runlocal", extra) if a)):
    spec = f"--config={path}" + (f":{arg}" if arg else "")
    config = parse_like_train([spec])
    defaults = trainers.get(config.trainer).default_config()
    keys = [(k, kind) for k, _, kind in leaves(defaults)]
    # ... and every field of the config's own evaluators.
    keys += [(f"evals.{k}", kind) for k, _, kind in leaves(config.evals)]
    assert len(keys) > 60, keys
    argv, want = [spec], {}
    for key, kind in keys:
      value = config
      for part in key.split("."):
        value = value[part]
      text, want[key] = new_value(key, value, kind)
      argv.append(f"--config.{key}={text}")
    got = parse_like_train(argv)
    for key in want:
      value = got
      for part in key.split("."):
        value = value[part]
      if isinstance(want[key], tuple):
        value = ast.literal_eval(repr(tuple(value)))
      assert value == want[key], (spec, key, value, want[key])


def test_an_unknown_key_on_the_command_line_fails_naming_it(monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(AttributeError, match='"max_bad_fraction" instead of '
                     '"max_bad_frac"'):
    parse_like_train(["--config=configs/vitok/s_b16_256.py:runlocal",
                      "--config.input.max_bad_frac=0.2"])
