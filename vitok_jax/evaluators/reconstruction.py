"""Reconstruction evaluator: rPSNR, rSSIM, rFID, rIS over a validation split.

config.evals.<name> fields (default_config() below; every one can be set
from the command line, --config.evals.<name>.<field>=...):
  data:              the keys of config.input to evaluate on (data, res,
                     data_dir, frames, ...); unset ones are the training
                     input's
  batch_size:        global batch (divisible by the mesh size)
  num_examples:      unset = the whole split
  log_steps:         every how many training steps (training loop only);
                     0 = only at the end
  inception_weights: .npz from tools/convert_inception.py; missing -> rFID and
                     rIS are skipped with a warning, PSNR/SSIM still run
  ref_stats:         optional .npz from tools/compute_ref_stats.py (Inception
                     statistics of the originals); otherwise computed here
  label:             how summary lines name the data (default: the name)
  bicubic_baseline:  also score bicubic down/up-sampling through the same
                     number of floats as the code (E = codes x c per frame):
                     <name>/bicubic_rpsnr, <name>/bicubic_rssim
  i3d_weights:       videos: .npz from tools/convert_i3d.py for rFVD (I3D
                     logits of whole clips resized to 224); "random" uses a
                     randomly initialised I3D (tests; flagged in the output
                     as <name>/rfvd_random_i3d = 1); missing -> rFVD skipped

Videos [B, T, H, W, 3] are scored frame-wise. The trainer's `reconstruct`
predict function (params, images) -> reconstructions runs the model in
evaluation mode (z = mean) inside this evaluator's jitted step; params are
whatever the caller passes (the EMA when there is one). `code_floats`
(data config -> floats per frame of the code) serves the bicubic baseline.
Everything heavy runs jitted over the mesh; the host only adds sums. Results
include <name>/reconstruction (originals on top, reconstructions below) and,
for videos, <name>/reconstruction_clips (for a GIF).

On N processes each process reads its own examples (input_pipeline
.make_eval_dataset), reads back only its own rows of the per-example outputs,
adds float64 sums (PSNR, SSIM, counts, Inception/I3D feature sums and outer
products, per-split IS sums) and the sums are added across processes at the
end (parallel/multihost.py): the metrics do not depend on N or on the mesh. Every
process gets the same results; only process 0's rows make the picture.
"""

import jax
import ml_collections
import numpy as np

from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import bicubic
from vitok_jax.evaluators import common
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import ref_stats as ref_stats_lib
from vitok_jax.models import i3d
from vitok_jax.models import inception
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh


NEEDS = ("reconstruct",)


