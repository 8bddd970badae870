r"""Compiles a job's step ahead of time for a TPU topology, on a CPU machine.

  python tools/aot_compile.py --config=configs/vitok/s_b16_256.py --topology=v5p:2x2x2
  python tools/aot_compile.py --config=configs/vitok/s_b16_256.py --topology=v5e:4x4 --batch_per_chip=32
  python tools/aot_compile.py --config=configs/vitok/s_b16_256.py:runlocal --topology=v5e:2x2 --num_slices=2 --mesh=slice:2,data:-1,fsdp:1
  python tools/aot_compile.py --config=configs/vitok/s_b16_256.py --topology=v5e:4x4 --mesh=data:4,fsdp:4 --config.model.remat=block
  python tools/aot_compile.py --config=configs/vitok/s_b16_256_stage2.py:init_from=/tmp --topology=v5e:4x4
  python tools/aot_compile.py --config=configs/vitok/video_s_b4x8_128.py --topology=v5p:2x2x2
  python tools/aot_compile.py --config=configs/dit/dit_l_vitok_s_b16_256.py:shards=unused --topology=v5e:4x4
  python tools/aot_compile.py --config=configs/dit/dit_l_vitok_s_b16_256.py --topology=v5e:2x2 --step=sample --json=/tmp/aot.json
  python tools/aot_compile.py --config=configs/vitok/s_b16_256.py --topology=v5e:2x2 --step=eval

Answers, before a TPU is rented: does this config's step compile for this
slice, does it fit in the chips' HBM, and what does XLA's TPU cost model
expect of it. jax.experimental.topologies.get_topology_desc asks libtpu for
the devices of a named slice (chips, hosts, ICI coordinates; with
--num_slices, several slices joined over DCN), and libtpu's compiler
compiles for them here, with no TPU attached. libtpu comes with
`pip install "jax[tpu]"`; the tool runs on JAX's CPU backend (JAX_PLATFORMS
=cpu unless set), libtpu's start-up warnings about host bounds and worker
hostnames are noise.

What it compiles is the job's own code: the trainer's make_setup (model,
optimizer, shardings, the jitted step) on sharding.make_mesh(config.mesh)
over the topology's devices, lowered with abstract inputs
(jax.ShapeDtypeStruct carrying each input's NamedSharding; the train state
from jax.eval_shape), so nothing is allocated and no checkpoint, weight file
or data set is read. Hence:
  * LPIPS (stage 1 and 2) compiles with the random VGG's shapes, which are
    the real weights' (loss.lpips_allow_random, as tools/bench.py);
  * stage 2 (s_b16_256_stage2.py) needs `:init_from=` some existing
    directory (the config checks it), never read;
  * a DiT's frozen tokenizer is a ViTok of --tokenizer_variant (default: S-B
    with the patch that gives config.latents.tokens: S-B/16 at 256p,
    S-B/4x8 for 16 x 128^2 video), params never made. The step is the
    config's: latents.source "encode" (the default) encodes images in the
    step; ":shards=<anything>" compiles the shards path (latents in).

--step: train (the train step), eval (the tokenizer's jitted evaluation-mode
reconstruction, tokenizer.make_reconstruct_fn; for a DiT the sampler its
generation evaluators call), sample (dit.make_sampler: DDIM with CFG and the
tokenizer's decode, config.sampling's steps and scale). The batch is the
config's global batch (eval/sample: its first evaluator's), or
--batch_per_chip x chips.

Reported per chip: argument, output, aliased (donated) and temporary memory
from compiled.memory_analysis(), their total against the chip's HBM (fits:
yes/no; the runtime reserves a little HBM of its own), the FLOPs XLA counts
in the compiled program (cost_analysis "flops") and the model FLOPs
(vitok_jax/flops.py: 2 per multiply-add, 3 x forward for training). When
the cost model gives a time (cost_analysis "optimal_seconds" > 0; with
libtpu 0.0.42.1 it is negative, i.e. none, for the full-size v5e programs
in BENCHMARKS.md, and the sampler's loop is counted once), the step time,
images (video: frames; DiT: latents or samples) per second per chip and
MFU against the chip's bf16 peak follow from it: ESTIMATES of XLA's TPU
cost model, never measurements. A program beyond the chip's HBM is refused
by libtpu itself: reported as not fitting, with its message (exit status 2
on the command line). One markdown table row is printed (BENCHMARKS.md);
--json writes every figure. GPUs cannot be compiled for this way (see
--topology); measure them with tools/bench.py.

The attention kernel follows config.model.attn_impl as the job would
(models/attention.py): "splash" runs the Pallas kernel only where the step
is traced under its mesh (sharding.traced_under).
"""
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles, no TPU
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # configs/ import each other as a package
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util
import math
import re

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from vitok_jax import flops
from vitok_jax.parallel import sharding as sh
from vitok_jax import trainers
# pylint: enable=g-import-not-at-top,wrong-import-position

