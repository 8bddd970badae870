"""Real data sets as random-access sources: image folders and prepared TFDS
data sets, of images or of videos.

  * FolderImages / FolderVideos: every image (or video) file below a folder;
    the class of a file is its top-level subfolder (ImageNet's layout), and a
    split list (`input.file_list`, UCF-101's trainlist01.txt) restricts it.
  * TfdsImages / TfdsVideos: `tfds.data_source` (array_record, no TensorFlow).

Image sources return uint8 [H, W, 3] (or a decodable object); video sources
return a reference that their `clip` method decodes where the clip is
sampled, so that only the frames a clip needs are ever decoded.
"""
from typing import List

import numpy as np
from PIL import Image

from vitok_jax.data import preprocess as ops
from vitok_jax.data import video
from vitok_jax.io import fileio

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


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


def how_to_prepare(name: str, data_dir=None) -> str:
  """The command that prepares a TFDS data set as array_record files."""
  base = name.split("/")[0].split(":")[0]
  cmd = f"tfds build {base} --file_format=array_record" + (
      f" --data_dir={data_dir}" if data_dir else "")
  if base.startswith("imagenet2012"):
    return ("Prepare it once: download ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar from image-net.org into a folder, then "
            f"`{cmd} --manual_dir=<that folder>` (docs/gpu.md), or train "
            "on a folder of JPEGs with config.input.data=folder:<path>.")
  return f"Prepare it once with `{cmd}` (docs/gpu.md)."


class TfdsImages:
  """A prepared TFDS dataset through `tfds.data_source` (array_record)."""

  def __init__(self, name: str, split: str, data_dir=None,
               image_key: str = "image", decoders=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      # download=False: a job never downloads or prepares a data set (that
      # would start a TensorFlow build on every host); a missing one fails
      # here, saying how to prepare it.
      self.source = tfds.data_source(name, split=split, data_dir=data_dir,
                                     download=False,
                                     **({"decoders": decoders} if decoders
                                        else {}))
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(
          f"config.input.data: TFDS dataset {name!r} split {split!r} is not "
          f"prepared in data_dir={data_dir or tfds.core.constants.DATA_DIR!r}."
          f" {how_to_prepare(name, data_dir)} (tfds: {type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''})") from e
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
