"""The optax chain from the config: AdamW + warm-up/cosine, clipping,
weight decay on kernels only, and freezing by parameter-name pattern.

Freezing is an optimizer concern (stage 2 freezes `encoder/.*`): frozen leaves
go through `optax.set_to_zero()` in a `multi_transform`, so they get neither
updates, nor weight decay, nor Adam moments.
"""
import jax
import ml_collections
import optax

from vitok_jax import config_utils
import vitok_jax.utils as u


def default_config(**overrides) -> ml_collections.ConfigDict:
  """config.optim with every key: the paper's tokenizer recipe (AdamW, beta
  (0.9, 0.95), weight decay 1e-4, 5k warm-up steps, cosine to 0, clipping at
  1); `overrides` set a trainer's own recipe. base_lr is the peak lr per 256
  samples (peak_lr); freeze: regexes of parameter names left untrained."""
  c = ml_collections.ConfigDict(dict(
      base_lr=1e-4, b1=0.9, b2=0.95, weight_decay=1e-4, warmup_steps=5000,
      end_lr_factor=0.0, grad_clip=1.0, freeze=()))
  c.update(overrides)
  return c


# The rule of each numeric config.optim key (config_utils.check_values).
V = config_utils
VALIDATORS = {
    "optim.base_lr": V.POSITIVE, "optim.b1": V.FRACTION, "optim.b2": V.FRACTION,
    "optim.weight_decay": V.NON_NEGATIVE, "optim.warmup_steps": V.NON_NEGATIVE,
    "optim.end_lr_factor": V.UNIT_INTERVAL, "optim.grad_clip": V.NON_NEGATIVE,
}


def lr_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                end_factor: float = 0.0) -> optax.Schedule:
  """Linear warm-up to peak_lr, then cosine decay to end_factor * peak_lr."""
  warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(peak_lr, max(int(total_steps), 1),
                                       alpha=end_factor)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=max(int(total_steps), warmup_steps + 1),
      end_value=peak_lr * end_factor)


def peak_lr(optim_config, input_config, per_frame: bool = True) -> float:
  """The paper's rule: peak lr = base_lr * batch * frames / 256.

  `optim.base_lr` is the peak lr per 256 samples (1e-4 in the paper); for a
  tokenizer a sample is a frame, so a video batch of 256 clips of 16 frames
  trains at 16x the lr of 256 images. A DiT's sample is one latent (a whole
  clip's tokens): per_frame=False, peak lr = base_lr * batch / 256 (the DiT
  recipe: 1e-4 at batch 256).
  """
  frames = input_config.frames if per_frame else 1
  return float(optim_config.base_lr) * input_config.batch_size * frames / 256


def decay_mask(params, patterns=(r".*/kernel",)):
  """Weight decay applies to matrix/conv kernels, not norms or embeddings."""
  return u.make_mask(params, patterns)


def make(config, params, total_steps: int, lr: float):
  """-> (optax.GradientTransformation, lr schedule) peaking at `lr`.

  config fields: b1, b2, weight_decay, warmup_steps, end_lr_factor,
  grad_clip (None/0 = off), freeze (list of regexes over param names).
  """
  sched = lr_schedule(lr, total_steps, config.warmup_steps,
                      config.end_lr_factor)
  parts = []
  if config.grad_clip:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adamw(sched, b1=config.b1, b2=config.b2,
                           weight_decay=config.weight_decay,
                           mask=decay_mask(params)))
  tx = optax.chain(*parts)
  freeze = list(config.freeze)
  if freeze:
    frozen = u.make_mask(params, freeze)
    if not any(jax.tree.leaves(frozen)):
      raise ValueError(f"config.optim.freeze {freeze} matches no parameter")
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               labels)
  return tx, sched