# Per chip: bf16 dense peak (TFLOP/s) and HBM (GiB), from Google Cloud's TPU
# system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e).
CHIPS = {
    "v4": dict(peak_tflops=275.0, hbm_gib=32.0),
    "v5e": dict(peak_tflops=197.0, hbm_gib=16.0),
    "v5p": dict(peak_tflops=459.0, hbm_gib=95.0),
    "v6e": dict(peak_tflops=918.0, hbm_gib=32.0),
}
# jax's device_kind -> the chip's name above.
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e",
                "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v6 lite": "v6e",
                "TPU v6e": "v6e"}
EXAMPLE_TOPOLOGIES = "v5e:2x2, v5e:4x4, v5p:2x2x2, v4:2x2x1, v6e:2x2"
GPU_WORDS = ("cuda", "gpu", "rocm", "nvidia", "h100", "h200", "a100", "b100",
             "b200", "gb200", "l4", "l40", "v100", "t4")
ESTIMATE = "estimate (XLA TPU cost model)"
STEPS = ("train", "eval", "sample")
GIB = 2**30


# --------------------------------------------------------------------------
# The topology
# --------------------------------------------------------------------------
def get_topology(name: str, num_slices: int = 1):
  """libtpu's devices of the named TPU slice(s), or an error that says what
  to do instead."""
  kind = re.split(r"[:=_\-]", name.lower(), maxsplit=1)[0]
  if kind.startswith(GPU_WORDS):
    raise ValueError(
        f"--topology={name!r} is a GPU: jax.experimental.topologies."
        "get_topology_desc(platform='cuda') is not implemented (JAX raises "
        "NotImplementedError), so a GPU step cannot be compiled ahead of time "
        "on this machine; GPU figures come from a real GPU via tools/bench.py")
  if importlib.util.find_spec("libtpu") is None:
    raise RuntimeError(
        "libtpu is not installed, and its compiler is what compiles for a TPU "
        "topology: pip install \"jax[tpu]\" (it works on a CPU-only machine)")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(topology_name=name, platform="tpu",
                                        num_slices=num_slices)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"Unknown TPU topology --topology={name!r} (libtpu: "
        f"{str(e).strip().splitlines()[0]}); a name is <chip>:<chips per "
        f"dimension>, e.g. {EXAMPLE_TOPOLOGIES}") from e


def describe_devices(devices) -> dict:
  """Chips, hosts and slices of a topology's devices. v4's topology lists
  each chip's two TensorCores as devices; v5e/v5p/v6e one per chip."""
  kind = devices[0].device_kind
  chip = DEVICE_KINDS.get(kind)
  if chip is None:
    raise ValueError(f"No peak/HBM figures for device kind {kind!r}; known: "
                     f"{sorted(DEVICE_KINDS)}")
  chips = {(getattr(d, "slice_index", 0) or 0, tuple(d.coords))
           for d in devices}
  return dict(chip=chip, device_kind=kind, devices=len(devices),
              chips=len(chips), devices_per_chip=len(devices) // len(chips),
              processes=len({(getattr(d, "slice_index", 0) or 0,
                              d.process_index) for d in devices}),
              slices=sh.num_slices(devices), **CHIPS[chip])


parse_mesh = sh.parse_mesh  # either spelling (vitok_jax/parallel/sharding.py)


# --------------------------------------------------------------------------
# What each job compiles
# --------------------------------------------------------------------------
def _sds(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype),
                              sharding=sharding)


def _eval_batch(config) -> int:
  """The batch the first evaluator (by name) runs at, else the train batch."""
  if config.evals:
    return int(config.evals[sorted(config.evals)[0]].batch_size)
  return int(config.input.batch_size)


