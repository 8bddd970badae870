"""Video clips: decoding (PyAV), clip sampling at a target fps, and the
spatial crops of training and evaluation (paper §3.2: 16 frames at 8 fps).

A clip of T frames at `fps` from a video at `src_fps` takes the source frames
start + round(k * src_fps / fps), k = 0 .. T-1 (every frame again when the
source is slower than `fps`; fps 0 takes T consecutive frames at the
video's own rate; a file's frames are placed by their timestamps, see
`decode`); training picks the start at random, evaluation places the clip at
a fraction `where` of the possible starts (0.5: centred; several clips per
video spread evenly). Frames are resized (shorter side to `res`) and
cropped: one random crop and one flip for the whole clip in training, the
centre crop in evaluation. A video with fewer frames than a clip spans, or
one that does not decode, raises ValueError; the input pipeline turns that
into a skipped, counted record.
"""
import fractions
import math
from typing import Optional

import numpy as np
from PIL import Image

from vitok_jax.io import fileio

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")


def clip_indices(num_frames: int, src_fps: float, t: int, fps: float,
                 rng: Optional[np.random.Generator],
                 where: float = 0.5) -> np.ndarray:
  """Source frame indices of a T-frame clip at `fps` (fps 0: consecutive
  frames at the native rate). The start is random with rng; without, it sits
  at the fraction `where` of the possible starts (0.5: the centred clip;
  evaluation with several clips per video spreads them evenly)."""
  step = src_fps / fps if fps else 1.0
  span = int(round((t - 1) * step)) + 1
  if num_frames < span:
    raise ValueError(f"too short: {num_frames} frames at {src_fps:g} fps, a "
                     f"clip of {t} frames at {fps:g} fps needs {span}")
  last_start = num_frames - span
  if not 0.0 <= where <= 1.0:
    raise ValueError(f"where={where} must lie in [0, 1]")
  start = (int(rng.integers(0, last_start + 1)) if rng is not None
           else int(math.floor(where * last_start + 1e-9)))
  return start + np.round(np.arange(t) * step).astype(np.int64)


# PyAV opens decoders with slice threading only, which the usual H.264 and
# MPEG-4 files (one slice per frame) cannot use; "AUTO" adds frame threading,
# which shortens a clip when cores are idle but, when grain workers already
# keep every core busy, costs ~10% more CPU on H.264/MPEG-4 ("SLICE" is then
# the cheaper setting; BENCHMARKS.md, video decoding). The frames are the
# same either way (test_video_decode).
THREAD_TYPE = "AUTO"


def decode(path: str, t: int, fps: float,
           rng: Optional[np.random.Generator], seek: bool = True,
           where: float = 0.5) -> np.ndarray:
  """uint8 [T, H, W, 3] of a clip of the video file at `path`.

  Frames are placed by their presentation timestamps on the grid of the
  stream's average rate (slot k at time k / rate): slot k shows the last
  frame whose timestamp rounds to slot k or earlier, as a player would, so a
  variable-frame-rate video repeats a frame over a gap and keeps the last of
  frames that share a slot. Only a stream without timestamps is indexed by
  decode count. With `seek`, decoding starts at the keyframe before the clip
  instead of at the start of the file; both pick the same frames. A file
  whose container does not give its frame count (webm, mkv) is demuxed once
  without decoding to count them, then decoded once. Frames come out upright:
  the display matrix's rotation (phone videos) is applied.
  """
  import av  # pylint: disable=g-import-not-at-top
  with av.open(fileio.local_or_file(path)) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_type = THREAD_TYPE
    rate = stream.average_rate or stream.guessed_rate or fractions.Fraction(25)
    slot = _slot_of_timestamp(stream, rate)
    n = stream.frames
    if n <= 0:  # the container does not say: count packets (no decoding)
      n = _count_frames(container, stream, slot)
      container.seek(0)
    idx = clip_indices(n, float(rate), t, fps, rng, where=where)
    frames = None
    if seek and idx[0] > 0 and slot is not None:
      # The keyframe at or before slot idx[0]'s time shows the frame of that
      # slot or an earlier one; the decoder then gives every later frame.
      target = math.floor(int(idx[0]) / rate / stream.time_base)
      container.seek((stream.start_time or 0) + target, stream=stream,
                     backward=True, any_frame=False)
      frames = _pick(_decoded(container, stream), idx, slot, from_start=False)
      if frames is None:  # no timestamps, or it landed after the clip start
        container.seek(0)
    if frames is None and slot is not None:
      frames = _pick(_decoded(container, stream), idx, slot, from_start=True)
      if frames is None:  # a frame without a timestamp: count them all
        container.seek(0)
    if frames is None:
      frames = _pick(_decoded(container, stream), idx, None, from_start=True)
  got = sum(f is not None for f in frames)
  if got < len(idx):
    raise ValueError(f"decoded {got} of the {len(idx)} frames the clip needs "
                     f"(the container said {n} frames)")
  return np.stack(frames)


