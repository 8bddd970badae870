"""Which attention kernel a model runs, chosen per platform at trace time.

config.model.attn_impl:
  unset (None) or "xla": jax.nn.dot_product_attention's XLA path (einsums
      and a float32 softmax); on every platform, the reference numbers;
  "cudnn": cuDNN's fused flash attention (NVIDIA GPUs only; bf16/fp16);
  "splash": the Pallas TPU splash-attention kernel
      (jax.experimental.pallas.ops.tpu.splash_attention), run per device
      under shard_map over the batch (see `splash` below); where it cannot
      run (not a TPU, no mesh while tracing, a length that is not a
      multiple of 128, a batch that does not split over the mesh: the
      trainers' eval_shape of the init at batch 1, say) XLA computes the
      same function and a warning says why;
  "auto": the best of these for the platform that runs the step:
      CPU      -> None, exactly today's default (tests do not change);
      GPU      -> "cudnn" for bf16/fp16 on an NVIDIA GPU from Ampere on, with
                  a head dim cuDNN's flash kernel takes (a multiple of 8, at
                  most 128), else XLA;
      TPU      -> XLA. Splash compiles and runs sharded (tools/aot_compile.py
                  compiles it inside the sharded train steps for v5e and
                  v5p), but it is not always the better choice, so it is an
                  explicit opt-in (below).

The platform is the context mesh's (jax.sharding.get_abstract_mesh(): set by
`sharding.traced_under(mesh, fn)` or `jax.set_mesh(mesh)`), else the default
backend's: an ahead-of-time compile on a CPU host for a TPU topology
(tools/aot_compile.py) must choose for the TPU, not for the CPU it traces
on. Splash also needs the mesh itself: a Pallas kernel is an opaque custom
call that XLA's SPMD partitioner cannot split, so under a batch-sharded jit
it would all-gather q, k, v and attend the whole global batch on every chip.
It therefore runs inside jax.shard_map over every mesh axis (the batch axes,
sharding.batch_axes), and without a context mesh it falls back to XLA.

Why "auto" keeps XLA on TPU (BENCHMARKS.md, "TPU ahead of time", measured
with libtpu 0.0.42.1): splash never materialises the [heads, L, L] scores,
so where the step fits as it is, it needs less memory: S-B/16 stage 1 at
256 tokens, 128 images per v5p chip, 67.0 -> 61.8 GiB; video S-B/4x8 at 1024
tokens, 32 clips per v5p chip, 94.4 -> 61.5 GiB. But where the step does not
fit as it is, XLA's TPU compiler recomputes activations until it does, and
it cannot do that through a custom call: video S-B/4x8 at 16 clips per v5e
chip compiles with XLA's attention (15.3 of 16 GiB) and runs out of HBM
with splash (19.3 GiB of temporaries). A choice made from the sequence
length alone could thus turn a job that compiles into one that does not;
splash's speed (XLA's cost model cannot see inside the kernel) is
unmeasured. Choose it per job with attn_impl="splash", after checking the
job with tools/aot_compile.py.
"""
import functools
import logging
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = (None, "auto", "xla", "cudnn", "splash")
# Splash tiles q and kv in blocks of at most this many tokens (multiples of
# the TPU's 128 lanes).
SPLASH_BLOCK = 512
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def context() -> Tuple[str, str, Optional[jax.sharding.AbstractMesh]]:
  """(platform, device kind, context mesh or None) of the step being traced:
  the context mesh's devices when one is set, else the default backend's."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    dev = mesh.abstract_device
    return dev.platform, dev.device_kind, mesh
  return jax.default_backend(), jax.devices()[0].device_kind, None


def check(impl) -> None:
  """Fails early, naming the choices, on an unknown attn_impl."""
  if impl not in IMPLS:
    raise ValueError(f"attn_impl={impl!r}: expected one of {list(IMPLS)}")


def resolve(impl: Optional[str], *, dtype, head_dim: int) -> Optional[str]:
  """The implementation `impl` ("auto" or an explicit one) means for an
  attention of `dtype` with heads of `head_dim`, here."""
  check(impl)
  if impl != "auto":
    return impl
  platform, kind, _ = context()
  dtype = jnp.dtype(dtype)
  if platform in ("gpu", "cuda"):
    if (_cudnn_flash_gpu(kind) and dtype in _HALF and head_dim % 8 == 0
        and head_dim <= 128):
      return "cudnn"
    return None
  return None  # TPU (see above), CPU and the rest: XLA, today's numbers


def _cudnn_flash_gpu(kind: str) -> bool:
  """An NVIDIA GPU of compute capability 8.0 or more (Ampere on), which
  cuDNN's flash attention needs."""
  if "NVIDIA" not in kind.upper():
    return False
  cc = getattr(jax.local_devices()[0], "compute_capability", None)
  return cc is None or float(cc) >= 8.0