def tokenizer_job(config, mesh, step: str, batch: int):
  """(jitted fn, abstract args, model FLOPs, examples) of a tokenizer job."""
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
  if step == "sample":
    raise ValueError("--step=sample: a tokenizer has no sampler (steps: "
                     "train, eval)")
  config.input.batch_size = batch
  setup = tokenizer.make_setup(config, mesh)
  shape = tokenizer.input_shape(config)
  images = _sds(shape, jnp.float32, setup.batch_sharding)
  frames = config.input.frames
  if step == "eval":
    params = sh.with_sharding(setup.abstract_state["params"],
                              setup.state_sharding["params"])
    return (tokenizer.make_reconstruct_fn(setup), (params, images),
            flops.forward_flops(setup.model, shape), batch * frames)
  state = sh.with_sharding(setup.abstract_state, setup.state_sharding)
  # The loss's frozen networks as the job loads them, as shapes: the
  # random VGG's are the converted weights' (no file is read).
  lc = config.loss
  lc.lpips_weights, lc.lpips_allow_random = "", True
  frozen = jax.eval_shape(lambda: tokenizer.load_frozen(config, mesh))
  frozen = sh.with_sharding(frozen, jax.tree.map(lambda _: sh.replicated(mesh),
                                                 frozen))
  model_flops = (flops.stage2_step_flops(setup.model, shape)
                 if tokenizer.encoder_is_frozen(setup.abstract_state["params"],
                                                config.optim.freeze)
                 else flops.train_step_flops(setup.model, shape))
  return setup.step, (state, images, frozen), model_flops, batch * frames


def fake_codec(config, variant=None):
  """The DiT's frozen tokenizer as shapes only (params None, as
  tools/bench.py's bench_dit): a ViTok of `variant`, by default S-B with
  the patch (and, for video, tubelet 4) that gives config.latents.tokens
  at config.input.res."""
  from vitok_jax.diffusion import codec as codec_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.models import vitok  # pylint: disable=g-import-not-at-top
  lc, res, frames = config.latents, config.input.res, config.input.frames
  if variant is None:
    per_frame = (lc.tokens or 256) * (4 if frames > 1 else 1) / max(frames, 1)
    p = res / math.sqrt(per_frame)
    if p != int(p):
      raise ValueError(f"No S-B patch gives {lc.tokens} tokens at {res}p: "
                       "pass --tokenizer_variant")
    variant = f"S-B/4x{int(p)}" if frames > 1 else f"S-B/{int(p)}"
  codec = codec_lib.Codec(vitok.create(variant, lc.channels or 16), None,
                            res, frames)
  codec_lib.check_matches(codec.num_tokens, codec.channels, lc.tokens,
                            lc.channels, f"--tokenizer_variant={variant}")
  return codec, variant


def dit_job(config, mesh, step: str, batch: int, variant=None):
  """(jitted fn, abstract args, model FLOPs, examples, variant) of a DiT."""
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  codec, variant = fake_codec(config, variant)
  config.input.batch_size = batch
  setup = dit.make_setup(config, mesh, codec, batch=batch)
  repl, bsh = sh.replicated(mesh), setup.batch_sharding
  tok_shapes = jax.eval_shape(
      lambda: codec.model.init({"params": jax.random.key(0),
                                "sample": jax.random.key(1)},
                               jnp.zeros(codec.input_shape))["params"])
  tok_params = sh.with_sharding(tok_shapes,
                                jax.tree.map(lambda _: repl, tok_shapes))
  labels = _sds((batch,), jnp.int32, bsh)
  if step == "train":
    state = sh.with_sharding(setup.abstract_state, setup.state_sharding)
    encode = config.latents.source == "encode"
    if encode:
      inputs = _sds((batch,) + codec.input_shape[1:], jnp.float32, bsh)
    else:
      inputs = _sds((batch, codec.num_tokens, codec.channels), jnp.float32,
                    bsh)
      tok_params = {}
    model_flops = flops.dit_train_step_flops(setup.model, codec.num_tokens,
                                             batch)
    if encode:
      model_flops += 2 * flops.half_macs(codec.model, codec.input_shape)[
          "encode"] * batch
    return (setup.step, (state, inputs, labels, tok_params), model_flops,
            batch, variant)
  sampler = dit.make_sampler(config, setup)
  params = sh.with_sharding(setup.abstract_state["params"],
                            setup.state_sharding["params"])
  stats = (_sds((codec.channels,), jnp.float32, repl),) * 2
  seed = _sds((), jnp.int32, repl)
  sc = config.sampling
  model_flops = flops.dit_sample_flops(
      setup.model, codec.num_tokens, batch, sc.num_steps, sc.cfg_scale != 1.0,
      flops.half_macs(codec.model, codec.input_shape)["decode"])
  return (sampler, (params, tok_params, stats, labels, labels, seed),
          model_flops, batch, variant)


