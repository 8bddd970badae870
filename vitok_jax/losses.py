"""Loss functions: pure functions of arrays returning (loss, aux).

L_AE = L_REC + beta * L_KL + eta * L_LPIPS + lambda * L_GAN   (paper eq. 1)

The same functions serve training and evaluation. Videos [B, T, H, W, 3] are
folded to frames [B*T, H, W, 3] for the per-image terms (LPIPS, GAN), as the
paper does.

NaFlex rows (data/naflex.py: one image per row as a padded patch sequence)
have their own reconstruction and LPIPS terms, over the image's pixels only;
LPIPS and the discriminator see the rows un-packed onto a canvas
(`canvas_pair`).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from vitok_jax.data import naflex


def frames(x: jax.Array) -> jax.Array:
  """[B, T, H, W, C] -> [B*T, H, W, C]; images pass through."""
  return x.reshape((-1,) + x.shape[-3:]) if x.ndim == 5 else x


def reconstruction(recon, target, kind: str = "l2"):
  """Mean squared (l2) or absolute (l1) error over all pixels."""
  diff = recon.astype(jnp.float32) - target.astype(jnp.float32)
  if kind == "l2":
    loss = jnp.mean(diff**2)
  elif kind == "l1":
    loss = jnp.mean(jnp.abs(diff))
  else:
    raise ValueError(f"config.loss.rec must be 'l1' or 'l2', got {kind!r}")
  return loss, {f"rec_{kind}": loss}


def kl(aux):
  """Mean over the batch of the per-example KL the model computed."""
  loss = jnp.mean(aux["kl"])
  return loss, {"kl": loss}


def lpips(recon, target, lpips_fn: Callable):
  """LPIPS distance, frame-wise for video; lpips_fn(x, y) -> [N]."""
  d = lpips_fn(frames(recon), frames(target))
  loss = jnp.mean(d)
  return loss, {"lpips": loss}


def autoencoder(recon, target, aux, *, rec: str = "l2", kl_weight: float = 1e-3,
                lpips_weight: float = 0.0, lpips_fn: Optional[Callable] = None,
                gen_adv_loss=None, gan_weight: float = 0.0):
  """L_AE for the generator side; `gen_adv_loss` is the precomputed GAN term."""
  return _weighted_sum(reconstruction(recon, target, rec), aux,
                       lambda: lpips(recon, target, lpips_fn),
                       kl_weight=kl_weight, lpips_weight=lpips_weight,
                       lpips_fn=lpips_fn, gen_adv_loss=gen_adv_loss,
                       gan_weight=gan_weight)


def _weighted_sum(rec_term, aux, lpips_term: Callable, *, kl_weight,
                  lpips_weight, lpips_fn, gen_adv_loss, gan_weight):
  """L_AE from its reconstruction term (loss, terms): + KL, + LPIPS (the
  thunk `lpips_term`, called only when weighted), + the GAN term."""
  total, terms = rec_term
  l_kl, t = kl(aux)
  terms.update(t)
  total = total + kl_weight * l_kl
  if lpips_weight:
    if lpips_fn is None:
      raise ValueError("config.loss.lpips_weight > 0 needs an LPIPS network")
    l_p, t = lpips_term()
    terms.update(t)
    total = total + lpips_weight * l_p
  if gen_adv_loss is not None:
    terms["gan_g"] = gen_adv_loss
    total = total + gan_weight * gen_adv_loss
  terms["loss"] = total
  return total, terms


# --------------------------------------------------------------------------
# Adversarial terms (logits in float32, one per frame)
# --------------------------------------------------------------------------
def generator_adversarial(fake_logits, kind: str = "hinge"):
  """G's loss on D's logits of reconstructions."""
  if kind == "hinge":
    return -jnp.mean(fake_logits)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  raise ValueError(f"config.loss.gan_loss must be 'hinge' or "
                   f"'non_saturating', got {kind!r}")


def discriminator(real_logits, fake_logits, kind: str = "hinge"):
  """D's loss: real -> positive, fake -> negative."""
  if kind == "hinge":
    loss = (jnp.mean(jax.nn.relu(1.0 - real_logits)) +
            jnp.mean(jax.nn.relu(1.0 + fake_logits)))
  elif kind == "non_saturating":
    loss = (jnp.mean(jax.nn.softplus(-real_logits)) +
            jnp.mean(jax.nn.softplus(fake_logits)))
  else:
    raise ValueError(f"config.loss.gan_loss must be 'hinge' or "
                     f"'non_saturating', got {kind!r}")
  return loss, {"d_loss": loss, "d_real": jnp.mean(real_logits),
                "d_fake": jnp.mean(fake_logits)}


