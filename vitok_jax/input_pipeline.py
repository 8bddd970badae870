"""grain input pipelines.

Sources, named by a string in `config.input.data`:
  * "tfds:<name>[:<split>]"  a prepared TFDS dataset, random access through
                             `tfds.data_source` (no TensorFlow needed), e.g.
                             "tfds:imagenet2012:train", "tfds:coco/2017:validation";
                             with input.frames > 1 a video dataset
                             ("tfds:ucf101:train", its `video_key` frames at
                             `src_fps`);
  * "folder:<path>"          every .jpg/.jpeg/.png/.webp/.bmp below path; with
                             input.frames > 1 every .mp4/.webm/.avi/.mkv/.mov
                             (decoded with PyAV);
  * "embedded"               real photos shipped inside scikit-image (no
                             network, the default of `:runlocal` and the demo);
                             with input.frames > 1, pans and zooms over them
                             (and so for "heldout");
  * "heldout"                other real photos, never in "embedded": the ones
                             scikit-learn and matplotlib ship, cut into tiles
                             (the demo's evaluation data).

Videos (input.frames = T > 1): clips of T frames at input.fps (vitok_jax/
video.py), shorter side resized, one random crop and flip per clip in
training, centred clip and crop in evaluation; a video that is too short or
does not decode is skipped and counted like an unreadable image.

Training: random-resized crop (or `crop="center"`), random flip, values in
[-1, 1]; evaluation:
resize shorter side + centre crop. A record that does not decode (truncated,
empty, not an image) is skipped, logged with its path and counted: each
training batch carries how many records were skipped to fill it. Each
process reads its own 1/n of the records and builds its share of the global
batch; the iterator state goes into the checkpoint so that a resumed run
continues with the same batches.
"""
import logging
import os
from typing import List, NamedTuple, Optional

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from vitok_jax import config_utils
from vitok_jax import fileio
from vitok_jax import video
from vitok_jax.pp import ops

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EMBEDDED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket",
                   "hubble_deep_field", "immunohistochemistry", "retina",
                   "stereo_motorcycle", "colorwheel")


# --------------------------------------------------------------------------
# Sources: random-access sequences of uint8 images (or dicts holding one)
# --------------------------------------------------------------------------
class EmbeddedPhotos:
  """The photos scikit-image ships, held in memory (uint8 [H, W, 3])."""

  def __init__(self, names=EMBEDDED_PHOTOS):
    import skimage.data  # pylint: disable=g-import-not-at-top
    self.images = []
    for n in names:
      img = getattr(skimage.data, n)()
      img = img[0] if isinstance(img, tuple) else img  # stereo pair
      self.images.append(ops.to_rgb_uint8(img))

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return self.images[i]

  def label(self, i) -> int:  # the class of a photo is the photo
    return i


class HeldOutPhotos:
  """Photos that scikit-learn and matplotlib ship (none is in EmbeddedPhotos),
  each cut into non-overlapping square tiles of half its shorter side.

  Tiles give 16 evaluation images out of 3 photos, at about the scale of the
  training crops of the embedded photos (random crops of 50-100% of a photo).
  """

  def __init__(self):
    import matplotlib  # pylint: disable=g-import-not-at-top
    import sklearn  # pylint: disable=g-import-not-at-top
    files = [
        os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images",
                     name) for name in ("china.jpg", "flower.jpg")]
    files.append(os.path.join(matplotlib.get_data_path(), "sample_data",
                              "grace_hopper.jpg"))
    self.images, self.photo = [], []
    for k, f in enumerate(files):
      with Image.open(f) as im:
        img = ops.pil_to_rgb_uint8(im)
      s = min(img.shape[:2]) // 2
      for top in range(0, img.shape[0] - s + 1, s):
        for left in range(0, img.shape[1] - s + 1, s):
          self.images.append(img[top:top + s, left:left + s])
          self.photo.append(k)

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return self.images[i]

  def label(self, i) -> int:  # the photo a tile was cut from
    return self.photo[i]


class FolderImages:
  """Every image file below a folder, decoded on access. The class of a file
  is its top-level subfolder (ImageNet's layout: root/<class>/<file>), in
  sorted order; files directly in root have no class (-1)."""
  is_video = False
  EXTS = IMAGE_EXTS

  def __init__(self, root: str):
    if not fileio.isdir(root):
      raise FileNotFoundError(f"config.input.data: image folder {root!r} does "
                              "not exist")
    self.files: List[str] = [
        f for f in fileio.rglob(root)
        if "." in fileio.basename(f)
        and "." + f.rsplit(".", 1)[-1].lower() in self.EXTS]
    if not self.files:
      raise FileNotFoundError(f"config.input.data: no {self.EXTS} "
                              f"{'videos' if self.is_video else 'images'} "
                              f"below {root!r}")
    tops = [fileio.relative_parts(f, root) for f in self.files]
    self.classes = sorted({p[0] for p in tops if len(p) > 1})
    index = {c: k for k, c in enumerate(self.classes)}
    self.labels = [index[p[0]] if len(p) > 1 else -1 for p in tops]

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    with Image.open(fileio.local_or_file(self.files[i])) as im:
      im.load()  # decode now: a truncated file raises here
      return ops.pil_to_rgb_uint8(im)

  def describe(self, i) -> str:
    return self.files[i]

  def label(self, i) -> int:
    return self.labels[i]


