"""tools/aot_compile.py: the project's own steps compile ahead of time for
TPU topologies through libtpu, on this CPU machine (nothing allocated), with
per-chip memory and FLOPs that are the compiled program's; multi-slice
meshes (parallel/sharding.py's "slice" axis); splash attention inside the sharded
step; the errors that say what to do.

Tiny variants (`:runlocal`) keep each compile to seconds; the paper's
stage-1 batch on v5p (test_paper_stage1_batch_fits_v5p_hbm) takes minutes and
runs only with VITOK_AOT_PAPER_BATCH=1.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip(
    "libtpu", reason="libtpu is absent (pip install \"jax[tpu]\"): it "
    "compiles for TPU topologies")

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs.dit import dit_l_vitok_s_b16_256
from configs.vitok import s_b16_256
from configs.vitok import s_b16_256_stage2
from configs.vitok import video_s_b4x8_128
from tests.helpers import ROOT
from tests.helpers import load_tool
from vitok_jax import flops
from vitok_jax.models import attention
from vitok_jax.models import dit as dit_lib
from vitok_jax.models import vitok
from vitok_jax.parallel import sharding as sh
# pylint: enable=g-import-not-at-top,wrong-import-position

aot = load_tool("aot_compile")
GIB = 2**30
# (topology, config.mesh, batch per chip): data-parallel on one host, FSDP
# within groups of 4 chips on the 4-host 4x4 (every leaf sharded).
DP_2X2 = ("v5e:2x2", "data:-1,fsdp:1", None)
FSDP_4X4 = ("v5e:4x4", "data:4,fsdp:4", 1)


def stage1():
  return s_b16_256.get_config("runlocal")


def stage2(tmp):
  cfg = s_b16_256_stage2.get_config(f"runlocal,res=32,init_from={tmp}")
  cfg.loss.lpips_weight = 1.0  # a random VGG's shapes: no weights needed
  return cfg


def video():
  return video_s_b4x8_128.get_config("runlocal")


def dit(source="shards"):
  arg = "runlocal" + (",shards=unused" if source == "shards" else "")
  return dit_l_vitok_s_b16_256.get_config(arg)


def model_flops(job, cfg, batch):
  """What flops.py says the step costs, from the config alone."""
  if job.startswith("dit"):
    model = dit_lib.from_config(cfg.model, 16, cfg.num_classes)
    total = flops.dit_train_step_flops(model, 64, batch)
    if job == "dit_encode":  # the mu-mu/8 tokenizer's encode, in the step
      tok = vitok.create("mu-mu/8", 16)
      total += 2 * flops.half_macs(tok, (1, 64, 64, 3))["encode"] * batch
    return total
  model = vitok.from_config(cfg.model)
  res, t = cfg.input.res, cfg.input.frames
  shape = (batch, res, res, 3) if t == 1 else (batch, t, res, res, 3)
  if job == "stage2":
    return flops.stage2_step_flops(model, shape)
  return flops.train_step_flops(model, shape)


def shard_bytes(tree) -> int:
  """Bytes per device of abstract arrays, by their shardings (unpadded)."""
  return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
             for a in jax.tree.leaves(tree))


def check_figures(r, chips, processes):
  """The figures are the compiled program's, per chip, and add up."""
  compiled = r["compiled"]
  mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
  assert (r["chips"], r["devices_per_chip"], r["processes"]) == (
      chips, 1, processes)
  assert r["xla_tflops_per_chip"] == pytest.approx(cost["flops"] / 1e12)
  assert r["argument_gib"] == mem.argument_size_in_bytes / GIB
  assert r["temp_gib"] == mem.temp_size_in_bytes / GIB  # tiny: may be 0
  assert r["total_gib"] == pytest.approx(
      r["argument_gib"] + r["output_gib"] - r["alias_gib"] + r["temp_gib"] +
      r["code_gib"])
  # TPU layouts pad small arrays: never less than the inputs' own bytes.
  assert mem.argument_size_in_bytes >= shard_bytes(r["args"]) > 0
  assert r["fits"] == (r["total_gib"] < 16.0) and r["hbm_gib"] == 16.0
  if r["est_step_ms"] is not None:
    seconds = r["est_step_ms"] / 1000
    assert seconds == pytest.approx(cost["optimal_seconds"])
    assert r["est_images_per_sec_per_chip"] == pytest.approx(
        r["examples_per_step"] / seconds / chips)
    assert r["est_mfu"] == pytest.approx(
        r["model_tflops_per_chip"] / seconds / 197.0)
  assert r["estimate_source"] == "estimate (XLA TPU cost model)"


