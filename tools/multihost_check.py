r"""Runs a few sharded ViTok train steps as one process of a multi-process job.

Launch one copy per process (JAX's own distributed runtime, CPU collectives):

  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python tools/multihost_check.py --coordinator localhost:12345 \
      --num_processes 2 --process_id {0,1}

Every process feeds its own rows of one seeded global batch and prints one
JSON line with the losses and a parameter checksum; all processes (and a
single-process run over the same number of devices, --num_processes 1) must
print the same numbers. tests/test_multihost.py does exactly that.
"""
import argparse
import json

import jax
import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--coordinator", default=None)
  ap.add_argument("--num_processes", type=int, default=1)
  ap.add_argument("--process_id", type=int, default=0)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--devices", type=int, default=None,
                  help="use only the first N global devices")
  args = ap.parse_args(argv)
  if args.num_processes > 1:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  # Imported after initialisation so nothing touches the backend before it.
  from configs.vitok import s_b16_256  # pylint: disable=g-import-not-at-top
  from vitok_jax.parallel import sharding as sh  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top

  config = tokenizer.resolve_config(s_b16_256.get_config("runlocal,lpips=0"))
  config.input.update(res=32, batch_size=args.batch)
  config.sharding.fsdp_min_size = 1
  devices = jax.devices()[:args.devices] if args.devices else jax.devices()
  n = len(devices)
  mesh = sh.make_mesh([("data", 2 if n % 2 == 0 else 1), ("fsdp", -1)], devices)
  setup = tokenizer.make_setup(config, mesh)
  state = setup.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  per_proc = args.batch // jax.process_count()
  losses = []
  for _ in range(args.steps):
    global_batch = rng.uniform(-1, 1, (args.batch, 32, 32, 3)).astype(np.float32)
    local = global_batch[jax.process_index() * per_proc:
                         (jax.process_index() + 1) * per_proc]
    state, m = setup.step(state, sh.put_global_batch(local, setup.batch_sharding), {})
    losses.append(float(m["loss"]))
  l2 = float(jax.jit(lambda p: sum(np.float32(0) + (x**2).sum()
                                   for x in jax.tree.leaves(p)),
                     out_shardings=sh.replicated(mesh))(state["params"]))
  print(json.dumps(dict(process=jax.process_index(),
                        processes=jax.process_count(), devices=n,
                        mesh=dict(mesh.shape), losses=losses, param_l2=l2)),
        flush=True)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