def default_config() -> ml_collections.ConfigDict:
  """Every field of a reconstruction evaluator, with its default."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(dict(
      type="reconstruction", log_steps=0, batch_size=64,
      num_examples=placeholder(int), data=common.data_fields(),
      inception_weights="", ref_stats="", i3d_weights="", label="",
      bicubic_baseline=False))


class Evaluator:

  def __init__(self, name: str, config, *, predict_fns, mesh,
               input_config=None):
    config = common.complete(name, config, default_config())
    self.name = name
    self.label = config.label or name
    self.reconstruct = predict_fns["reconstruct"]
    self.mesh = mesh
    self.data_config = common.data_config(input_config, config.data)
    if not self.data_config.res:
      raise ValueError(f"config.evals.{name}.data needs a 'res'")
    self.batch_size = int(config.batch_size)
    if self.batch_size % mesh.size:
      raise ValueError(f"config.evals.{name}.batch_size={self.batch_size} is "
                       f"not divisible by the {mesh.size} devices")
    self.num_examples = config.num_examples
    self.log_steps = config.log_steps
    self.inception_params = common.load_inception(
        config.inception_weights, mesh, f"evals.{name}: rFID and rIS")
    self.ref_stats = None
    if config.ref_stats:
      ref = ref_stats_lib.load(config.ref_stats)
      self.ref_stats = (ref.mu, ref.sigma)
    self.i3d_params, self.i3d_random = None, False
    frames = self.data_config.frames
    if frames > 1 and config.i3d_weights:
      # At start, not after a whole evaluation pass.
      ref_stats_lib.check_fvd_frames(frames, f"config.evals.{name} (rFVD)")
    if frames > 1:
      self.i3d_params = common.load_i3d(config.i3d_weights, mesh,
                                        f"evals.{name}: rFVD")
      self.i3d_random = config.i3d_weights == "random"
    self.bicubic_floats = None
    if config.bicubic_baseline:
      if "code_floats" not in predict_fns:
        raise ValueError(f"config.evals.{name}.bicubic_baseline needs the "
                         "trainer's code_floats predict function")
      self.bicubic_floats = predict_fns["code_floats"](self.data_config)
    self._step = self._make_step()

  def _make_step(self):
    reconstruct = self.reconstruct
    with_inception = self.inception_params is not None
    need_real_feats = with_inception and self.ref_stats is None
    inc = inception.FIDInceptionV3()

    with_bicubic = self.bicubic_floats is not None
    with_i3d = self.i3d_params is not None

    def step(params, images, inc_params, bicubic_images, i3d_params):
      recon = reconstruct(params, images)
      frames = lambda x: x.reshape((-1,) + x.shape[-3:])
      real_q, fake_q = (metrics.quantize(frames(images)),
                        metrics.quantize(frames(recon)))
      out = dict(recon=recon, psnr=metrics.psnr(real_q, fake_q),
                 ssim=metrics.ssim(real_q, fake_q))
      if with_bicubic:
        bic_q = metrics.quantize(frames(bicubic_images))
        out.update(bicubic_psnr=metrics.psnr(real_q, bic_q),
                   bicubic_ssim=metrics.ssim(real_q, bic_q))
      if with_inception:  # Inception takes [0, 1] uint8-grid images
        out["fake_pool"], out["fake_logits"] = inc.apply(
            {"params": inc_params}, fake_q / 255.0)
        if need_real_feats:
          out["real_pool"], _ = inc.apply({"params": inc_params}, real_q / 255.0)
      if with_i3d:  # whole clips, on the uint8 grid, in [-1, 1]
        clip = lambda q: q.reshape(images.shape) / 127.5 - 1.0
        out["fake_i3d"] = i3d.features(i3d_params, clip(fake_q))
        out["real_i3d"] = i3d.features(i3d_params, clip(real_q))
      return out

    # Inputs arrive as sharded global arrays; per-example outputs stay
    # sharded like the batch: each process reads back its own rows, nothing
    # is gathered onto every device.
    return jax.jit(step, out_shardings=sh.batch_sharding(self.mesh))

  def protocol(self, results: dict) -> str:
    """What the numbers were measured on, with the count: "16 images", or
    for videos the clips and how they were taken (docs/protocols.md)."""
    r = lambda k: results.get(f"{self.name}/{k}")
    d = self.data_config
    frames = d.frames
    if frames == 1:
      return f"{int(r('num_examples') or 0)} images"
    if d.data in ("embedded", "heldout"):  # camera paths: no rate, one each
      return (f"{int(r('num_clips') or 0)} clips of {frames} frames: pans "
              f"over the {d.data} photos at {d.res}px")
    return (f"{int(r('num_clips') or 0)} clips of "
            f"{input_pipeline.describe_clips(d)}, " + str(d.data) +
            (f" ({d.file_list})" if d.file_list else ""))

  def summary(self, results: dict) -> str:
    """One line for people: rPSNR/rSSIM (and rFID) beside the bicubic
    baseline at the same number of floats when it was computed, and the
    protocol with its count."""
    r = lambda k: results.get(f"{self.name}/{k}")
    line = f"{self.label}: rPSNR {r('rpsnr'):.2f} dB"
    if r("bicubic_rpsnr") is not None:
      line += (f" (bicubic at the same E = {int(r('code_floats'))} floats: "
               f"{r('bicubic_rpsnr'):.2f})")
    line += f", rSSIM {r('rssim'):.3f}"
    if r("bicubic_rssim") is not None:
      line += f" (bicubic: {r('bicubic_rssim'):.3f})"
    if r("rfid") is not None:
      line += f", rFID {metrics.format_distance(r('rfid'))}"
    if r("rfvd") is not None:
      line += (f", rFVD {metrics.format_distance(r('rfvd'))}" +
               (" (RANDOM I3D weights)" if r("rfvd_random_i3d") else ""))
    return line + f" [{self.protocol(results)}]"

  def _bicubic(self, images: np.ndarray) -> np.ndarray:
    """This process's rows, bicubic-resampled frame by frame."""
    flat = images.reshape((-1,) + images.shape[-3:])
    return bicubic.reconstruct(flat, self.bicubic_floats).reshape(images.shape)

  def run(self, params, final: bool = False) -> common.Results:
    """final: the same evaluation either way (periodic or last)."""
    del final
    ds = input_pipeline.make_eval_dataset(self.data_config, self.batch_size,
                                          self.num_examples)
    sums = dict(psnr=0.0, ssim=0.0, n=0, bic_psnr=0.0, bic_ssim=0.0)
    fake_stats = real_stats = score = None
    frames = self.data_config.frames
    if self.inception_params is not None:
      fake_stats, real_stats = metrics.GaussianStats(), metrics.GaussianStats()
      total = input_pipeline.eval_num_examples(self.data_config,
                                               self.num_examples) * frames
      score = metrics.InceptionScore(total)
    fvd_fake = fvd_real = None
    if self.i3d_params is not None:
      fvd_fake = metrics.GaussianStats(i3d.NUM_CLASSES)
      fvd_real = metrics.GaussianStats(i3d.NUM_CLASSES)
    picture = clips = None
    batch_sh = sh.batch_sharding(self.mesh)
    for batch in ds:
      images = sh.put_global_batch(batch["image"], batch_sh)
      bic = None
      if self.bicubic_floats is not None:
        bic = sh.put_global_batch(self._bicubic(batch["image"]), batch_sh)
      out = self._step(params, images, self.inception_params, bic,
                       self.i3d_params)
      out = {k: multihost.local_rows(v) for k, v in out.items()}
      mask = batch["mask"]  # this process's rows
      fmask = np.repeat(mask, frames)
      # Frame f of example i is number i * frames + f of the stream.
      findex = (batch["index"][:, None] * frames +
                np.arange(frames)[None]).reshape(-1)[fmask]
      sums["psnr"] += float(np.sum(out["psnr"][fmask], dtype=np.float64))
      sums["ssim"] += float(np.sum(out["ssim"][fmask], dtype=np.float64))
      sums["n"] += int(fmask.sum())
      if bic is not None:
        sums["bic_psnr"] += float(np.sum(out["bicubic_psnr"][fmask],
                                         dtype=np.float64))
        sums["bic_ssim"] += float(np.sum(out["bicubic_ssim"][fmask],
                                         dtype=np.float64))
      if fvd_fake is not None:
        fvd_fake.update(out["fake_i3d"][mask])
        fvd_real.update(out["real_i3d"][mask])
      if fake_stats is not None:
        fake_stats.update(out["fake_pool"][fmask])
        score.update(out["fake_logits"][fmask], index=findex)
        if "real_pool" in out:
          real_stats.update(out["real_pool"][fmask])
      if picture is None:  # this process's first rows (process 0's are shown)
        k = min(8 if batch["image"].ndim == 4 else 4, int(mask.sum()))
        picture = common.comparison_picture(batch["image"][:k],
                                            out["recon"][:k])
        if batch["image"].ndim == 5:  # the clips, for a GIF
          clips = np.stack([batch["image"][:k], out["recon"][:k]])
    sums = multihost.sum_over_processes(sums)
    n = int(round(float(sums["n"])))
    if not n:
      raise ValueError(f"evals.{self.name}: the evaluation data is empty")
    yield f"{self.name}/reconstruction", picture
    if clips is not None:
      yield f"{self.name}/reconstruction_clips", clips
    yield f"{self.name}/rpsnr", float(sums["psnr"]) / n
    yield f"{self.name}/rssim", float(sums["ssim"]) / n
    yield f"{self.name}/num_examples", float(n)  # frames, for videos
    if frames > 1:
      yield f"{self.name}/num_clips", float(n // frames)
    if self.bicubic_floats is not None:
      yield f"{self.name}/bicubic_rpsnr", float(sums["bic_psnr"]) / n
      yield f"{self.name}/bicubic_rssim", float(sums["bic_ssim"]) / n
      yield f"{self.name}/code_floats", float(self.bicubic_floats)
    if fake_stats is not None:
      fake_stats.sum_over_processes()
      score.sum_over_processes()
      ref = self.ref_stats or real_stats.sum_over_processes().mean_cov()
      yield f"{self.name}/rfid", metrics.frechet_distance(
          *fake_stats.mean_cov(), *ref)
      is_mean, is_std = score.result()
      yield f"{self.name}/ris", is_mean
      yield f"{self.name}/ris_std", is_std
    if fvd_fake is not None:
      fvd_fake.sum_over_processes()
      fvd_real.sum_over_processes()
      yield f"{self.name}/rfvd", metrics.frechet_distance(
          *fvd_fake.mean_cov(), *fvd_real.mean_cov())
      yield f"{self.name}/rfvd_random_i3d", float(self.i3d_random)


def code_floats_per_frame(model, data_config) -> int:
  """E / frames: the floats a frame's code holds (codes x c; l_eval codes for
  Masked ViTok)."""
  frames = data_config.frames
  res = data_config.res
  grid = model.token_grid((1, frames, res, res, 3))
  codes = model.num_codes(grid)
  if model.mask_lengths and model.eval_length is not None:
    codes = model.eval_length
  return codes * model.code_channels // frames