class TfdsImages:
  """A prepared TFDS dataset through `tfds.data_source` (array_record)."""

  def __init__(self, name: str, split: str, data_dir=None,
               image_key: str = "image"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(
          f"config.input.data: TFDS dataset {name!r} split {split!r} is not "
          f"available in data_dir={data_dir or tfds.core.constants.DATA_DIR!r} "
          f"(prepare it with `tfds build {name} --file_format=array_record`): "
          f"{type(e).__name__}: {e}") from e
    self.image_key = image_key

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return self.source[i][self.image_key]

  def label(self, i) -> int:
    return int(self.source[i].get("label", -1))


class FolderVideos(FolderImages):
  """Every video file below a folder (classes: top-level subfolders). Items
  are paths: clips are decoded where they are sampled (video.decode)."""
  is_video = True
  EXTS = video.VIDEO_EXTS

  def __getitem__(self, i):
    return self.files[i]

  def clip(self, ref, t, fps, rng):
    return video.decode(ref, t, fps, rng)


class TfdsVideos(TfdsImages):
  """A prepared TFDS video dataset (e.g. ucf101): all frames per record."""
  is_video = True

  def __init__(self, name, split, data_dir=None, video_key="video",
               src_fps: float = 25.0):
    super().__init__(name, split, data_dir, video_key)
    self.src_fps = src_fps

  def clip(self, ref, t, fps, rng):
    return video.from_frames(ref, self.src_fps, t, fps, rng)


class PhotoPans:
  """Videos without files: a camera panning and zooming over each photo of
  a photo source (video.pan_zoom), a new path per sample in training, a
  fixed one in evaluation. The class of a clip is its photo's."""
  is_video = True

  def __init__(self, photos):
    self.photos = photos

  def __len__(self):
    return len(self.photos)

  def __getitem__(self, i):
    return i

  def label(self, i) -> int:
    return self.photos.label(i)

  def describe(self, i) -> str:
    return f"pan over photo {i}"

  def clip(self, ref, t, fps, rng):
    del fps  # a camera path has no frame rate of its own
    return video.pan_zoom(self.photos[ref], t, rng)


def get_source(data: str, data_dir=None, image_key="image", frames: int = 1,
               video_key: str = "video", src_fps: float = 25.0):
  """Parses a source string (see the module docstring)."""
  if data in ("embedded", "heldout") and frames > 1:
    return PhotoPans(EmbeddedPhotos() if data == "embedded" else
                     HeldOutPhotos())
  if data == "embedded":
    return EmbeddedPhotos()
  if data == "heldout":
    return HeldOutPhotos()
  kind, _, rest = data.partition(":")
  if kind == "folder" and rest:
    cls = FolderVideos if frames > 1 else FolderImages
    return cls(fileio.abspath(rest))
  if kind == "tfds" and rest:
    name, _, split = rest.partition(":")
    if frames > 1:
      return TfdsVideos(name, split or "train", data_dir, video_key, src_fps)
    return TfdsImages(name, split or "train", data_dir, image_key)
  raise ValueError(f"config.input.data={data!r}: expected 'embedded', "
                   "'heldout', 'folder:<path>' or 'tfds:<name>[:<split>]'")


# --------------------------------------------------------------------------
# Bad records: skipped and counted, never a crash mid-run
# --------------------------------------------------------------------------
class BadRecord(NamedTuple):
  where: str  # the file, or "record i" of a source without paths
  error: str


class CheckedSource:
  """Records {"image": uint8 [H, W, 3], "label": int32 (-1: no class)}; an
  unreadable one comes back as a BadRecord instead of raising."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def where(self, i) -> str:
    return (self.source.describe(i) if hasattr(self.source, "describe")
            else f"record {i}")

  def __getitem__(self, i):
    try:
      label = self.source.label(i) if hasattr(self.source, "label") else -1
      if getattr(self.source, "is_video", False):  # decoded when sampled
        return {"video": self.source[i], "label": np.int32(label),
                "where": self.where(i)}
      return {"image": ops.to_rgb_uint8(self.source[i]),
              "label": np.int32(label)}
    except Exception as e:  # pylint: disable=broad-except
      where = (self.source.describe(i) if hasattr(self.source, "describe")
               else f"record {i}")
      return BadRecord(where, f"{type(e).__name__}: {e}")


class _SkipBadIterator(grain.DatasetIterator):
  """Drops BadRecords; each good element says how many it replaced."""

  def __init__(self, parent, max_in_a_row: int):
    super().__init__(parent)
    self._max_in_a_row = max_in_a_row

  def __next__(self):
    skipped = 0
    while True:
      rec = next(self._parent)
      if not isinstance(rec, BadRecord):
        return {**rec, "skipped": np.int32(skipped)}
      skipped += 1
      logging.warning("Skipping an unreadable training record %s (%s)",
                      rec.where, rec.error)
      if skipped > self._max_in_a_row:
        raise ValueError(f"config.input.data: {skipped} unreadable records in "
                         f"a row (the last: {rec.where}); is any record good?")

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class SkipBadRecords(grain.IterDataset):
  """IterDataset of {"image", "label", "skipped"} from one of records or
  BadRecords."""

  def __init__(self, parent, max_in_a_row: int):
    super().__init__(parent)
    self._max_in_a_row = max_in_a_row

  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__(), self._max_in_a_row)


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------
def _check_batch(global_batch: int) -> int:
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"config.input.batch_size={global_batch} is not divisible "
                     f"by the {n} processes")
  return global_batch // n


def source_of(config):
  """The source config.input (or an evaluator's data config) names."""
  return get_source(config.data, config.get("data_dir") or None,
                    config.get("image_key") or "image",
                    config.get("frames") or 1,
                    config.get("video_key") or "video",
                    config.get("src_fps") or 25.0)


def _video_clip(source, rec, config, rng, train: bool):
  """A record's clip [T, res, res, 3] in [-1, 1], or a BadRecord naming the
  video (too short, unreadable)."""
  try:
    clip = source.clip(rec["video"], config.frames, config.get("fps") or 8.0,
                       rng if train else None)
    clip = video.resize_and_crop(clip, config.res, rng if train else None,
                                 flip=train and config.get("flip", True))
  except Exception as e:  # pylint: disable=broad-except
    return BadRecord(rec["where"], f"{type(e).__name__}: {e}")
  return {"image": ops.value_range(clip), "label": rec["label"]}


def make_train_dataset(config, seed: int) -> grain.IterDataset:
  """Infinite, shuffled, augmented; this process's share of each batch.

  Yields {"image": [b, res, res, 3] (or [b, T, res, res, 3]) float32 in
  [-1, 1], "label": [b] int32 (-1 for a source without classes),
  "skipped": [b] int32 (unreadable records skipped before each example)}.
  """
  local_batch = _check_batch(config.batch_size)
  source = source_of(config)
  res, scale = config.res, tuple(config.get("crop_scale", (0.5, 1.0)))
  flip = config.get("flip", True)
  crop = config.get("crop", "random_resized")
  if crop not in ("random_resized", "center"):
    raise ValueError(f"config.input.crop={crop!r}: expected 'random_resized' "
                     "or 'center'")

  def augment(rec, rng):
    if isinstance(rec, BadRecord):
      return rec
    if "video" in rec:
      return _video_clip(source, rec, config, rng, train=True)
    if crop == "center":  # ADM/DiT: resize + centre crop (+ flip)
      img = ops.center_crop(rec["image"], res)
    else:
      img = ops.random_resized_crop(rec["image"], res, rng, scale)
    if flip:
      img = ops.random_flip(img, rng)
    return dict(rec, image=ops.value_range(img))

  ds = grain.MapDataset.source(CheckedSource(source))
  ds = ds.shuffle(seed=seed).repeat(None)  # reshuffled every epoch
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.random_map(augment, seed=seed + 1)
  it_ds = SkipBadRecords(ds.to_iter_dataset(), max_in_a_row=len(source))
  it_ds = it_ds.batch(local_batch, drop_remainder=True)
  workers = config.get("num_workers", 0)
  if workers:  # needs parsed absl flags and a __main__ guard (train.py has both)
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it_ds


class CountingIterator:
  """Wraps a training iterator of batches; counts the records read and the
  unreadable ones skipped (`skipped`, `read`: this process, since the
  iterator was made) from the per-example counts SkipBadRecords attaches,
  and yields the batches without them. A source without bad records
  (latent shards) needs nothing: its batches count as read. The count
  travels in the batch because grain workers run in other processes.
  Checkpointable like the iterator it wraps."""

  def __init__(self, iterator):
    self._it = iterator
    self.skipped, self.read = 0, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self._it))
    per_example = batch.pop("skipped", None)
    n = len(next(iter(batch.values())))
    bad = 0 if per_example is None else int(np.sum(per_example))
    self.skipped += bad
    self.read += n + bad
    return batch

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def default_config(**overrides):
  """config.input with every key and its default (both trainers start from
  this): `overrides` set a trainer's own defaults."""
  c = ml_collections.ConfigDict(dict(
      data="embedded", data_dir="", image_key="image", res=256, frames=1,
      batch_size=256, crop="random_resized", crop_scale=(0.5, 1.0), flip=True,
      num_workers=0,
      # Videos (frames > 1): clips at fps; TFDS videos are stored as frames
      # under video_key at src_fps.
      fps=8.0, src_fps=25.0, video_key="video",
      # Unreadable records are skipped and counted; above this fraction of
      # the records read the run stops.
      max_bad_fraction=0.01))
  c.update(overrides)
  return c


