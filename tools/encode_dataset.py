r"""Encodes a data set into latent shards for DiT training.

  python tools/encode_dataset.py --tokenizer=WORKDIR --data=tfds:imagenet2012:train \
      --res=256 --out=latents/imagenet_s_b16_256

then train with `--config=configs/dit/...:tokenizer=WORKDIR,shards=latents/...`.
Each record is the evaluation crop (resize the shorter side, centre crop) of
an image, encoded by the tokenizer run's EMA params (the posterior mean), with
its class label, and (unless --no-flips) the encoding of the mirrored crop, as
MAR stores both: a DiT with config.input.flip=True picks one per example, as
the on-the-fly path flips its crops. Shards of --shard_size records (vitok_jax/data/latent_shards.py)
are written atomically, with a progress line each; run the same command
again after an interruption and it goes on from the first missing shard.
Unreadable records are skipped and counted.

Scale: every local device encodes (the batch is split over a mesh of this
process's devices) while --workers threads decode and crop the next images;
as a multi-process job (--coordinator_address/--num_processes/--process_id,
or --distributed under SLURM / JAX_COORDINATOR_ADDRESS) process i of N
writes shards i, i + N, ... on its own: no process waits for another, and a
rerun on any number of processes completes whatever shards are missing.
"""
import argparse
from concurrent import futures
import math
import os
import sys
import time

import jax
import numpy as np

from vitok_jax import cli
from vitok_jax.data import input_pipeline
from vitok_jax.data import latent_shards
from vitok_jax.data import preprocess as ops
from vitok_jax.diffusion import codec as codec_lib
from vitok_jax.io import fileio
from vitok_jax.parallel import sharding as sh
from vitok_jax.parallel import startup


def encode(tokenizer: str, data: str, res: int, out: str, *, step=None,
           shard_size: int = 1024, batch_size: int = 64, num_examples=None,
           data_dir=None, image_key: str = "image", workers: int = 8,
           flips: bool = True, log=print) -> dict:
  """Writes (or completes) this process's shards; returns the meta dict."""
  codec = codec_lib.Codec.load(tokenizer, step, res=res, key="--tokenizer")
  source = input_pipeline.CheckedSource(
      input_pipeline.get_source(data, data_dir, image_key))
  n = len(source) if num_examples is None else min(num_examples, len(source))
  meta = dict(tokenizer=codec.workdir, step=codec.step, data=data, res=res,
              num_examples=n, shard_size=shard_size,
              num_shards=math.ceil(n / shard_size), tokens=codec.num_tokens,
              channels=codec.channels,
              rope_grid=list(codec.rope_grid) if codec.rope_grid else None,
              flips=bool(flips))
  if fileio.exists(fileio.join(out, latent_shards.META)):
    old = latent_shards.read_meta(out)
    differ = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
    if differ:
      raise ValueError(f"--out={out!r} holds shards of another encoding "
                       f"(stored vs asked: {differ}); use a new --out")
  if jax.process_index() == 0:
    latent_shards.write_meta(out, meta)
  # This process's devices only: processes never wait for each other.
  mesh = sh.make_mesh([("data", -1)], jax.local_devices())
  batch_size = -(-batch_size // mesh.size) * mesh.size
  encode_fn = jax.jit(codec.encode,
                      in_shardings=(sh.replicated(mesh), sh.batch_sharding(mesh)),
                      out_shardings=sh.batch_sharding(mesh))
  params = jax.device_put(codec.params, sh.replicated(mesh))
  mine = range(jax.process_index(), meta["num_shards"], jax.process_count())
  done = set(latent_shards.complete_shards(out))
  if done:
    log(f"{len(done)} of {meta['num_shards']} shards already in {out}")

  def load(i):
    rec = source[i]
    if isinstance(rec, input_pipeline.BadRecord):
      return rec
    return ops.value_range(ops.center_crop(rec["image"], res)), rec["label"]

  pool = futures.ThreadPoolExecutor(max(int(workers), 1))
  todo = [s for s in mine if s not in done]
  # Decoding of the next shard runs in the threads while this one encodes.
  pending = {}

  def submit(s):
    pending[s] = [pool.submit(load, i) for i in
                  range(s * shard_size, min((s + 1) * shard_size, n))]

  t0, encoded, skipped = time.time(), 0, 0
  if todo:
    submit(todo[0])
  for k, s in enumerate(todo):
    recs = [f.result() for f in pending.pop(s)]
    if k + 1 < len(todo):
      submit(todo[k + 1])
    images, labels = [], []
    for rec in recs:
      if isinstance(rec, input_pipeline.BadRecord):
        skipped += 1
        log(f"skipping unreadable record {rec.where}: {rec.error}")
        continue
      images.append(rec[0])
      labels.append(rec[1])
    zs, zs_flipped = [], []
    for b in range(0, len(images), batch_size):
      chunk = np.stack(images[b:b + batch_size])
      pad = batch_size - len(chunk)  # one compiled shape
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                              chunk.dtype)])
      for views, x in ((zs, chunk), (zs_flipped, chunk[:, :, ::-1])):
        if views is zs_flipped and not flips:
          continue
        z = encode_fn(params, jax.device_put(np.ascontiguousarray(x),
                                             sh.batch_sharding(mesh)))
        views.append(np.asarray(z)[:batch_size - pad])
    empty = np.zeros((0, codec.num_tokens, codec.channels), np.float32)
    z = np.concatenate(zs) if zs else empty
    z_flipped = (np.concatenate(zs_flipped) if zs_flipped else empty
                 ) if flips else None
    latent_shards.write_shard(out, s, z, np.asarray(labels, np.int32),
                              z_flipped)
    encoded += len(z)
    rate = encoded / max(time.time() - t0, 1e-9)
    log(f"shard {s + 1}/{meta['num_shards']}: {len(z)} latents "
        f"[{codec.num_tokens} x {codec.channels}] ({rate:.1f} img/s"
        f"{f', {skipped} unreadable skipped' if skipped else ''})")
  pool.shutdown()
  log(f"done: this process's {len(mine)} of {meta['num_shards']} shards of "
      f"{n} records in {out}")
  return meta


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--tokenizer", required=True, help="a ViTok run's workdir")
  ap.add_argument("--step", type=int, default=None)
  ap.add_argument("--data", required=True, help="as config.input.data")
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--image_key", default="image")
  ap.add_argument("--res", type=int, required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--shard_size", type=int, default=1024)
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--num_examples", type=int, default=None)
  ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                  help="threads that decode and crop images")
  ap.add_argument("--flips", action=argparse.BooleanOptionalAction,
                  default=True, help="also store the mirrored crops' "
                  "encodings (for config.input.flip; twice the encoding)")
  startup.add_arguments(ap)
  args = ap.parse_args(argv)
  startup.initialize_from_args(args)
  try:
    encode(args.tokenizer, args.data, args.res, args.out, step=args.step,
           shard_size=args.shard_size, batch_size=args.batch_size,
           num_examples=args.num_examples, data_dir=args.data_dir,
           image_key=args.image_key, workers=args.workers, flips=args.flips,
           log=lambda s: print(s, flush=True))
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"encode_dataset: {e}")


if __name__ == "__main__":
  # A failure is one line naming the job, and the process leaves at once
  # (the other processes of a multi-process job then fail, not hang).
  cli.run_job("tools/encode_dataset.py", main)
