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


def test_merge_defaults_rejects_unknown_nested_keys():
  defaults = ml_collections.ConfigDict(dict(a=1, optim=dict(lr=1.0, b1=0.9)))
  cfg = ml_collections.ConfigDict(dict(optim=dict(lr=2.0)))
  merged = config_utils.merge_defaults(cfg, defaults)
  assert (merged.a, merged.optim.lr, merged.optim.b1) == (1, 2.0, 0.9)
  cfg.optim.lrr = 3
  with pytest.raises(ValueError, match="config.optim.lrr"):
    config_utils.merge_defaults(cfg, defaults)


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
