r"""Times the jitted ViTok or DiT train step (after compilation). A benchmark, not a test.

  python tools/bench.py --variant S-B/16 --res 256 --batch 64
  python tools/bench.py --variant mu-mu/8 --res 64 --batch 8 --dtype float32  # CPU
  python tools/bench.py --variant S-B/16 --res 256 --batch 64 --stream_dtype bfloat16
  python tools/bench.py --dit L --variant S-B/16 --res 256 --batch 256   # DiT-L step
  python tools/bench.py --stage2 --variant S-B/16 --res 256 --batch 64 --lpips 1.0
  python tools/bench.py --mode encode --variant S-B/16 --res 256 --batch 256
  python tools/bench.py --variant S-B/16 --res 256 --batch 64 --profile /tmp/trace

--stage2 times the stage-2 step: the encoder frozen (forward only), decoder
trained with LPIPS (--lpips) and the StyleGAN2 discriminator (GAN weight
0.1), EMA. --mode encode|decode times the jitted forward of one half
(throughput of tokenizing a data set, or of decoding DiT samples).
--profile DIR writes a trace of the timed steps for TensorBoard's profiler.
--input DATA times the training input pipeline alone (decode + augment, one
host process, grain workers 0: one core), in images (or clips) per second.

--dit SIZE times the DiT step on the latents of --variant at --res (e.g.
S-B/16 at 256p: 256 tokens x c=16), fed as precomputed latents (the shards
path: no tokenizer forward in the step); its model FLOPs are the DiT's
forward + backward (flops.dit_macs).

Prints images/s, step ms, compile s, peak device memory and model-FLOP
utilisation (MFU) against --peak_tflops per device (default: H100 SXM bf16
dense, 989 TFLOP/s). Model FLOPs = 3 x forward (fwd + bwd), 2 FLOPs per
multiply-add, tubelet convs included; LPIPS (--lpips) and remat recompute
are not counted as model FLOPs. Beside them, the FLOPs XLA counts in the
compiled step (cost analysis: everything it runs, LPIPS and recompute
included), so waste shows as the gap between the two.
"""
import argparse
import time

import jax
import numpy as np

from vitok_jax import flops
from vitok_jax.models import vitok
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import tokenizer