# --------------------------------------------------------------------------
# Compile and report
# --------------------------------------------------------------------------
def compile_step(config, topology: str = "v5e:2x2", *, num_slices: int = 1,
                 step: str = "train", batch_per_chip=None, mesh=None,
                 tokenizer_variant=None, name: str = "") -> dict:
  """Compiles `step` of `config` (a trainer config, as --config loads it)
  for the topology; returns the figures (module docstring) and, under
  "compiled", the jax Compiled object and under "args" the abstract inputs
  it was lowered with."""
  if step not in STEPS:
    raise ValueError(f"--step={step!r}: one of {list(STEPS)}")
  topo = get_topology(topology, num_slices)
  info = describe_devices(topo.devices)
  trainer = trainers.get(config.get("trainer", "tokenizer"))
  config = trainer.resolve_config(config)
  if mesh:
    config.mesh = parse_mesh(mesh) if isinstance(mesh, str) else tuple(
        tuple(a) for a in mesh)
  batch = ((batch_per_chip * info["chips"]) if batch_per_chip else
           (int(config.input.batch_size) if step == "train" else
            _eval_batch(config)))
  if batch % info["devices"]:
    raise ValueError(
        f"The batch of {batch} does not split over the {info['devices']} "
        f"devices ({info['chips']} chips) of {topology} x {num_slices} "
        f"slice(s): pick --batch_per_chip (or a batch divisible by "
        f"{info['devices']})")
  m = sh.make_mesh(config.mesh, topo.devices)
  t0 = time.time()
  variant = None
  if config.trainer == "dit":
    fn, args, model_flops, examples, variant = dit_job(
        config, m, step, batch, tokenizer_variant)
  else:
    fn, args, model_flops, examples = tokenizer_job(config, m, step, batch)
  common = dict(name=name, step=step, topology=topology,
                num_slices=num_slices, mesh=dict(m.shape), batch=batch,
                batch_per_chip=batch / info["chips"], tokenizer_variant=variant,
                args=args)
  try:
    compiled = fn.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # libtpu refuses a program that cannot fit: that is the answer.
    return dict(info, **common, fits=False, compiled=None,
                compile_s=time.time() - t0,
                error=str(e).strip().splitlines()[0],
                model_tflops_per_chip=model_flops / info["chips"] / 1e12)
  compile_s = time.time() - t0
  # The sampler's DDIM steps are a lax.scan, whose body XLA's cost analysis
  # counts once: its FLOPs are one step's plus the decode, and no time.
  loop = (step != "train" and config.trainer == "dit")
  return dict(report(compiled, info, model_flops, examples, loop=loop),
              **common, compile_s=compile_s, compiled=compiled, error=None)


def report(compiled, info: dict, model_flops: float, examples: int, *,
           loop: bool = False) -> dict:
  """Memory, FLOPs and the cost model's estimates, per chip; `loop`: the
  program's work is in a loop the cost analysis counts once (no estimate)."""
  dpc = info["devices_per_chip"]
  mem = compiled.memory_analysis()
  per_dev = dict(argument=mem.argument_size_in_bytes,
                 output=mem.output_size_in_bytes,
                 alias=mem.alias_size_in_bytes, temp=mem.temp_size_in_bytes,
                 code=mem.generated_code_size_in_bytes)
  # Live at the peak: inputs, outputs not written into donated inputs, the
  # scratch and the program.
  per_dev["total"] = (per_dev["argument"] + per_dev["output"] -
                      per_dev["alias"] + per_dev["temp"] + per_dev["code"])
  out = {f"{k}_gib": dpc * v / GIB for k, v in per_dev.items()}
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  out.update(info, fits=out["total_gib"] < info["hbm_gib"],
             xla_tflops_per_chip=dpc * float(cost.get("flops", 0.0)) / 1e12,
             model_tflops_per_chip=model_flops / info["chips"] / 1e12,
             examples_per_step=examples)
  seconds = float(cost.get("optimal_seconds", -1.0))
  est = dict(est_step_ms=None, est_images_per_sec_per_chip=None, est_mfu=None)
  if seconds > 0 and not loop:  # negative or missing: no estimate
    est = dict(est_step_ms=1000 * seconds,
               est_images_per_sec_per_chip=examples / seconds / info["chips"],
               est_mfu=out["model_tflops_per_chip"] / seconds /
               info["peak_tflops"])
  out.update(est, estimate_source=ESTIMATE, xla_counts_loop_body_once=loop)
  return out


HEADER = ("| config | step | topology | mesh | batch (per chip) | args GiB | "
          "temp GiB | total GiB / HBM | fits | XLA TFLOP/chip | model "
          "TFLOP/chip | est. step ms | est. img/s/chip | est. MFU |")


