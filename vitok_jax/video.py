"""Video clips: decoding (PyAV), clip sampling at a target fps, and the
spatial crops of training and evaluation (paper §3.2: 16 frames at 8 fps).

A clip of T frames at `fps` from a video at `src_fps` takes the source frames
start + round(k * src_fps / fps), k = 0 .. T-1 (every frame again when the
source is slower than `fps`); training picks the start at random, evaluation
centres the clip in the video. Frames are resized (shorter side to `res`) and
cropped: one random crop and one flip for the whole clip in training, the
centre crop in evaluation. A video with fewer frames than a clip spans, or
one that does not decode, raises ValueError; the input pipeline turns that
into a skipped, counted record.
"""
import math
from typing import Optional

import numpy as np
from PIL import Image

from vitok_jax import fileio

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")


def clip_indices(num_frames: int, src_fps: float, t: int, fps: float,
                 rng: Optional[np.random.Generator]) -> np.ndarray:
  """Source frame indices of a T-frame clip at `fps` (random start if rng)."""
  step = src_fps / fps if fps else 1.0
  span = int(round((t - 1) * step)) + 1
  if num_frames < span:
    raise ValueError(f"too short: {num_frames} frames at {src_fps:g} fps, a "
                     f"clip of {t} frames at {fps:g} fps needs {span}")
  last_start = num_frames - span
  start = (int(rng.integers(0, last_start + 1)) if rng is not None
           else last_start // 2)
  return start + np.round(np.arange(t) * step).astype(np.int64)


def decode(path: str, t: int, fps: float,
           rng: Optional[np.random.Generator], seek: bool = True) -> np.ndarray:
  """uint8 [T, H, W, 3] of a clip of the video file at `path`.

  With `seek`, decoding starts at the keyframe before the clip (frames are
  placed by their timestamps) instead of at the start of the file; a file
  whose timestamps do not give every frame of the clip is decoded again
  from the start.
  """
  import av  # pylint: disable=g-import-not-at-top
  with av.open(fileio.local_or_file(path)) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    src_fps = float(stream.average_rate or stream.guessed_rate or 25)
    n = stream.frames
    if n <= 0:  # the container does not say: count by decoding
      n = sum(1 for _ in container.decode(stream))
      container.seek(0)
    idx = clip_indices(n, src_fps, t, fps, rng)
    wanted = set(idx.tolist())
    frames = {}
    if seek and idx[0] > 0 and stream.time_base:
      frames = _decode_by_timestamp(container, stream, src_fps, idx, wanted)
      if len(frames) < len(wanted):
        container.seek(0)
        frames = {}
    if not frames:
      for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
          frames[i] = frame.to_ndarray(format="rgb24")
        if i >= idx[-1]:
          break
  if len(frames) < len(wanted):
    raise ValueError(f"decoded {len(frames)} of the {len(wanted)} frames the "
                     f"clip needs (the container said {n} frames)")
  return np.stack([frames[i] for i in idx])


def _decode_by_timestamp(container, stream, src_fps, idx, wanted) -> dict:
  """Seeks to the keyframe at or before frame idx[0] and decodes up to
  idx[-1], indexing frames by presentation time."""
  tb = float(stream.time_base)
  start = stream.start_time or 0
  container.seek(int(start + idx[0] / src_fps / tb), stream=stream,
                 backward=True, any_frame=False)
  frames = {}
  for frame in container.decode(stream):
    if frame.pts is None:
      return {}
    i = int(round((frame.pts - start) * tb * src_fps))
    if i in wanted:
      frames[i] = frame.to_ndarray(format="rgb24")
    if i >= idx[-1]:
      break
  return frames


def from_frames(frames: np.ndarray, src_fps: float, t: int, fps: float,
                rng: Optional[np.random.Generator]) -> np.ndarray:
  """A clip out of an already decoded video [N, H, W, 3] (TFDS)."""
  return np.asarray(frames)[clip_indices(len(frames), src_fps, t, fps, rng)]


def resize_and_crop(clip: np.ndarray, res: int,
                    rng: Optional[np.random.Generator],
                    flip: bool = False) -> np.ndarray:
  """Shorter side to `res`, then a res x res crop (random if rng, else
  centred) and, in training, a random horizontal flip; same for all frames."""
  _, h, w, _ = clip.shape
  s = res / min(h, w)
  nh, nw = max(res, int(math.ceil(h * s - 1e-6))), max(res, int(math.ceil(
      w * s - 1e-6)))
  if rng is not None:
    top, left = int(rng.integers(0, nh - res + 1)), int(rng.integers(
        0, nw - res + 1))
  else:
    top, left = (nh - res) // 2, (nw - res) // 2
  out = np.stack([np.asarray(Image.fromarray(f).resize(
      (nw, nh), Image.BICUBIC, reducing_gap=3.0))[top:top + res,
                                                  left:left + res]
                  for f in clip])
  if flip and rng is not None and rng.random() < 0.5:
    out = out[:, :, ::-1]
  return np.ascontiguousarray(out)


def pan_zoom(photo: np.ndarray, t: int, rng: Optional[np.random.Generator],
             size: int = 160) -> np.ndarray:
  """A T-frame clip [T, size, size, 3] of a camera moving over a photo: a
  window that pans along a straight line and zooms in or out, so that the
  motion between frames is real (parallax-free) photo content. With rng
  None the path is fixed (evaluation)."""
  h, w = photo.shape[:2]
  r = rng if rng is not None else np.random.default_rng(0)
  s0, s1 = r.uniform(0.45, 0.8, 2) * min(h, w)  # window side, start and end
  cy0, cx0, cy1, cx1 = r.uniform(0, 1, 4)
  frames = []
  for k in range(t):
    a = k / max(t - 1, 1)
    side = s0 + a * (s1 - s0)
    cy = side / 2 + ((1 - a) * cy0 + a * cy1) * (h - side)
    cx = side / 2 + ((1 - a) * cx0 + a * cx1) * (w - side)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    frames.append(np.asarray(Image.fromarray(photo).resize(
        (size, size), Image.BICUBIC, box=box)))
  return np.stack(frames)