_RESULTS = {}  # (job, topology) -> figures: FSDP is compared with DP


# Every step on v5e 2x2 (data parallel); FSDP on a 4-host v5e 4x4 for the
# stage-1 and DiT steps (stage 2 and video shard the same way, and cost
# minutes more to compile on 2 cores).
@pytest.mark.parametrize("job,layout", [
    (j, DP_2X2) for j in ("stage1", "stage2", "video", "dit", "dit_encode")] +
    [(j, FSDP_4X4) for j in ("stage1", "dit")],
    ids=lambda p: p if isinstance(p, str) else p[0])
def test_train_steps_compile_for_tpu_topologies(job, layout, tmp_path):
  topology, mesh, per_chip = layout
  cfg = dict(stage1=stage1, stage2=lambda: stage2(tmp_path), video=video,
             dit=dit, dit_encode=lambda: dit("encode"))[job]()
  cfg.sharding.fsdp_min_size = 1  # FSDP shards even the tiny model's leaves
  r = aot.compile_step(cfg, topology, mesh=mesh, batch_per_chip=per_chip,
                       tokenizer_variant="mu-mu/8" if "dit" in job else None)
  chips, processes = (4, 1) if topology == "v5e:2x2" else (16, 4)
  check_figures(r, chips, processes)
  batch = per_chip * chips if per_chip else cfg.input.batch_size
  assert r["batch"] == batch and r["mesh"] == (
      {"data": 4, "fsdp": 1} if topology == "v5e:2x2" else
      {"data": 4, "fsdp": 4})
  assert r["model_tflops_per_chip"] == pytest.approx(
      model_flops(job, cfg, batch) / chips / 1e12)
  # The old state is donated to the new one.
  assert 0 < r["alias_gib"] <= r["argument_gib"]
  hlo = r["compiled"].as_text()
  assert "all-reduce" in hlo  # gradients (and the loss) over the batch
  if topology == "v5e:4x4":  # FSDP: params gathered, gradients scattered
    assert "all-gather" in hlo and "reduce-scatter" in hlo
    dp = _RESULTS.get((job, "v5e:2x2"))
    if dp is not None:  # the replicated state is bigger per chip
      assert r["argument_gib"] < dp["argument_gib"]
  _RESULTS[(job, topology)] = r


def test_the_command_line_prints_a_row_and_writes_json(tmp_path, capsys,
                                                       monkeypatch):
  monkeypatch.chdir(ROOT)
  out = tmp_path / "aot.json"
  r = aot.main(["--config=configs/vitok/s_b16_256.py:runlocal",
                "--topology=v5e:2x2", "--step=eval", f"--json={out}",
                "--config.input.res=32"])
  text = capsys.readouterr().out
  assert aot.HEADER in text and aot.row(r) in text
  assert "| s_b16_256:runlocal | eval | v5e:2x2 | data:4,fsdp:1 | 16 (4) |" in (
      aot.row(r))
  saved = json.loads(out.read_text())
  assert saved["total_gib"] == r["total_gib"] and saved["chip"] == "v5e"


def test_the_eval_step_and_the_sampler_compile_on_v5e_2x2():
  # The tokenizer's jitted evaluation-mode reconstruction.
  cfg = stage1()
  r = aot.compile_step(cfg, "v5e:2x2", step="eval")
  check_figures(r, 4, 1)
  batch = cfg.evals["heldout"].batch_size
  assert r["batch"] == batch and r["alias_gib"] == 0  # nothing donated
  assert r["model_tflops_per_chip"] == pytest.approx(flops.forward_flops(
      vitok.from_config(cfg.model), (batch, 64, 64, 3)) / 4 / 1e12)
  # Reconstructions come back replicated: the whole batch on every chip.
  assert r["output_gib"] * GIB >= batch * 64 * 64 * 3 * 4
  # The DiT's sampler (DDIM with CFG in a scan, then the decode).
  cfg = dit()
  r = aot.compile_step(cfg, "v5e:2x2", step="sample",
                       tokenizer_variant="mu-mu/8")
  check_figures(r, 4, 1)
  batch = cfg.evals["classes"].batch_size
  model = dit_lib.from_config(cfg.model, 16, cfg.num_classes)
  assert r["model_tflops_per_chip"] == pytest.approx(flops.dit_sample_flops(
      model, 64, batch, cfg.sampling.num_steps, True,
      flops.half_macs(vitok.create("mu-mu/8", 16), (1, 64, 64, 3))["decode"])
                                                     / 4 / 1e12)
  # XLA counts the loop's body once: no time estimate from it.
  assert "while" in r["compiled"].as_text()
  assert r["xla_counts_loop_body_once"] and r["est_step_ms"] is None
  with pytest.raises(ValueError, match="a tokenizer has no sampler"):
    aot.compile_step(stage1(), "v5e:2x2", step="sample")


