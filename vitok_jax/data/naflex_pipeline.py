"""grain pipelines of NaFlex patch sequences (config.input.naflex = True).

The same sources, shuffling, sharding over processes, bad-record skipping and
checkpointable iterators as input_pipeline; only the per-example view differs:
instead of a square crop, each example is an image at (about) its own aspect
ratio as a padded patch sequence {"patches", "coords", "valid"} (data/naflex.py
states the contract), so that batches of mixed sizes and aspect ratios have one
shape.

  * training: a random crop of aspect ratio (width / height) log-uniform in
    input.naflex_aspect and area a uniform fraction input.naflex_area of the
    image, a random flip, then NaFlex's resize to input.max_patches; with
    either range set to () the whole image (its native aspect ratio, only the
    max_patches cap);
  * evaluation: the whole image at its native aspect ratio, NaFlex-resized to
    input.max_patches, no crop.

Videos (input.frames = T > 1): a clip of T frames at input.fps (training: a
random start; evaluation: the centred clip, one per video), the same crop and
flip in every frame, NaFlex's resize with the T / q tubelets sharing
max_patches. The patch size and tubelet belong to the model, so the caller
passes them.

The held-out demo photos (data="heldout") are cut into tiles of each photo's
own aspect ratio here (demo_sources.HeldOutPhotos(native_aspect=True)), not
into squares.
"""
import logging
import math
from typing import Optional

import grain
import jax
import numpy as np

from vitok_jax.data import demo_sources
from vitok_jax.data import input_pipeline as ip
from vitok_jax.data import naflex
from vitok_jax.data import preprocess as ops

# Without an aspect range (native training) a more elongated image than this
# is squeezed to fit the loss canvas (naflex.canvas_grid).
MAX_NATIVE_ASPECT = 4.0


def source_of(config):
  """input_pipeline.source_of, except that the held-out demo photos are cut
  into tiles of each photo's own aspect ratio rather than squares."""
  if config.data == "heldout" and config.frames == 1:
    return demo_sources.HeldOutPhotos(native_aspect=True)
  return ip.source_of(config)


def crop_ranges(config):
  """(aspect, area) of the training crops, or None for the whole image."""
  aspect, area = tuple(config.naflex_aspect), tuple(config.naflex_area)
  if not aspect or not area:
    return None
  if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
    raise ValueError(f"config.input.naflex_aspect={aspect!r}: expected "
                     "(lo, hi) with 0 < lo <= hi, or ()")
  if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
    raise ValueError(f"config.input.naflex_area={area!r}: expected (lo, hi) "
                     "with 0 < lo <= hi <= 1, or ()")
  return aspect, area


def canvas_side(config, patch: int, tubelet: int = 1) -> int:
  """Side in pixels of the square canvas the losses un-pack training rows to
  (LPIPS, the discriminator): it holds every training grid."""
  ranges = crop_ranges(config)
  r = (max(ranges[0][1], 1 / ranges[0][0]) if ranges else MAX_NATIVE_ASPECT)
  budget = naflex.spatial_budget(config.frames, tubelet, config.max_patches)
  # The crop's aspect is off by rounding to whole pixels; a patch of margin.
  return (naflex.canvas_grid(budget, r) + 1) * patch


def _sequence(img_uint8, config, patch: int, tubelet: int, max_grid=None):
  img = naflex.resize_to_sequence(img_uint8, patch, config.max_patches,
                                  tubelet, max_grid)
  patches, coords, valid = naflex.patchify_to_sequence(
      ops.value_range(img), patch, tubelet, config.max_patches)
  return dict(patches=patches, coords=coords, valid=valid)


def _pixels(source, rec, config, rng):
  """A record's image, or its clip [T, H, W, 3] at the video's own size (rng:
  a random start; None: the centred clip); a BadRecord for a video too short
  or unreadable."""
  if "video" not in rec:
    return rec["image"]
  try:
    return source.clip(rec["video"], config.frames, ip.clip_fps(config), rng)
  except Exception as e:  # pylint: disable=broad-except
    return ip.BadRecord(rec["where"], f"{type(e).__name__}: {e}")


