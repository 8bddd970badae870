"""Reconstruction evaluator at native resolution and aspect ratio (NaFlex).

type="reconstruction_native": the `reconstruction` evaluator's job on NaFlex
rows (data/naflex_pipeline.make_eval_dataset: each whole image at its own
aspect ratio, NaFlex-resized to at most `max_patches` patches). Each image is
scored at its own size (evaluators/native.py):

  <name>/rpsnr, rssim        per image on the uint8 grid, averaged over images
  <name>/bicubic_rpsnr, ..   bicubic through each image's own code size
                             (valid tokens x c floats), when bicubic_baseline
  <name>/code_floats         the mean floats per image of those codes
  <name>/padding_fraction    the share of the rows' patches that is padding
  <name>/rfid_native_cc256   rFID of reconstructions vs originals, both
                             resized as native.fid_protocol() says (never
                             named plain `rfid`), when inception_weights

config.evals.<name> fields: as `reconstruction`'s (data, batch_size,
num_examples, log_steps, inception_weights, label, bicubic_baseline) plus
max_patches (unset: the training input's). The trainer's predict functions
`reconstruct_patches` and `geometry` (trainers/naflex.py) serve it.

On N processes each process reads its own images, scores them on the host
and the float64 sums (and Inception statistics) are added across processes:
the numbers do not depend on N or on the mesh. Only process 0's rows make
the picture; only process 0 writes (the callers).
"""
import jax
import ml_collections
import numpy as np

from vitok_jax.data import naflex
from vitok_jax.data import naflex_pipeline
from vitok_jax.evaluators import common
from vitok_jax.evaluators import metrics
from vitok_jax.evaluators import native
from vitok_jax.models import inception
from vitok_jax.parallel import multihost
from vitok_jax.parallel import sharding as sh

NEEDS = ("reconstruct_patches", "geometry")
ROW_KEYS = ("patches", "coords", "valid")


def default_config() -> ml_collections.ConfigDict:
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(dict(
      type="reconstruction_native", log_steps=0, batch_size=64,
      num_examples=placeholder(int), data=common.data_fields(),
      max_patches=placeholder(int), inception_weights="", label="",
      bicubic_baseline=False))


def native_data(input_config, data=None, max_patches=None):
  """The data config of NaFlex evaluation: the training input's (or `data`'s)
  source, as sequences of max_patches (unset: the training input's)."""
  out = common.data_config(input_config, data)
  out.naflex = True
  out.max_patches = int(max_patches or (input_config or {}).get(
      "max_patches", out.max_patches))
  return out


def _rows(batch, mesh) -> tuple:
  """(patches, coords, valid) as global arrays sharded over the batch."""
  return tuple(sh.put_global_batch([batch[k] for k in ROW_KEYS],
                                   sh.batch_sharding(mesh)))


def picture(originals, recons) -> np.ndarray:
  """Images of different sizes, originals on top, reconstructions below,
  each at its own size on a black background."""
  h = max(x.shape[0] for x in originals)
  w = max(x.shape[1] for x in originals)
  pad = lambda x: np.pad(x, ((0, h - x.shape[0]), (0, w - x.shape[1]), (0, 0)),
                         constant_values=-1.0)
  return common.comparison_picture(np.stack([pad(x) for x in originals]),
                                   np.stack([pad(x) for x in recons]))


class Preview:
  """The trainer's reconstruction.png: a fixed set of rows of `data_config`
  (`n` of them, a multiple of the mesh size) through the model."""

  def __init__(self, data_config, n: int, predict_fns, mesh):
    g = predict_fns["geometry"]
    self.patch, self.mesh = g["patch"], mesh
    self.batch = next(iter(naflex_pipeline.make_eval_dataset(
        data_config, n, g["patch"], g["tubelet"], num_examples=n)))
    self.fn = jax.jit(predict_fns["reconstruct_patches"],
                      out_shardings=sh.batch_sharding(mesh))

  def __call__(self, params) -> np.ndarray:
    b = self.batch
    recon = multihost.local_rows(self.fn(params, *_rows(b, self.mesh)))
    # For the picture, clipped to [-1, 1] as the metrics' uint8 grid is.
    recon = np.clip(recon, -1.0, 1.0)
    crop = lambda x: naflex.crop_native(x, b["coords"], b["valid"], self.patch)
    return picture(crop(b["patches"])[:8], crop(recon)[:8])