def row(r: dict) -> str:
  """One markdown table row; the est. columns are XLA's cost model's."""
  mesh = ",".join(f"{k}:{v}" for k, v in r["mesh"].items())
  topo = r["topology"] + (f" x{r['num_slices']}" if r["num_slices"] > 1
                          else "")
  per_chip = r["batch_per_chip"]
  per_chip = f"{per_chip:.0f}" if per_chip == int(per_chip) else f"{per_chip:.2f}"
  head = (f"| {r['name']} | {r['step']} | {topo} | {mesh} | {r['batch']} "
          f"({per_chip}) |")
  if r["compiled"] is None:  # libtpu ran out of HBM while compiling
    return (f"{head} - | - | > {r['hbm_gib']:g} | NO: {r['error']} | - | "
            f"{r['model_tflops_per_chip']:.4g} | - | - | - |")
  fmt = lambda v, f: "n/a" if v is None else format(v, f)
  return (f"{head} {r['argument_gib']:.2f} | {r['temp_gib']:.2f} | "
          f"{r['total_gib']:.2f} / {r['hbm_gib']:g} | "
          f"{'yes' if r['fits'] else 'NO'} | {r['xla_tflops_per_chip']:.4g} | "
          f"{r['model_tflops_per_chip']:.4g} | {fmt(r['est_step_ms'], '.1f')} "
          f"| {fmt(r['est_images_per_sec_per_chip'], '.1f')} | "
          f"{fmt(r['est_mfu'], '.1%')} |")


def config_name(spec: str) -> str:
  """"configs/vitok/s_b16_256.py:runlocal" -> "s_b16_256:runlocal"."""
  path, colon, arg = spec.partition(":")
  return os.path.basename(path).removesuffix(".py") + colon + arg


def main(argv=None) -> dict:
  """The command line (module docstring); returns compile_step's dict."""
  argv = list(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  config = config_flags.DEFINE_config_file(
      "config", None, "A trainer config (optionally ':args'); "
      "--config.<key>=<value> overrides.", flag_values=fv, lock_config=True,
      sys_argv=["aot_compile"] + argv)
  topology = flags.DEFINE_string("topology", "v5e:2x2", "A TPU topology: "
                                 + EXAMPLE_TOPOLOGIES, flag_values=fv)
  num_slices = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN "
                                    "(config.mesh then needs a 'slice' axis)",
                                    flag_values=fv)
  step = flags.DEFINE_enum("step", "train", STEPS, "What to compile.",
                           flag_values=fv)
  batch_per_chip = flags.DEFINE_integer(
      "batch_per_chip", None, "Global batch = this x chips (default: the "
      "config's)", flag_values=fv)
  mesh = flags.DEFINE_string("mesh", None, "Overrides config.mesh: "
                             "slice:2,data:-1,fsdp:1 or the config's "
                             "(('data', -1), ('fsdp', 1))", flag_values=fv)
  out_json = flags.DEFINE_string("json", None, "Also write the figures here.",
                                 flag_values=fv)
  variant = flags.DEFINE_string("tokenizer_variant", None, "A DiT's (faked) "
                                "tokenizer, e.g. S-B/16", flag_values=fv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv):
    # This FlagValues is its own: absl's --help is not defined on it.
    print(__doc__.strip() + "\n\nflags:\n" + fv.get_help())
    raise SystemExit(0)
  fv(["aot_compile"] + argv)
  if config.value is None:
    raise ValueError("--config is required")
  spec = [a for a in argv if a.startswith("--config=")][-1][len("--config="):]
  r = compile_step(config.value, topology.value, num_slices=num_slices.value,
                   step=step.value, batch_per_chip=batch_per_chip.value,
                   mesh=mesh.value, tokenizer_variant=variant.value,
                   name=config_name(spec))
  done = (f"compiled in {r['compile_s']:.1f} s" if r["compiled"] else
          "does NOT fit: libtpu ran out of HBM compiling it")
  print(f"{r['name']} {r['step']} on {r['topology']} ({r['chips']} "
        f"{r['chip']} chips, {r['processes']} hosts, {r['slices']} slice(s)), "
        f"{done}; est. = {ESTIMATE}")
  print(HEADER)
  print(row(r))
  if out_json.value:
    with open(out_json.value, "w") as f:
      json.dump({k: v for k, v in r.items() if k not in ("compiled", "args")},
                f, indent=1)
  return r


if __name__ == "__main__":
  try:
    sys.exit(0 if main()["fits"] else 2)  # 2: compiles, does not fit
  except (ValueError, RuntimeError) as e:
    sys.exit(f"aot_compile: {e}")