def attend(q, k, v, impl: Optional[str], *, valid=None):
  """softmax(q k^T / sqrt(d)) v for q, k, v [B, L, heads, head_dim].

  valid [B, L] (bool, optional): the tokens that are part of the example (a
  packed sequence's image patches); no query ever attends to a key where it
  is False, so whatever the padding holds cannot reach a valid output. What
  the padding's own rows hold is unspecified (finite for finite inputs).
  valid=None is today's computation exactly. Per implementation: XLA gets
  the boolean mask (any pattern); cuDNN a key length per example
  (valid.sum(-1): its padding mask, which needs the valid tokens first, as
  the packed-sequence contract puts them); splash segment ids (valid tokens
  one segment, padding another, so no row is fully masked).
  """
  b, length, _, head_dim = q.shape
  impl = resolve(impl, dtype=q.dtype, head_dim=head_dim)
  if valid is not None and valid.shape != (b, length):
    raise ValueError(f"valid must be [B, L] = {(b, length)}, got {valid.shape}")
  if impl == "splash":
    why = splash_unavailable(length, b)
    if why is None:
      return splash(q, k, v, valid=valid)
    # A batch of 1 is a trainer's eval_shape of the init (no mesh, no
    # batch to split), where the fallback is expected: said quietly.
    _log_once(logging.WARNING if b > 1 else logging.INFO,
              f"attn_impl='splash' runs XLA's attention here: {why}")
    impl = None
  if valid is None:
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
  if impl == "cudnn":
    lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, implementation=impl,
                                        key_value_seq_lengths=lengths)
  return jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :],
                                      implementation=impl)


def splash_unavailable(length: int, batch: int) -> Optional[str]:
  """Why splash cannot run on these shapes here (None: it can). The same
  function then comes from XLA: the model's params and outputs are the
  same, so e.g. trainers' eval_shape of the init (batch 1, no mesh) works."""
  platform, _, mesh = context()
  if platform != "tpu":
    return f"the platform is {platform}, not tpu"
  if mesh is None:
    return ("no mesh while tracing (a Pallas kernel is not split by XLA's "
            "partitioner): jit the step with sharding.traced_under(mesh, fn)")
  if mesh._any_axis_manual:  # pylint: disable=protected-access
    return "already inside shard_map"
  if length % 128:
    return f"{length} tokens are not a multiple of 128"
  if batch % mesh.size:
    return f"a batch of {batch} does not split over {mesh.size} devices"
  return None


@functools.lru_cache(maxsize=None)
def _log_once(level: int, message: str) -> None:
  logging.log(level, message)


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, length: int):
  """Non-causal splash MHA for `heads` heads of `length` tokens (one
  example: q, k, v [heads, length, head_dim])."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top
  block = min(SPLASH_BLOCK, length)
  mask = sa.MultiHeadMask([sa.FullMask((length, length))] * heads)
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block,
                        block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1,
                            q_seq_shards=1)


def splash(q, k, v, valid=None):
  """The splash kernel on each device's share of the batch.

  Each device attends its own examples (attention never mixes examples), so
  shard_map over every axis of the context mesh, in the batch's layout
  (sharding.batch_axes), needs no communication; q is pre-scaled by
  1/sqrt(head_dim), which the kernel does not apply. With `valid`, the
  kernel gets segment ids (0 for valid tokens, 1 for padding): padding then
  attends only to padding, and no row is fully masked (an all-masked row
  would divide by zero in the kernel's softmax).
  """
  _, length, heads, head_dim = q.shape
  _, _, mesh = context()
  kernel = _splash_kernel(heads, length)
  scale = np.asarray(head_dim ** -0.5, q.dtype)
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, heads, L, head_dim]
  spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))

  if valid is None:
    def local(q, k, v):
      return jax.vmap(kernel)(to_heads(q * scale), to_heads(k), to_heads(v))
    out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec),
                        out_specs=spec, check_vma=False)(q, k, v)
  else:
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top

    def local(q, k, v, seg):
      one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(s, s))
      return jax.vmap(one)(to_heads(q * scale), to_heads(k), to_heads(v), seg)
    seg = jnp.where(valid, 0, 1).astype(jnp.int32)
    out = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4,
                        out_specs=spec, check_vma=False)(q, k, v, seg)
  return to_heads(out).astype(q.dtype)