# The rule of each numeric config.input key (config_utils.check_values).
VALIDATORS = {"input.res": config_utils.POSITIVE,
              "input.frames": config_utils.POSITIVE,
              "input.batch_size": config_utils.POSITIVE,
              "input.num_workers": config_utils.NON_NEGATIVE,
              "input.max_bad_fraction": config_utils.FRACTION}


def check_bad_fraction(skipped: int, read: int, max_fraction: float) -> None:
  """Raises once unreadable records exceed `max_fraction` of those read,
  judged over at least 1000 records (a few bad files early on are noise)."""
  if skipped > max_fraction * max(read, 1000):
    raise ValueError(
        f"{skipped} of {read} training records read so far are unreadable, "
        f"more than config.input.max_bad_fraction={max_fraction} allows; the "
        "log names each one")


def eval_num_examples(config, num_examples=None) -> int:
  """How many examples an evaluation over `config` sees (all processes)."""
  n = len(source_of(config))
  return n if num_examples is None else min(num_examples, n)


class _Rows:
  """Rows `index` of a random-access source, in that order."""

  def __init__(self, parent, index):
    self.parent, self.index = parent, np.asarray(index)

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.parent[int(self.index[i])]


def subset_rows(total: int, num: int, seed: Optional[int]) -> np.ndarray:
  """The source rows an evaluation over `num` of `total` examples reads: the
  first `num`, or with a seed a random subset (kept in source order): the
  first N of a class-sorted folder would be its first few classes."""
  if seed is None or num >= total:
    return np.arange(num)
  return np.sort(np.random.default_rng(seed).choice(total, num,
                                                    replace=False))