def r1_penalty(d_fn: Callable, real):
  """E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018)."""
  grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(real)
  loss = jnp.mean(jnp.sum(grads.astype(jnp.float32)**2, axis=(1, 2, 3)))
  return loss, {"r1": loss}


def lecam(real_logits, fake_logits, ema_real, ema_fake):
  """LeCam regulariser (Tseng et al. 2021) with EMAs of D's mean logits."""
  loss = (jnp.mean(jax.nn.relu(real_logits - ema_fake)**2) +
          jnp.mean(jax.nn.relu(ema_real - fake_logits)**2))
  return loss, {"lecam": loss}


# --------------------------------------------------------------------------
# NaFlex patch sequences [B, N, q*p*p*3] with valid [B, N]
# --------------------------------------------------------------------------
def masked_reconstruction(recon, target, valid, kind: str = "l2"):
  """Mean squared (l2) or absolute (l1) error over the values of valid
  patches, pooled over the batch: each image weighs by its pixel count, as
  pixels do in the square loss (which this equals when every patch is valid).
  Padding patches, whatever they hold, contribute nothing, to the loss or
  to its gradient (masked before the square: a NaN in padding stays out)."""
  keep = valid[..., None]
  diff = jnp.where(keep, recon.astype(jnp.float32) - target.astype(jnp.float32),
                   0.0)
  if kind == "l2":
    err = diff**2
  elif kind == "l1":
    err = jnp.abs(diff)
  else:
    raise ValueError(f"config.loss.rec must be 'l1' or 'l2', got {kind!r}")
  count = jnp.sum(valid) * recon.shape[-1]
  loss = jnp.sum(err) / jnp.maximum(count, 1)
  return loss, {f"rec_{kind}": loss}


def canvas_pair(recon, target, coords, valid, canvas_hw, patch: int,
                frames: int = 1):
  """Reconstruction and target un-packed onto the canvas (naflex.unpack) for
  LPIPS and the discriminator: (recon_img, target_img, mask). Outside each
  image both hold the target's canvas (zeros), so padding adds nothing to
  their difference, and D cannot tell real from fake by it."""
  target_img, mask = naflex.unpack(target, coords, valid, canvas_hw, patch,
                                   frames)
  recon_img, _ = naflex.unpack(recon, coords, valid, canvas_hw, patch, frames)
  return jnp.where(mask[..., None], recon_img, target_img), target_img, mask


def masked_lpips(recon_img, target_img, mask, lpips_fn: Callable):
  """LPIPS of canvas_pair's images, averaged over each image's own area.

  LPIPS averages each layer's distance map over the whole canvas. Outside the
  image both inputs are the same, so the map is zero there except within a
  receptive field of the image's border, where it measures errors of the
  image's own pixels. Dividing by the valid fraction of the canvas turns the
  canvas average into (sum of the map) / (image area): an image's LPIPS does
  not shrink with the padding around it, and a canvas the image fills is
  plain LPIPS. (The exact per-layer masked mean would need the mask inside
  the network; this needs none, and differs only by those border terms.)
  """
  d = lpips_fn(frames(recon_img), frames(target_img))
  m = mask.reshape((-1,) + mask.shape[-2:])
  area = jnp.mean(m.astype(jnp.float32), axis=(1, 2))
  loss = jnp.mean(jnp.where(area > 0, d / jnp.maximum(area, 1e-12), 0.0))
  return loss, {"lpips": loss}


def autoencoder_patches(recon, target, aux, coords, valid, *, canvas_hw,
                        patch: int, frames: int = 1, rec: str = "l2",
                        kl_weight: float = 1e-3, lpips_weight: float = 0.0,
                        lpips_fn: Optional[Callable] = None,
                        gen_adv_loss=None, gan_weight: float = 0.0):
  """`autoencoder` for NaFlex rows: the reconstruction term over valid
  patches, the model's KL (over valid tokens already), LPIPS on the canvas.
  `gen_adv_loss` is D's verdict on canvas_pair's reconstructions."""
  return _weighted_sum(
      masked_reconstruction(recon, target, valid, rec), aux,
      lambda: masked_lpips(*canvas_pair(recon, target, coords, valid,
                                        canvas_hw, patch, frames), lpips_fn),
      kl_weight=kl_weight, lpips_weight=lpips_weight, lpips_fn=lpips_fn,
      gen_adv_loss=gen_adv_loss, gan_weight=gan_weight)