def test_multi_slice_mesh_and_step():
  """Two v5e:2x2 slices: the slice axis goes across slices (slice 0's
  devices first), the others within one; a stage-1 step compiles on it."""
  topo = aot.get_topology("v5e:2x2", num_slices=2)
  mesh = sh.make_mesh((("slice", 2), ("data", -1), ("fsdp", 1)), topo.devices)
  assert dict(mesh.shape) == {"slice": 2, "data": 4, "fsdp": 1}
  assert [{d.slice_index for d in half.flat} for half in mesh.devices] == [
      {0}, {1}]
  r = aot.compile_step(stage1(), "v5e:2x2", num_slices=2,
                       mesh="slice:2,data:-1,fsdp:1")
  assert (r["chips"], r["slices"], r["processes"]) == (8, 2, 2)
  assert r["mesh"] == {"slice": 2, "data": 4, "fsdp": 1}
  assert r["batch_per_chip"] == 2 and "all-reduce" in r["compiled"].as_text()
  with pytest.raises(ValueError, match=r"the 'slice' axis has size 1 but the "
                     r"8 devices span 2 slice\(s\)"):
    sh.make_mesh((("slice", 1), ("data", -1)), topo.devices)
  with pytest.raises(ValueError, match=r"config.mesh \(\('data', -1\), "
                     r"\('fsdp', 1\)\): the 8 devices span 2 slices; add a"):
    aot.compile_step(stage1(), "v5e:2x2", num_slices=2)


def test_splash_attention_inside_the_sharded_stage1_step():
  """The trainers trace their step under its mesh (trainers/common.jit_step
  through sharding.traced_under), so attn_impl="splash" runs the Pallas
  kernel per device under shard_map: its custom calls in the compiled
  step, no gathered activations. "auto" resolves for the topology's TPU
  (XLA), not for this CPU host."""
  cfg = s_b16_256.get_config("runlocal,variant=mu-mu/4,dtype=bfloat16")
  cfg.model.attn_impl = "splash"  # 64^2 / 4^2 = 256 tokens
  r = aot.compile_step(cfg, "v5e:2x2")
  hlo = r["compiled"].as_text()
  model = vitok.from_config(cfg.model)
  # forward, dq and dkv kernels in each block of encoder and decoder
  assert hlo.count("tpu_custom_call") == 3 * (model.enc_depth +
                                              model.dec_depth)
  assert "all-gather" not in hlo
  mesh = sh.make_mesh(cfg.mesh, aot.get_topology("v5e:2x2").devices)
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    assert attention.context()[:2] == ("tpu", "TPU v5 lite")
    assert attention.splash_unavailable(1024, 8) is None
    assert attention.resolve("auto", dtype=jnp.bfloat16, head_dim=64) is None


def test_errors_say_what_to_do(monkeypatch):
  for name in ("v5e:3x3", "v9:2x2"):
    with pytest.raises(ValueError, match=rf"Unknown TPU topology "
                       rf"--topology='{name}'.*e\.g\. v5e:2x2"):
      aot.get_topology(name)
  cfg = stage1()
  cfg.input.batch_size = 6
  with pytest.raises(ValueError, match=r"The batch of 6 does not split over "
                     r"the 4 devices \(4 chips\) of v5e:2x2"):
    aot.compile_step(cfg, "v5e:2x2")
  with pytest.raises(ValueError, match=r"get_topology_desc\(platform='cuda'\)"
                     r" is not implemented.*tools/bench.py"):
    aot.get_topology("h100:8")
  monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(RuntimeError, match=r'pip install "jax\[tpu\]"'):
    aot.get_topology("v5e:2x2")