def _slot_of_timestamp(stream, rate):
  """pts -> the slot of the grid at `rate` nearest to it (ties go up), in
  exact arithmetic so that every path rounds alike; None without a time
  base."""
  tb, t0 = stream.time_base, stream.start_time or 0
  if not tb:
    return None
  half = fractions.Fraction(1, 2)
  return lambda pts: math.floor((pts - t0) * tb * rate + half)


def _decoded(container, stream):
  """The stream's frames in presentation order (one place that decodes, so
  that tests can count what is decoded)."""
  return container.decode(stream)


def _count_frames(container, stream, slot) -> int:
  """Frame count of a stream whose container does not give it, from one
  demux pass (packets are read, not decoded): the slots that the packets'
  timestamps and durations cover, or, without timestamps, the number of
  packets (one frame each)."""
  count, end = 0, 0
  for packet in container.demux(stream):
    if not packet.size:  # the demuxer's final empty packet
      continue
    count += 1
    if slot is not None and packet.pts is not None:
      end = max(end, slot(packet.pts + packet.duration) if packet.duration
                else slot(packet.pts) + 1)
    else:
      slot = None
  return end if slot is not None else count


def _pick(decoded, idx, slot, from_start: bool):
  """The clip's frames (a list of T arrays; None where the stream ended
  first) out of decoded frames, which are read only up to the first one
  after slot idx[-1]. slot maps a timestamp to its slot; None indexes frames
  by count. Returns None when a frame has no timestamp or when, after a
  seek, the first frame comes after slot idx[0]."""
  idx = idx.tolist()
  out = [None] * len(idx)
  j = 0  # out[:j] are filled
  prev = prev_slot = prev_array = None
  for i, frame in enumerate(decoded):
    if slot is None:
      s = i
    elif frame.pts is None:
      return None
    else:
      s = slot(frame.pts)
    if prev is None and not from_start and s > idx[0]:
      return None
    if prev is not None:
      # prev is on screen until this frame; from the start of the file it
      # also stands for the slots before it, if any.
      while j < len(idx) and idx[j] < s:
        if prev_array is None:
          prev_array = _to_array(prev)
        out[j] = prev_array
        j += 1
      if j == len(idx):
        return out
    # A timestamp that goes back (a broken file) does not reopen slots.
    prev_slot = s if prev is None else max(prev_slot, s)
    prev, prev_array = frame, None
  if prev is not None:  # the last frame: on screen for its duration
    end = prev_slot + 1
    if slot is not None and prev.duration:
      end = max(end, slot(prev.pts + prev.duration))
    while j < len(idx) and idx[j] < end:
      if prev_array is None:
        prev_array = _to_array(prev)
      out[j] = prev_array
      j += 1
  return out


def _to_array(frame) -> np.ndarray:
  """uint8 [H, W, 3] of a frame, upright. frame.rotation is the display
  matrix's angle (FFmpeg's av_display_rotation_get) by which the picture is
  to be turned counterclockwise for display, and np.rot90 turns
  counterclockwise: a phone held upright records a display matrix of -90
  (ffprobe: "rotation of -90.00 degrees", mp4 tkhd matrix [0 1; -1 0]), and
  np.rot90(x, -1) turns its picture clockwise, upright. Angles off a
  multiple of 90 degrees and mirroring are left alone."""
  x = frame.to_ndarray(format="rgb24")
  k, off = divmod(frame.rotation, 90)
  return x if off or not k % 4 else np.rot90(x, k)


# The resize filters of the clip crop (PIL's, antialiased): bicubic (ours,
# as for images) or bilinear (LARP's; docs/protocols.md).
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def resize_and_crop(clip: np.ndarray, res: int,
                    rng: Optional[np.random.Generator],
                    flip: bool = False, filter: str = "bicubic") -> np.ndarray:  # pylint: disable=redefined-builtin
  """Shorter side to `res` (PIL `filter`, antialiased), then a res x res
  crop (random if rng, else centred) and, in training, a random horizontal
  flip; same for all frames."""
  if filter not in FILTERS:
    raise ValueError(f"config.input.video_filter={filter!r}: expected one "
                     f"of {sorted(FILTERS)}")
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
      (nw, nh), FILTERS[filter], reducing_gap=3.0))[top:top + res,
                                                  left:left + res]
                  for f in clip])
  if flip and rng is not None and rng.random() < 0.5:
    out = out[:, :, ::-1]
  return np.ascontiguousarray(out)