class Evaluator:

  def __init__(self, name: str, config, *, predict_fns, mesh,
               input_config=None):
    config = common.complete(name, config, default_config())
    self.name, self.label = name, config.label or name
    self.mesh = mesh
    g = predict_fns["geometry"]
    self.patch, self.tubelet = g["patch"], g["tubelet"]
    self.code_channels = g["code_channels"]
    self.data_config = native_data(input_config, config.data,
                                   config.max_patches)
    if self.data_config.frames != 1:
      raise ValueError(f"config.evals.{name}: native evaluation of videos is "
                       "not supported yet (frames must be 1)")
    self.batch_size = int(config.batch_size)
    if self.batch_size % mesh.size:
      raise ValueError(f"config.evals.{name}.batch_size={self.batch_size} is "
                       f"not divisible by the {mesh.size} devices")
    self.num_examples = config.num_examples
    self.log_steps = config.log_steps
    self.bicubic = bool(config.bicubic_baseline)
    self.inception_params = common.load_inception(
        config.inception_weights, mesh, f"evals.{name}: rFID")
    self._recon = jax.jit(predict_fns["reconstruct_patches"],
                          out_shardings=sh.batch_sharding(mesh))
    inc = inception.FIDInceptionV3()
    self._pool = jax.jit(lambda p, x: inc.apply({"params": p}, x)[0],
                         out_shardings=sh.batch_sharding(mesh))

  def protocol(self, results: dict) -> str:
    """What was measured, on how many images."""
    r = lambda k: results.get(f"{self.name}/{k}")
    d = self.data_config
    text = (f"{int(r('num_examples') or 0)} images at native aspect ratio, "
            f"NaFlex <= {d.max_patches} patches of {self.patch}px, "
            f"{d.data}")
    if r(native.fid_key()) is not None:
      text += f"; {native.fid_key()}: {native.fid_protocol()}"
    return text

  def summary(self, results: dict) -> str:
    r = lambda k: results.get(f"{self.name}/{k}")
    line = f"{self.label} (native): rPSNR {r('rpsnr'):.2f} dB"
    if r("bicubic_rpsnr") is not None:
      line += (f" (bicubic at the same floats per image, mean E = "
               f"{r('code_floats'):.0f}: {r('bicubic_rpsnr'):.2f})")
    line += f", rSSIM {r('rssim'):.3f}"
    if r("bicubic_rssim") is not None:
      line += f" (bicubic: {r('bicubic_rssim'):.3f})"
    if r(native.fid_key()) is not None:
      line += (f", {native.fid_key()} "
               f"{metrics.format_distance(r(native.fid_key()))}")
    return line + f" [{self.protocol(results)}]"

  def _fid_pools(self, images, mask):
    """Inception pool features of this process's images (fid_batch's view),
    the batch padded to the local batch size so every process runs the
    same global step."""
    views = np.zeros((len(mask), native.FID_SIDE, native.FID_SIDE, 3),
                     np.float32)
    if images:
      views[:len(images)] = native.fid_batch(images)
    x = sh.put_global_batch(views, sh.batch_sharding(self.mesh))
    return multihost.local_rows(self._pool(self.inception_params, x))[
        :len(images)]

  def run(self, params, final: bool = False) -> common.Results:
    del final  # the same evaluation, periodic or last
    ds = naflex_pipeline.make_eval_dataset(
        self.data_config, self.batch_size, self.patch, self.tubelet,
        self.num_examples)
    keys = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "code_floats")
    sums = dict({k: 0.0 for k in keys}, n=0, valid=0, slots=0)
    with_fid = self.inception_params is not None
    if with_fid:
      fake_stats, real_stats = metrics.GaussianStats(), metrics.GaussianStats()
    pic = None
    for batch in ds:
      recon = multihost.local_rows(
          self._recon(params, *_rows(batch, self.mesh)))
      mask = batch["mask"]  # this process's real rows come first
      rows = {k: batch[k][mask] for k in ROW_KEYS}
      recon = recon[mask]
      scores = native.score_rows(rows["patches"], recon, rows["coords"],
                                 rows["valid"], self.patch,
                                 self.code_channels if self.bicubic else None)
      for k in keys:
        if k in scores:
          sums[k] += float(np.sum(scores[k], dtype=np.float64))
      sums["n"] += int(mask.sum())
      sums["valid"] += int(rows["valid"].sum())
      sums["slots"] += int(rows["valid"].size)
      originals = recons = None
      if with_fid or pic is None:
        originals = naflex.crop_native(rows["patches"], rows["coords"],
                                       rows["valid"], self.patch)
        recons = naflex.crop_native(np.clip(recon, -1, 1), rows["coords"],
                                    rows["valid"], self.patch)
      if with_fid:
        fake_stats.update(self._fid_pools(recons, mask))
        real_stats.update(self._fid_pools(originals, mask))
      if pic is None and originals:
        pic = picture(originals[:8], recons[:8])
    sums = multihost.sum_over_processes(sums)
    n = int(round(float(sums["n"])))
    if not n:
      raise ValueError(f"evals.{self.name}: the evaluation data is empty")
    if pic is not None:
      yield f"{self.name}/reconstruction", pic
    yield f"{self.name}/rpsnr", float(sums["psnr"]) / n
    yield f"{self.name}/rssim", float(sums["ssim"]) / n
    yield f"{self.name}/num_examples", float(n)
    yield f"{self.name}/padding_fraction", 1.0 - float(
        sums["valid"]) / float(sums["slots"])
    if self.bicubic:
      yield f"{self.name}/bicubic_rpsnr", float(sums["bicubic_psnr"]) / n
      yield f"{self.name}/bicubic_rssim", float(sums["bicubic_ssim"]) / n
      yield f"{self.name}/code_floats", float(sums["code_floats"]) / n
    if with_fid:
      fake_stats.sum_over_processes()
      real_stats.sum_over_processes()
      yield f"{self.name}/{native.fid_key()}", metrics.frechet_distance(
          *fake_stats.mean_cov(), *real_stats.mean_cov())