def test_a_step_that_does_not_fit_says_so():
  """libtpu refuses to compile a program beyond the chip's HBM: reported
  as not fitting, with its message, not as a crash."""
  cfg = stage1()
  cfg.input.res = 32
  r = aot.compile_step(cfg, "v5e:2x2", step="eval", batch_per_chip=2**20)
  assert not r["fits"] and r["compiled"] is None
  assert r["error"].startswith("RESOURCE_EXHAUSTED: Ran out of memory on HBM")
  assert "| 4194304 (1048576) | - | - | > 16 | NO: RESOURCE_EXHAUSTED" in (
      aot.row(r))


@pytest.mark.skipif(
    not os.environ.get("VITOK_AOT_PAPER_BATCH"),
    reason="the paper-size S-B/16 compile takes ~6 min on 2 cores; set "
    "VITOK_AOT_PAPER_BATCH=1 to run it (its figures are in BENCHMARKS.md)")
def test_paper_stage1_batch_fits_v5p_hbm():
  """The paper's S-B/16 stage 1 (batch 1024 at 256p, LPIPS on) on 8 v5p
  chips: 128 images per chip, below v5p's 95 GiB of HBM."""
  r = aot.compile_step(s_b16_256.get_config(), "v5p:2x2x2")
  assert (r["chips"], r["batch_per_chip"], r["hbm_gib"]) == (8, 128, 95.0)
  assert r["fits"] and r["argument_gib"] < r["total_gib"] < 95.0
  assert r["temp_gib"] > 1.0  # the activations of 128 images are there


# NaFlex (docs/naflex.md): splash with the valid/padding segment ids. Here,
# not in test_naflex_model.py: one pytest worker at a time may hold libtpu.
def _naflex_splash_compile(grad: bool):
  """NaFlex's sequence path (Model.reconstruct_patches) with
  attn_impl="splash" (N = 128, bf16) compiled under a v5e 2x2 mesh, ahead
  of time on this CPU host -> its HLO text."""
  from vitok_jax.models import patches as P  # pylint: disable=g-import-not-at-top
  topo = aot.get_topology("v5e:2x2")
  mesh = sh.make_mesh((("data", -1),), topo.devices)
  model = vitok.create("mu-mu/8", 8, posemb="none", attn_impl="splash",
                       dtype=jnp.bfloat16, enc_depth=1, dec_depth=1)
  n, d = 128, P.patch_dim(8)
  data = sh.batch_sharding(mesh)
  sds = lambda shape, dtype, s=data: jax.ShapeDtypeStruct(shape, dtype,
                                                          sharding=s)
  args = (sds((4, n, d), jnp.float32), sds((4, n, 3), jnp.int32),
          sds((4, n), jnp.bool_))
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, n, d)), jnp.zeros((1, n, 3), jnp.int32),
      jnp.ones((1, n), bool), method="reconstruct_patches")["params"])
  params = jax.tree.map(lambda a: sds(a.shape, a.dtype, sh.replicated(mesh)),
                        params)

  def fn(p, x, c, v):
    out, aux = model.apply({"params": p}, x, c, v,
                           method="reconstruct_patches")
    return jnp.mean((out - x)**2) + jnp.mean(aux["kl"]) if grad else out
  fn = jax.grad(fn) if grad else fn
  hlo = jax.jit(sh.traced_under(mesh, fn)).lower(params, *args).compile(
  ).as_text()
  assert "all-gather" not in hlo  # each device attends its own examples
  return hlo, model.enc_depth + model.dec_depth


def test_splash_with_segment_ids_compiles_for_a_tpu_topology():
  """The forward: one splash kernel (with the valid/padding segment ids)
  per block, inside shard_map."""
  hlo, blocks = _naflex_splash_compile(grad=False)
  assert hlo.count("tpu_custom_call") == blocks


def test_splash_with_segment_ids_gradient_compiles_for_a_tpu_topology():
  """The gradient (a train step's): forward, dq and dkv kernels per block.
  Slow tier (about 10 s on 2 cores)."""
  hlo, blocks = _naflex_splash_compile(grad=True)
  assert hlo.count("tpu_custom_call") == 3 * blocks
