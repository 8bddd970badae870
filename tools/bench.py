r"""Times the jitted ViTok or DiT train step (after compilation). A benchmark, not a test.

  python tools/bench.py --variant S-B/16 --res 256 --batch 64
  python tools/bench.py --variant mu-mu/8 --res 64 --batch 8 --dtype float32  # CPU
  python tools/bench.py --variant S-B/16 --res 256 --batch 64 --stream_dtype bfloat16
  python tools/bench.py --dit L --variant S-B/16 --res 256 --batch 256   # DiT-L step

--dit SIZE times the DiT step on the latents of --variant at --res (e.g.
S-B/16 at 256p: 256 tokens x c=16), fed as precomputed latents (the shards
path: no tokenizer forward in the step); its model FLOPs are the DiT's
forward + backward (flops.dit_macs).

Prints images/s, step ms, compile s, peak device memory and model-FLOP
utilisation (MFU) against --peak_tflops per device (default: H100 SXM bf16
dense, 989 TFLOP/s). Model FLOPs = 3 x forward (fwd + bwd), 2 FLOPs per
multiply-add, tubelet convs included; LPIPS (--lpips) and remat recompute
are not counted as model FLOPs.
"""
import argparse
import time

import jax
import numpy as np

from vitok_jax import flops
from vitok_jax import sharding as sh
from vitok_jax.trainers import tokenizer


def parse_mesh(text: str):
  axes = []
  for part in text.split(","):
    name, _, size = part.partition(":")
    axes.append((name, int(size or -1)))
  return axes


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--variant", default="S-B/16")
  ap.add_argument("--code_channels", type=int, default=16)
  ap.add_argument("--res", type=int, default=256)
  ap.add_argument("--frames", type=int, default=1)
  ap.add_argument("--batch", type=int, default=64, help="global batch")
  ap.add_argument("--mesh", default="data:-1,fsdp:1")
  ap.add_argument("--dtype", default="bfloat16", help="matmul dtype")
  ap.add_argument("--stream_dtype", default="float32",
                  help="residual stream and norms: float32 = the paper's "
                  "autocast (default), bfloat16 = all-bf16")
  ap.add_argument("--remat", action="store_true")
  ap.add_argument("--attn_impl", default=None, help="None | xla | cudnn")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--lpips", type=float, default=0.0,
                  help="LPIPS weight (random VGG: same FLOPs as the real one)")
  ap.add_argument("--peak_tflops", type=float, default=989.0)
  ap.add_argument("--dit", default=None, help="time a DiT of this size "
                  "(mu|T|S|B|L|XL) on --variant's latents instead")
  ap.add_argument("--classes", type=int, default=1000)
  args = ap.parse_args(argv)
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
  step_s, m = _time(compiled, state, (batch, frozen), args.warmup, args.steps)
  header = (f"ViTok {args.variant} {args.frames}x{args.res}^2 batch {shape[0]}")
  return _report(header, args, compiled, compile_s, step_s, m,
                 flops.train_step_flops(setup.model, shape),
                 shape[0] * args.frames, mesh,
                 dict(variant=args.variant, res=args.res, frames=args.frames,
                      batch=shape[0]))


def _time(compiled, state, args_tuple, warmup, steps):
  """Seconds per step of a compiled step, after `warmup` steps."""
  for _ in range(warmup):
    state, m = compiled(state, *args_tuple)
  jax.block_until_ready(m)
  t0 = time.time()
  for _ in range(steps):
    state, m = compiled(state, *args_tuple)
  jax.block_until_ready(m)
  return (time.time() - t0) / steps, m


def _report(header, args, compiled, compile_s, step_s, m, model_flops,
            examples, mesh, extra) -> dict:
  """Prints and returns images/s, step time, memory and MFU."""
  # XLA's own accounting of the step's scratch memory (activations kept for
  # the backward pass among them): available on every backend, unlike
  # memory_stats(), which only GPUs fill.
  temp_gib = getattr(compiled.memory_analysis(), "temp_size_in_bytes",
                     0) / 2**30
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
             achieved_tflops=achieved / 1e12, mfu=mfu, loss=float(m["loss"]))
  print(f"{header} on {out['devices']}x {out['device_kind']} (matmuls "
        f"{args.dtype}, stream {args.stream_dtype}, mesh {dict(mesh.shape)})")
  print(f"  images/s {out['images_per_sec']:.1f} | step {out['step_ms']:.1f} ms"
        f" | compile {compile_s:.1f} s | peak mem {peak_gib:.2f} GiB"
        f" | XLA temp {temp_gib:.2f} GiB")
  print(f"  model TFLOP/step {out['model_tflops_per_step']:.3f} | achieved "
        f"{out['achieved_tflops']:.2f} TFLOP/s | MFU {100 * mfu:.1f}% of "
        f"{args.peak_tflops:g} TFLOP/s/device")
  return out


def bench_dit(args):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vitok_jax import latents as latents_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.models import vitok  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  # The tokenizer only sets the latent shape here (its params are unused).
  codec = latents_lib.Codec(vitok.create(args.variant, args.code_channels),
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
  repl = sh.replicated(mesh)
  stats = jax.device_put((jnp.zeros(codec.channels), jnp.ones(codec.channels)),
                         repl)
  t0 = time.time()
  state = setup.init(jax.random.key(0))
  compiled = setup.step.lower(state, z, y, {}, stats).compile()
  compile_s = time.time() - t0
  step_s, m = _time(compiled, state, (z, y, {}, stats), args.warmup,
                    args.steps)
  header = (f"DiT-{args.dit} on {codec.num_tokens} tokens x {codec.channels} "
            f"({args.variant} at {args.res}p) batch {args.batch}")
  return _report(header, args, compiled, compile_s, step_s, m,
                 flops.dit_train_step_flops(setup.model, codec.num_tokens,
                                            args.batch),
                 args.batch, mesh, dict(dit=args.dit, tokens=codec.num_tokens,
                                        batch=args.batch))


if __name__ == "__main__":
  main()
