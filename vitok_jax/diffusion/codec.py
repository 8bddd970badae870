"""A trained ViTok as the DiT sees it: a frozen map images <-> latent tokens.

`Codec.load(workdir)` restores a tokenizer run (its EMA params when it has
them) and its model from the config stored in the checkpoint, so the DiT
needs nothing but the tokenizer's workdir. The latents are the posterior
means z = mean (evaluation mode): [B, N, c], one DiT token per ViTok code.
For Masked ViTok with an `eval_length` l the DiT models the first l codes and
decoding appends the tokenizer's mask token for the rest.

Normalisation (paper §2.3: the DiT trains on standardised latents): the
per-channel mean and std over the training data, computed once when a DiT
run first starts and kept in its train state (trainers/dit.py).
"""
import json
import logging
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.io import fileio
from vitok_jax.models import vitok
from vitok_jax.parallel import multihost


class LatentStats(NamedTuple):
  mean: np.ndarray  # [c]
  std: np.ndarray  # [c]

  def save(self, path: str, **meta) -> None:
    # atomic: a killed run never leaves half a file
    fileio.save_npz(path, mean=self.mean, std=self.std, meta=json.dumps(meta))

  @classmethod
  def load(cls, path: str) -> "LatentStats":
    f = fileio.load_npz(path)
    return cls(f["mean"].astype(np.float32), f["std"].astype(np.float32))


class RunningMoments:
  """Per-channel mean/std of [..., c] batches, accumulated in float64."""

  def __init__(self):
    self.n, self.s1, self.s2 = 0, 0.0, 0.0

  def update(self, z: np.ndarray) -> None:
    z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    self.n += z.shape[0]
    self.s1 = self.s1 + z.sum(0)
    self.s2 = self.s2 + (z * z).sum(0)

  def sum_over_processes(self) -> "RunningMoments":
    """Adds every process's sums (each process fed its own latents)."""
    n, self.s1, self.s2 = multihost.sum_over_processes(
        (self.n, self.s1, self.s2))
    self.n = int(round(float(n)))
    return self

  def result(self) -> LatentStats:
    if not self.n:
      raise ValueError("latent statistics of zero latents")
    mean = self.s1 / self.n
    std = np.sqrt(np.maximum(self.s2 / self.n - mean**2, 0.0))
    return LatentStats(mean.astype(np.float32),
                       np.maximum(std, 1e-6).astype(np.float32))


class Codec:
  """A frozen tokenizer: `encode(params, images)`, `decode(params, z)`."""

  def __init__(self, model: vitok.Model, params, res: int, frames: int = 1,
               workdir: Optional[str] = None, step: Optional[int] = None):
    self.model, self.params, self.workdir, self.step = (model, params,
                                                        workdir, step)
    self.res, self.frames = int(res), int(frames)
    self.input_shape = ((1, res, res, 3) if frames == 1 else
                        (1, frames, res, res, 3))
    self.grid = model.token_grid(self.input_shape)
    self.all_codes = model.num_codes(self.grid)
    self.num_tokens = (model.eval_length if model.mask_lengths and
                       model.eval_length is not None else self.all_codes)
    self.channels = model.code_channels

  @property
  def rope_grid(self) -> Optional[Tuple[int, int, int]]:
    """The DiT's RoPE grid: the token grid for a grid of codes, None (1D
    positions) for Latent ViTok's 1D codes or a Masked ViTok prefix."""
    if self.model.num_latent_tokens or self.num_tokens != self.all_codes:
      return None
    return self.grid

  def describe(self) -> str:
    return (f"{self.num_tokens} tokens x {self.channels} channels (ViTok at "
            f"{self.res}p from {self.workdir}, step {self.step})")

  def encode(self, params, images):
    """images [B, (T,) H, W, 3] in [-1, 1] -> z [B, num_tokens, c] float32."""
    z = self.model.apply({"params": params}, images, method="encode")["z"]
    return z[:, :self.num_tokens].astype(jnp.float32)

  def decode(self, params, z):
    """z [B, num_tokens, c] -> images [B, (T,) H, W, 3] (clipped to [-1, 1])."""
    if self.num_tokens != self.all_codes:  # Masked ViTok: pad with the token
      pad = jnp.broadcast_to(params["mask_token"].astype(z.dtype),
                             (z.shape[0], self.all_codes - self.num_tokens,
                              z.shape[-1]))
      z = jnp.concatenate([z, pad], axis=1)
    x = self.model.apply({"params": params}, z, self.grid, method="decode")
    x = x if self.frames > 1 else x[:, 0]
    return jnp.clip(x, -1.0, 1.0)

  @classmethod
  def load(cls, workdir: str, step: Optional[int] = None, *,
           res: Optional[int] = None, use_ema: bool = True,
           key: str = "config.tokenizer.workdir") -> "Codec":
    """Restores a tokenizer run. Errors name `key` and the path."""
    if not workdir:
      raise ValueError(f"{key} is not set: point it at a trained ViTok run "
                       "(python -m vitok_jax.train --config=configs/vitok/...)")
    path = fileio.abspath(workdir)
    try:
      step_path, step = ckpt_lib.step_dir(path, step)
    except FileNotFoundError as e:
      raise FileNotFoundError(
          f"{key}={workdir!r}: no ViTok checkpoint there ({e}); train one "
          "with python -m vitok_jax.train --config=configs/vitok/... "
          f"--workdir={workdir}") from e
    config = _stored_config(step_path)
    if config.get("trainer", "tokenizer") != "tokenizer":
      raise ValueError(f"{key}={workdir!r} is a {config.get('trainer')!r} run, "
                       "not a ViTok tokenizer run")
    model = vitok.from_config(config["model"])
    state = ckpt_lib.load_state_tree(step_path)
    use_ema = use_ema and "params_ema" in state
    params = jax.tree.map(jnp.asarray,
                          state["params_ema"] if use_ema else state["params"])
    res = res or config["input"]["res"]
    frames = config["input"].get("frames", 1) or 1
    logging.info("Tokenizer %s step %d (%s params)", path, step,
                 "EMA" if use_ema else "raw")
    return cls(model, params, res, frames, path, step)