class TrainView:
  """A record as NaFlex training sees it (crop, flip, resize, patchify). A
  class: grain workers unpickle it. `source` decodes clips (videos only)."""

  def __init__(self, config, patch: int, tubelet: int = 1, source=None):
    self.config, self.patch, self.tubelet = config, patch, tubelet
    self.source = source
    self.ranges = crop_ranges(config)
    self.max_grid = canvas_side(config, patch, tubelet) // patch

  def __call__(self, rec, rng):
    if isinstance(rec, ip.BadRecord):
      return rec
    img = _pixels(self.source, rec, self.config, rng)
    if isinstance(img, ip.BadRecord):
      return img
    if self.ranges:
      img = naflex.random_aspect_crop(img, rng, *self.ranges)
    if self.config.flip:
      img = naflex.random_flip(img, rng)
    out = _sequence(img, self.config, self.patch, self.tubelet,
                    self.max_grid)
    return dict(out, label=rec["label"])


def make_train_dataset(config, seed: int, patch: int, tubelet: int = 1
                       ) -> grain.IterDataset:
  """Infinite, shuffled, augmented; this process's share of each batch:
  {"patches": [b, N, q*p*p*3] float32 in [-1, 1], "coords": [b, N, 3] int32,
  "valid": [b, N] bool, "label": [b] int32, "skipped": [b] int32}."""
  # pylint: disable=protected-access
  local_batch = ip._check_batch(config.batch_size)
  source = source_of(config)
  ds = grain.MapDataset.source(ip.CheckedSource(source))
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.random_map(TrainView(config, patch, tubelet, source),
                     seed=seed + 1)
  it_ds = ip.SkipBadRecords(ds.to_iter_dataset(), max_in_a_row=len(source))
  it_ds = it_ds.batch(local_batch, drop_remainder=True)
  if config.num_workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.num_workers))
  return it_ds


class EvalView:
  """One evaluation row: the whole image (a video's centred clip),
  NaFlex-resized; {"patches", "coords", "valid", "label", "index"} or a
  BadRecord."""

  def __init__(self, config, patch: int, tubelet: int, pid: int, nproc: int,
               source=None):
    self.config, self.patch, self.tubelet = config, patch, tubelet
    self.pid, self.nproc, self.source = pid, nproc, source

  def __call__(self, j, rec):
    if isinstance(rec, ip.BadRecord):
      return rec
    img = _pixels(self.source, rec, self.config, None)
    if isinstance(img, ip.BadRecord):
      return img
    out = _sequence(img, self.config, self.patch, self.tubelet)
    return dict(out, label=rec["label"], index=self.pid + j * self.nproc)


def make_eval_dataset(config, batch_size: int, patch: int, tubelet: int = 1,
                      num_examples: Optional[int] = None,
                      subset_seed: Optional[int] = None):
  """Deterministic, as input_pipeline.make_eval_dataset (the same rows per
  process, the same padding and masking of the last batch, unreadable records
  left out), but of sequences: {"patches", "coords", "valid", "label",
  "mask": [b] bool, "index": [b] int64}; a padding row has no valid patch."""
  # pylint: disable=protected-access
  local_batch = ip._check_batch(batch_size)
  source = source_of(config)
  total = len(source)
  n = total if num_examples is None else min(num_examples, total)
  pid, nproc = jax.process_index(), jax.process_count()
  rows = ip._Rows(ip.CheckedSource(source),
                  ip.subset_rows(total, n, subset_seed))
  ds = grain.MapDataset.source(rows)[pid::nproc].map_with_index(
      EvalView(config, patch, tubelet, pid, nproc, source))
  it_ds = ds.to_iter_dataset()
  if config.num_workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.num_workers))
  it = (r for r in it_ds if not _bad(r))
  num_batches = math.ceil(math.ceil(n / nproc) / local_batch)
  big_n, d = config.max_patches, tubelet * patch * patch * 3
  blank = dict(patches=np.zeros((big_n, d), np.float32),
               coords=np.zeros((big_n, 3), np.int32),
               valid=np.zeros((big_n,), bool), label=np.int32(-1), index=-1)
  for _ in range(num_batches):
    recs = [rec for _, rec in zip(range(local_batch), it)]
    pad = local_batch - len(recs)
    recs_padded = recs + [blank] * pad
    batch = {k: np.stack([r[k] for r in recs_padded])
             for k in ("patches", "coords", "valid")}
    batch["label"] = np.asarray([r["label"] for r in recs_padded], np.int32)
    batch["index"] = np.asarray([r["index"] for r in recs_padded], np.int64)
    batch["mask"] = np.arange(local_batch) < len(recs)
    yield batch


def _bad(rec) -> bool:
  if isinstance(rec, ip.BadRecord):
    logging.warning("Leaving out an unreadable evaluation record %s (%s)",
                    rec.where, rec.error)
    return True
  return False
