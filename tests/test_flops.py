"""Parameter and FLOP counts against the paper's tables."""
import jax
import jax.numpy as jnp
import pytest

from tests.helpers import load_tool
from vitok_jax import flops
from vitok_jax.models import vitok


@pytest.mark.parametrize("variant,side,expected", [
    ("S-S/16", "encoder", 43.3),
    ("B-B/16", "encoder", 85.8),
    ("L-L/16", "encoder", 383.7),
    ("S-B/16", "decoder", 85.8),
    ("S-L/16", "decoder", 383.7),
    ("S-B/16", "total", 129.0),
    ("S-L/16", "total", 426.8),
])
def test_param_counts_within_1pct_of_paper(variant, side, expected):
  model = vitok.create(variant, 16)
  got = flops.count_params(model, (1, 1, 256, 256, 3))[side] / 1e6
  assert abs(got - expected) / expected < 0.01, (variant, side, got)


@pytest.mark.parametrize("variant,res,frames,part,expected", [
    ("S-S/16", 256, 1, "encoder", 11.6),
    ("B-B/16", 256, 1, "encoder", 23.1),
    ("L-L/16", 256, 1, "encoder", 101.8),
    ("S-B/16", 256, 1, "paper", 34.8),
    ("S-L/16", 256, 1, "paper", 113.4),
    ("S-B/16", 512, 1, "paper", 160.8),
    ("S-B/4x8", 128, 16, "paper", 160.8),
    ("S-B/8x8", 128, 16, "paper", 73.2),
    ("S-B/4x16", 128, 16, "paper", 34.8),
])
def test_gflops_within_2pct_of_paper(variant, res, frames, part, expected):
  got = flops.summary(variant, res, frames)["gflops"][part]
  assert abs(got - expected) / expected < 0.02, (variant, got)


def test_analytic_count_matches_xla_cost_analysis():
  """Our multiply-add count is what XLA sees (2 FLOPs each, plus elementwise)."""
  model = vitok.create("S-B/8", 8, enc_width=256, enc_depth=2, enc_heads=4,
                       dec_width=256, dec_depth=2, dec_heads=4)
  shape = (2, 1, 64, 64, 3)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct(shape, jnp.float32))
  lowered = jax.jit(model.apply).lower(params, jax.ShapeDtypeStruct(shape, jnp.float32))
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = 2 * 2 * flops.count_macs(model, (1,) + shape[1:])["total"]
  assert ours <= cost["flops"] <= 1.15 * ours, (ours, cost["flops"])


def test_flops_tool_prints(capsys):
  load_tool("flops").main(["--variant", "S-B/16", "--res", "256"])
  out = capsys.readouterr().out
  assert "129.1" in out and "34.4" in out


@pytest.mark.parametrize("size,paper_gflops", [("S", 6.1), ("B", 23.0), ("L", 80.7),
                                               ("XL", 118.6)])
def test_dit_flops_match_the_dit_paper(size, paper_gflops):
  # DiT paper Table 4: DiT-*/2 at 256x256 = 256 tokens, 1 MAC = 1 FLOP.
  from vitok_jax.models import dit
  model = dit.create(size, 4, 1000)
  assert abs(flops.dit_macs(model, 256)["paper"] / 1e9 - paper_gflops) / paper_gflops < 0.01


def test_xla_counts_of_the_stage1_step_stay_near_the_analytic_count():
  """The compiled stage-1 train step (no remat, no LPIPS) does no more than
  3 x forward + 10%: waste (a recomputed encoder, a duplicated decoder)
  cannot creep in unnoticed."""
  from configs.vitok import s_b16_256
  from vitok_jax.parallel import sharding as sh
  from vitok_jax.trainers import tokenizer
  c = s_b16_256.get_config("runlocal,lpips=0")
  c.model.update(variant="Ti-Ti/8", dtype="float32")
  c.input.update(res=64, batch_size=4)
  c = tokenizer.resolve_config(c)
  setup = tokenizer.make_setup(c, sh.make_mesh([("data", 1)], jax.devices()[:1]))
  x = jax.ShapeDtypeStruct((4, 64, 64, 3), jnp.float32, sharding=setup.batch_sharding)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       setup.abstract_state, setup.state_sharding)
  cost = setup.step.lower(state, x, {}).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = flops.train_step_flops(setup.model, (4, 64, 64, 3))
  assert analytic <= cost["flops"] <= 1.10 * analytic, (cost["flops"] / analytic)


def test_mfu_and_device_memory_for_the_progress_line():
  from vitok_jax.trainers import host_loop  # pylint: disable=g-import-not-at-top
  assert flops.peak_flops("TPU v5 lite") == 197e12
  assert flops.peak_flops("TPU v5p") == 459e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.peak_flops("cpu") is None
  n = jax.device_count()
  stats = dict(bytes_in_use=3 * 2**30, peak_bytes_in_use=5 * 2**30,
               bytes_limit=80 * 2**30)
  perf = host_loop.performance(4e12 * n, 0.1, 100e12, memory_stats=stats)
  assert perf["perf/mfu"] == pytest.approx(0.4)
  assert perf["perf/device_peak_memory_gib"] == 5.0
  assert host_loop.progress_text(perf) == " | MFU 40.0% | mem 5.0/80.0 GiB"
  # CPU: no peak known, no memory statistics: nothing claimed.
  assert host_loop.performance(4e12, 0.1, None) == {}
  assert host_loop.progress_text({}) == ""