def _stored_config(step_path: str) -> dict:
  """The config a training run saved next to its state (Orbax's JsonSave
  writes it as <step>/config/metadata)."""
  f = fileio.join(step_path, "config", "metadata")
  if not fileio.isfile(f):
    raise FileNotFoundError(f"{step_path} holds no training config ({f})")
  return fileio.read_json(f)


def check_matches(codec_tokens: int, codec_channels: int, want_tokens,
                  want_channels, what: str) -> None:
  """Raises naming both sides when a DiT config does not fit its latents."""
  if want_tokens and int(want_tokens) != codec_tokens or (
      want_channels and int(want_channels) != codec_channels):
    raise ValueError(
        f"The DiT config wants latents of {want_tokens} tokens x "
        f"{want_channels} channels (config.latents.tokens, "
        f"config.latents.channels), but {what} gives {codec_tokens} tokens x "
        f"{codec_channels} channels")


# --------------------------------------------------------------------------
# The pin: a DiT run decodes with the tokenizer step it trained on
# --------------------------------------------------------------------------
PIN_FILE = "tokenizer.json"


def pin_path(dit_workdir: str) -> str:
  return fileio.join(fileio.abspath(dit_workdir), PIN_FILE)


def read_pin(dit_workdir: Optional[str]) -> Optional[dict]:
  """{"workdir", "step"} of the tokenizer a DiT run was started on."""
  if not dit_workdir or not fileio.exists(pin_path(dit_workdir)):
    return None
  return fileio.read_json(pin_path(dit_workdir))


def pin_tokenizer(dit_workdir: str, codec: "Codec") -> None:
  """At a run's first start: the tokenizer's workdir and step, so that its
  resume, evaluation, sampling and export decode with the tokenizer the run
  trained on even after the tokenizer run moves on (process 0 writes)."""
  if read_pin(dit_workdir) is None and multihost.is_main():
    fileio.makedirs(fileio.abspath(dit_workdir))
    fileio.write_json(pin_path(dit_workdir), dict(workdir=codec.workdir,
                                                  step=int(codec.step)))


def _refuse(what: str, theirs, ours, source: str) -> None:
  raise ValueError(
      f"The tokenizer's {what} differs: {source} has {theirs!r}, but this "
      f"run would use {ours!r}. A DiT decodes only with the tokenizer it was "
      "trained on: set config.tokenizer.workdir/step to match, or start a "
      "new run.")


def load_pinned(config, dit_workdir: Optional[str] = None) -> "Codec":
  """The frozen ViTok, checked against what the DiT config wants, against
  the run's pin (dit_workdir/tokenizer.json: its step, not the tokenizer
  run's latest) and against the shards' meta.json."""
  tc = config.tokenizer
  meta = None
  workdir, step = tc.workdir, tc.step
  if config.latents.source.startswith("shards:"):
    from vitok_jax.data import latent_shards  # pylint: disable=g-import-not-at-top
    meta = latent_shards.read_meta(config.latents.source[len("shards:"):])
    workdir = workdir or meta["tokenizer"]
    step = int(meta["step"]) if step is None else step
  pin = read_pin(dit_workdir)
  if pin is not None:
    where = pin_path(dit_workdir)
    if workdir and fileio.abspath(workdir) != pin["workdir"]:
      _refuse("workdir", pin["workdir"], fileio.abspath(workdir), where)
    if step is not None and int(step) != int(pin["step"]):
      _refuse("step", int(pin["step"]), int(step), where)
    workdir, step = pin["workdir"], int(pin["step"])
  elif dit_workdir is not None:
    logging.warning("%s has no %s (a run started before tokenizers were "
                    "pinned): using the tokenizer's %s", dit_workdir,
                    PIN_FILE, f"step {step}" if step is not None else
                    "latest step")
  codec = Codec.load(workdir, step, res=config.input.res,
                     use_ema=tc.use_ema)
  if meta is not None:
    shards_dir = config.latents.source[len("shards:"):]
    if fileio.abspath(meta["tokenizer"]) != codec.workdir:
      _refuse("workdir", meta["tokenizer"], codec.workdir,
              f"{shards_dir}/meta.json")
    if int(meta["step"]) != int(codec.step):
      _refuse("step", int(meta["step"]), int(codec.step),
              f"{shards_dir}/meta.json")
  check_matches(codec.num_tokens, codec.channels,
                            config.latents.tokens, config.latents.channels,
                            f"the tokenizer {codec.workdir} at "
                            f"{config.input.res}p")
  if meta is not None:
    check_matches(int(meta["tokens"]), int(meta["channels"]),
                              codec.num_tokens, codec.channels,
                              f"the shards in {config.latents.source[7:]}")
  return codec
