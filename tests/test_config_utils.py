import re

import ml_collections
import pytest

from vitok_jax import config_utils
from vitok_jax import optim


def test_parse_arg_types_and_bare_flags():
  a = config_utils.parse_arg("variant=S-B/8,res=512,runlocal", variant="S-B/16",
                             res=256, runlocal=False, lr=1e-4)
  assert (a.variant, a.res, a.runlocal, a.lr) == ("S-B/8", 512, True, 1e-4)
  with pytest.raises(ValueError, match="Unknown config argument 'reslution'"):
    config_utils.parse_arg("reslution=3", res=256)


def test_runlocal_defaults_apply_first_and_explicit_arguments_win():
  spec = dict(res=256, steps=100, runlocal=False)
  local = dict(res=64, steps=3)
  a = config_utils.parse_arg("runlocal,steps=7", local_defaults=local, **spec)
  assert (a.res, a.steps, a.runlocal) == (64, 7, True)
  a = config_utils.parse_arg("steps=7", local_defaults=local, **spec)
  assert (a.res, a.steps) == (256, 7)  # without runlocal: the full defaults
  with pytest.raises(ValueError, match="unknown arguments \\['nope'\\]"):
    config_utils.parse_arg("runlocal", local_defaults=dict(nope=1), **spec)


def test_with_defaults_completes_and_rejects_unknown_nested_keys():
  placeholder = ml_collections.config_dict.placeholder
  defaults = lambda: ml_collections.ConfigDict(dict(
      a=1, n=placeholder(int), optim=dict(lr=1.0, b1=0.9)))
  merged = config_utils.with_defaults(dict(optim=dict(lr=2.0)), defaults())
  assert (merged.a, merged.n, merged.optim.lr, merged.optim.b1) == (
      1, None, 2.0, 0.9)
  merged.n = 3  # the placeholder keeps its type: an int can be set
  with pytest.raises(TypeError):
    merged.n = "three"
  with pytest.raises(ValueError, match="config.optim.lrr"):
    config_utils.with_defaults(dict(optim=dict(lrr=3)), defaults())
  assert config_utils.missing_keys(ml_collections.ConfigDict(dict(
      a=1, optim=dict(lr=1.0))), defaults()) == ["config.n",
                                                  "config.optim.b1"]


@pytest.mark.parametrize("validator,good,bad", [
    (config_utils.POSITIVE, [1e-9, 3], [0, -1, float("nan")]),
    (config_utils.NON_NEGATIVE, [0, 2.5], [-1e-9, float("nan")]),
    (config_utils.FRACTION, [0, 0.9999], [1, -0.1, float("nan")]),
    (config_utils.UNIT_INTERVAL, [0, 1], [1.01, -0.1]),
    (config_utils.OPEN_UNIT_INTERVAL, [0.5], [0, 1]),
])
def test_named_validators_name_the_key_and_the_rule(validator, good, bad):
  for v in good:
    config_utils.check_values(ml_collections.ConfigDict(dict(x=dict(y=v))),
                              {"x.y": validator})
  for v in bad:
    with pytest.raises(ValueError, match=re.escape(
        f"config.x.y={v!r} is invalid: it must be {validator.rule}")):
      config_utils.check_values(ml_collections.ConfigDict(dict(x=dict(y=v))),
                                {"x.y": validator})
  # An unset value (a placeholder not given) is not checked.
  config_utils.check_values(ml_collections.ConfigDict(dict(x=dict(
      y=ml_collections.config_dict.placeholder(float)))), {"x.y": validator})


@pytest.mark.parametrize("arg", [None, "runlocal", "variant=S-B/8,c=4,res=128"])
def test_config_file_builds(arg):
  from configs.vitok import s_b16_256
  from vitok_jax.trainers import tokenizer
  c = tokenizer.resolve_config(s_b16_256.get_config(arg))
  assert c.optim.b1 == 0.9 and c.optim.b2 == 0.95 and c.optim.weight_decay == 1e-4
  if arg is None:  # the paper's recipe
    assert c.input.batch_size == 1024 and c.optim.base_lr == 1e-4
    assert optim.peak_lr(c.optim, c.input) == pytest.approx(4e-4)
    assert c.loss.kl_weight == 1e-3 and c.loss.lpips_weight == 1.0
    assert c.total_steps == 100_000