def make_eval_dataset(config, batch_size: int, num_examples=None,
                      subset_seed: Optional[int] = None):
  """Deterministic centre crops; the last batch is padded and masked.

  Yields dicts {"image": [b, res, res, 3] float32, "label": [b] int32,
  "mask": [b] bool, "index": [b] int64}: this process's rows of each global
  batch. Process i of N reads examples i, i + N, i + 2N, ... of the first
  `num_examples` (none twice, none missing) -- or, with `subset_seed`, of a
  seeded random subset of num_examples (subset_rows); "index" is each example's
  position among them (-1 for padding), so that order-dependent metrics (the
  IS splits) do not depend on N. An unreadable record is logged and left out
  (masked like padding).
  """
  local_batch = _check_batch(batch_size)
  source = source_of(config)
  n = len(source) if num_examples is None else min(num_examples, len(source))
  res = config.res
  pid, nproc = jax.process_index(), jax.process_count()
  ds = grain.MapDataset.source(_Rows(CheckedSource(source), subset_rows(
      len(source), n, subset_seed)))
  ds = ds[pid::nproc]

  def good(rec):
    if isinstance(rec, BadRecord):
      logging.warning("Leaving out an unreadable evaluation record %s (%s)",
                      rec.where, rec.error)
      return False
    return True

  # Every process yields the same number of batches (collectives need it).
  per_process = -(-n // nproc)
  num_batches = -(-per_process // local_batch)
  def crop(rec):
    if "video" in rec:
      return _video_clip(source, rec, config, None, train=False)
    return {"image": ops.value_range(ops.center_crop(rec["image"], res)),
            "label": rec["label"]}

  it = ((r["image"], r["label"], pid + j * nproc)
        for j, r in ((j, crop(rec)) for j, rec in enumerate(ds) if good(rec))
        if good(r))
  for _ in range(num_batches):
    recs = [rec for _, rec in zip(range(local_batch), it)]
    pad = local_batch - len(recs)
    mask = np.array([True] * len(recs) + [False] * pad)
    frames = config.get("frames") or 1
    blank = np.zeros(((frames,) if frames > 1 else ()) + (res, res, 3),
                     np.float32)
    imgs = [r[0] for r in recs] + [blank] * pad
    labels = [r[1] for r in recs] + [-1] * pad
    index = [r[2] for r in recs] + [-1] * pad
    yield dict(image=np.stack(imgs), label=np.asarray(labels, np.int32),
               mask=mask, index=np.asarray(index, np.int64))