parse_mesh = sh.parse_mesh  # either spelling (vitok_jax/parallel/sharding.py)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--variant", default="S-B/16")
  ap.add_argument("--code_channels", type=int, default=16)
  ap.add_argument("--res", type=int, default=256)
  ap.add_argument("--frames", type=int, default=1)
  ap.add_argument("--batch", type=int, default=64, help="global batch")
  ap.add_argument("--mesh", default="data:-1,fsdp:1",
                  help="data:-1,fsdp:1 or the config's "
                  "\"(('data', -1), ('fsdp', 1))\"")
  ap.add_argument("--dtype", default="bfloat16", help="matmul dtype")
  ap.add_argument("--stream_dtype", default="float32",
                  help="residual stream and norms: float32 = the paper's "
                  "autocast (default), bfloat16 = all-bf16")
  ap.add_argument("--remat", default="none", choices=["none", "block", "dots"],
                  help="activation checkpointing policy")
  ap.add_argument("--attn_impl", default=None,
                  help="None | auto | xla | cudnn | splash (models/attention.py)")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--lpips", type=float, default=0.0,
                  help="LPIPS weight (random VGG: same FLOPs as the real one)")
  ap.add_argument("--peak_tflops", type=float, default=989.0)
  ap.add_argument("--dit", default=None, help="time a DiT of this size "
                  "(mu|T|S|B|L|XL) on --variant's latents instead")
  ap.add_argument("--classes", type=int, default=1000)
  ap.add_argument("--stage2", action="store_true",
                  help="the stage-2 step (frozen encoder, GAN, EMA)")
  ap.add_argument("--mode", default="train", choices=["train", "encode",
                                                      "decode"])
  ap.add_argument("--profile", default=None, help="trace folder")
  ap.add_argument("--input", default=None, help="time the input pipeline "
                  "alone on this config.input.data (e.g. folder:/data/jpegs, "
                  "tfds:imagenet2012:train, embedded)")
  ap.add_argument("--batches", type=int, default=20)
  args = ap.parse_args(argv)
  if args.input:
    return bench_input(args)
  if args.dit:
    return bench_dit(args)

  config = tokenizer.default_config()
  config.model.update(variant=args.variant, code_channels=args.code_channels,
                      dtype=args.dtype, stream_dtype=args.stream_dtype,
                      remat=args.remat,
                      attn_impl=args.attn_impl)
  config.input.update(res=args.res, frames=args.frames, batch_size=args.batch)
  config.total_steps = 1000
  config.optim.warmup_steps = 10
  mesh = sh.make_mesh(parse_mesh(args.mesh))
  config.loss.update(lpips_weight=args.lpips, lpips_allow_random=True)
  if args.stage2:
    config.optim.freeze = tokenizer.ENCODER_PATTERNS
    config.loss.update(gan_weight=0.1)
    config.disc.warmup_steps = 10
    config.ema_decay = 0.9999
  if args.mode != "train":
    return bench_half(args, config, mesh)
  setup = tokenizer.make_setup(config, mesh)
  frozen = tokenizer.load_frozen(config, mesh)
  shape = tokenizer.input_shape(config)
  rng = np.random.default_rng(0)
  batch = sh.put_global_batch(
      rng.uniform(-1, 1, (shape[0] // jax.process_count(),) + shape[1:]
                  ).astype(np.float32), setup.batch_sharding)

  t0 = time.time()
  state = setup.init(jax.random.key(0))
  compiled = setup.step.lower(state, batch, frozen).compile()
  compile_s = time.time() - t0
  step_s, m = _time(compiled, state, (batch, frozen), args.warmup, args.steps,
                    args.profile)
  header = (f"ViTok {args.variant} {'stage 2' if args.stage2 else 'stage 1'}"
            f" {args.frames}x{args.res}^2 batch {shape[0]}")
  model_flops = (flops.stage2_step_flops(setup.model, shape) if args.stage2 else
                 flops.train_step_flops(setup.model, shape))
  return _report(header, args, compiled, compile_s, step_s, m, model_flops,
                 shape[0] * args.frames, mesh,
                 dict(variant=args.variant, res=args.res, frames=args.frames,
                      batch=shape[0]))


def bench_input(args) -> dict:
  """Images (clips) per second of make_train_dataset on one core."""
  from vitok_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = tokenizer.default_config().input
  config.update(data=args.input, res=args.res, frames=args.frames,
                batch_size=args.batch, num_workers=0)
  it = iter(input_pipeline.make_train_dataset(config, seed=0))
  next(it)  # opening files, first decode
  t0 = time.time()
  for _ in range(args.batches):
    next(it)
  per_s = args.batch * args.batches / (time.time() - t0)
  unit = "clips" if args.frames > 1 else "images"
  print(f"input {args.input} at {args.frames}x{args.res}^2: {per_s:.1f} "
        f"{unit}/s on one core")
  return dict(data=args.input, per_sec=per_s, unit=unit)


def _time(compiled, state, args_tuple, warmup, steps, profile=None):
  """Seconds per step of a compiled step, after `warmup` steps; with
  `profile`, the timed steps are traced into that folder."""
  for _ in range(warmup):
    state, m = compiled(state, *args_tuple)
  jax.block_until_ready(m)
  if profile:
    jax.profiler.start_trace(profile)
  t0 = time.time()
  for _ in range(steps):
    state, m = compiled(state, *args_tuple)
  jax.block_until_ready(m)
  dt = (time.time() - t0) / steps
  if profile:
    jax.profiler.stop_trace()
    print(f"  trace of {steps} steps in {profile} (tensorboard --logdir "
          f"{profile}, Profile tab)")
  return dt, m


def bench_half(args, config, mesh):
  """Throughput of the jitted encode (images -> z) or decode (z -> images)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = vitok.from_config(config.model)
  shape = tokenizer.input_shape(config)
  params = jax.jit(model.init, out_shardings=sh.replicated(mesh))(
      jax.random.key(0), jnp.zeros((1,) + shape[1:]))["params"]
  grid = model.token_grid(shape)
  bsh = sh.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  b_local = shape[0] // jax.process_count()
  if args.mode == "encode":
    x = rng.uniform(-1, 1, (b_local,) + shape[1:]).astype(np.float32)
    fn = lambda p, x: model.apply({"params": p}, x, method="encode")["z"]
  else:
    x = rng.standard_normal((b_local, model.num_codes(grid),
                             model.code_channels)).astype(np.float32)
    fn = lambda p, z: model.apply({"params": p}, z, grid, method="decode")
  x = sh.put_global_batch(x, bsh)
  t0 = time.time()
  compiled = jax.jit(fn).lower(params, x).compile()
  compile_s = time.time() - t0
  step = lambda state, x: (state, {"loss": jnp.mean(compiled(params, x))})
  step_s, m = _time(step, None, (x,), args.warmup, args.steps, args.profile)
  half = flops.half_macs(model, shape)[args.mode]
  return _report(f"ViTok {args.variant} {args.mode} {args.frames}x{args.res}^2"
                 f" batch {shape[0]}", args, compiled, compile_s, step_s, m,
                 2 * half * shape[0], shape[0] * args.frames, mesh,
                 dict(variant=args.variant, mode=args.mode, batch=shape[0]))


def _report(header, args, compiled, compile_s, step_s, m, model_flops,
            examples, mesh, extra) -> dict:
  """Prints and returns images/s, step time, memory and MFU."""
  # XLA's own accounting of the step's scratch memory (activations kept for
  # the backward pass among them): available on every backend, unlike
  # memory_stats(), which only GPUs fill.
  temp_gib = getattr(compiled.memory_analysis(), "temp_size_in_bytes",
                     0) / 2**30
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # One SPMD partition's count: times the devices for the whole step.
  xla_flops = float((cost or {}).get("flops", 0.0)) * mesh.size
  achieved = model_flops / step_s
  mfu = achieved / (args.peak_tflops * 1e12 * jax.device_count())
  mem = jax.local_devices()[0].memory_stats() or {}
  peak_gib = mem.get("peak_bytes_in_use", 0) / 2**30
  out = dict(extra, devices=jax.device_count(),
             platform=jax.devices()[0].platform,
             device_kind=jax.devices()[0].device_kind,
             images_per_sec=examples / step_s, step_ms=1000 * step_s,
             compile_s=compile_s, peak_mem_gib=peak_gib, temp_gib=temp_gib,
             model_tflops_per_step=model_flops / 1e12,
             achieved_tflops=achieved / 1e12, mfu=mfu, loss=float(m["loss"]),
             xla_tflops_per_step=xla_flops / 1e12)
  print(f"{header} on {out['devices']}x {out['device_kind']} (matmuls "
        f"{args.dtype}, stream {args.stream_dtype}, mesh {dict(mesh.shape)})")
  print(f"  images/s {out['images_per_sec']:.1f} | step {out['step_ms']:.1f} ms"
        f" | compile {compile_s:.1f} s | peak mem {peak_gib:.2f} GiB"
        f" | XLA temp {temp_gib:.2f} GiB")
  print(f"  model TFLOP/step {out['model_tflops_per_step']:.4g} (XLA counts "
        f"{out['xla_tflops_per_step']:.4g}) | achieved "
        f"{out['achieved_tflops']:.2f} TFLOP/s | MFU {100 * mfu:.1f}% of "
        f"{args.peak_tflops:g} TFLOP/s/device")
  return out


def bench_dit(args):
  from vitok_jax.diffusion import codec as codec_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  # The tokenizer only sets the latent shape here (its params are unused).
  codec = codec_lib.Codec(vitok.create(args.variant, args.code_channels),
                            None, args.res, args.frames)
  config = dit.default_config()
  config.tokenizer.workdir = "unused"
  config.latents.source = "shards:unused"
  config.model.update(size=args.dit, dtype=args.dtype,
                      stream_dtype=args.stream_dtype, remat=args.remat,
                      attn_impl=args.attn_impl)
  config.num_classes = args.classes
  config.input.update(res=args.res, frames=args.frames, batch_size=args.batch)
  mesh = sh.make_mesh(parse_mesh(args.mesh))
  setup = dit.make_setup(config, mesh, codec)
  b_local = args.batch // jax.process_count()
  rng = np.random.default_rng(0)
  z, y = sh.put_global_batch(
      (rng.standard_normal((b_local, codec.num_tokens, codec.channels)
                           ).astype(np.float32),
       rng.integers(0, args.classes, (b_local,)).astype(np.int32)),
      setup.batch_sharding)
  t0 = time.time()
  state = setup.init(jax.random.key(0))  # latent statistics 0 / 1
  compiled = setup.step.lower(state, z, y, {}).compile()
  compile_s = time.time() - t0
  step_s, m = _time(compiled, state, (z, y, {}), args.warmup, args.steps,
                    args.profile)
  header = (f"DiT-{args.dit} on {codec.num_tokens} tokens x {codec.channels} "
            f"({args.variant} at {args.res}p) batch {args.batch}")
  return _report(header, args, compiled, compile_s, step_s, m,
                 flops.dit_train_step_flops(setup.model, codec.num_tokens,
                                            args.batch),
                 args.batch, mesh, dict(dit=args.dit, tokens=codec.num_tokens,
                                        batch=args.batch))


if __name__ == "__main__":
  main()
