"""PyAV decoding of video clips (vitok_jax/data/video.py): display rotation,
variable frame rates (frames placed by timestamp, seeking or not), files
whose container does not give the frame count, and frame threading. Videos
are tiny synthetic files written with PyAV; each frame carries its number in
black and white blocks, so that a decoded frame says which frame it is."""
import fractions
import struct

import av
import numpy as np
import pytest

from vitok_jax.data import video

H, W, B = 32, 64, 8  # frame size and the side of a block (4 x 8 blocks)


def numbered(n):
  """[n, H, W, 3]: frame j has j in binary in its first row of blocks (8
  bits) over a fixed texture."""
  tex = np.random.default_rng(0).integers(40, 216, (H // B, W // B, 1))
  out = np.repeat(tex[None], n, axis=0)
  for j in range(n):
    out[j, 0] = [[255 * ((j >> b) & 1)] for b in range(W // B)]
  return np.kron(out, np.ones((1, B, B, 3))).astype(np.uint8)


def frame_ids(clip):
  rows = clip[:, :B].reshape(len(clip), B, W // B, B, 3).mean(axis=(1, 3, 4))
  return ((rows > 128) * 2 ** np.arange(W // B)).sum(axis=1)


def write(path, frames, codec="mpeg4", rate=25, pts_ms=None, rotation=None,
          gop=12):
  """A video of `frames`; pts_ms (one per frame) makes it variable-rate."""
  with av.open(str(path), "w") as c:
    s = c.add_stream(codec, rate=rate)
    s.height, s.width = frames.shape[1:3]
    s.pix_fmt, s.bit_rate, s.codec_context.gop_size = "yuv420p", 4_000_000, gop
    if pts_ms is not None:
      s.codec_context.time_base = fractions.Fraction(1, 1000)
    if rotation is not None:
      s.set_display_rotation(rotation)
    for j, f in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(f, format="rgb24")
      if pts_ms is not None:
        frame.pts, frame.time_base = pts_ms[j], fractions.Fraction(1, 1000)
      for p in s.encode(frame):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return str(path)


def stream_info(path):
  with av.open(path) as c:
    s = c.streams.video[0]
    return s.frames, s.average_rate


@pytest.fixture
def count_decoded(monkeypatch):
  """Counts the frames video.decode decodes (and notes the threading)."""
  seen = {"frames": 0, "thread_type": set()}
  decoded = video._decoded

  def counting(container, stream):
    seen["thread_type"].add(str(stream.codec_context.thread_type))
    for frame in decoded(container, stream):
      seen["frames"] += 1
      yield frame

  monkeypatch.setattr(video, "_decoded", counting)
  return seen


def test_numbered_frames_survive_encoding(tmp_path):
  path = write(tmp_path / "v.mp4", numbered(40))
  np.testing.assert_array_equal(frame_ids(video.decode(path, 40, 0.0, None)),
                                np.arange(40))


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_display_rotation_comes_out_upright(tmp_path, rotation):
  # frame.rotation (FFmpeg's av_display_rotation_get) is the counterclockwise
  # turn that displays the picture; the camera stored the upright picture
  # turned the other way.
  rng = np.random.default_rng(1)
  upright = np.kron(rng.integers(0, 255, (6, 4, 3)),  # portrait, 48 x 32
                    np.ones((B, B, 1))).astype(np.uint8)
  stored = np.rot90(upright, -rotation // 90)
  path = write(tmp_path / "v.mp4", np.stack([stored] * 12), rotation=rotation)
  clip = video.decode(path, 4, 0.0, None)
  assert clip.shape == (4,) + upright.shape
  mse = np.mean((clip.astype(np.float64) - upright) ** 2)
  assert 10 * np.log10(255**2 / mse) > 25  # turned wrongly: about 8 dB
  if rotation == -90:
    # -90 is a phone held upright: its mp4 track header matrix (16.16 fixed
    # point) is [0 1; -1 0], the matrix phones write ("rotate=90" in older
    # tools), i.e. shown turned 90 degrees clockwise.
    data = (tmp_path / "v.mp4").read_bytes()
    at = data.index(b"tkhd") + 4
    assert data[at] == 0  # version 0: the matrix sits 40 bytes in
    a, b, _, c, d = struct.unpack(">5i", data[at + 40:at + 60])
    assert (a, b, c, d) == (0, 1 << 16, -(1 << 16), 0)


def test_seek_and_no_seek_pick_the_same_frames_of_a_vfr_video(tmp_path):
  # 72 frames at a nominal 40 ms, with a 240 ms stall, a burst at 20 ms and a
  # stretch at 60 ms; keyframes every 12 frames, so seeking skips frames.
  gaps = [40] * 71
  gaps[10] = 240
  gaps[30:38] = [20] * 8
  gaps[50:56] = [60] * 6
  pts = np.concatenate([[0], np.cumsum(gaps)])
  path = write(tmp_path / "vfr.mp4", numbered(72), pts_ms=pts.tolist())
  n, rate = stream_info(path)
  assert n == 72 and rate != 25  # average rate: 72 frames / 3.08 s
  # The frame on screen at slot k (time k / rate): the last one whose
  # timestamp rounds to k or earlier.
  slots = np.floor(pts / 1000 * float(rate) + 0.5)
  differ = 0
  for t, fps in ((8, 8.0), (16, 0.0)):
    for seed, where in [(s, 0.5) for s in range(6)] + [
        (None, w) for w in (0.0, 0.3, 0.7, 1.0)]:
      rng = lambda: None if seed is None else np.random.default_rng(seed)
      a = video.decode(path, t, fps, rng(), seek=True, where=where)
      b = video.decode(path, t, fps, rng(), seek=False, where=where)
      np.testing.assert_array_equal(a, b)
      idx = video.clip_indices(n, float(rate), t, fps, rng(), where=where)
      want = np.searchsorted(slots, idx, side="right") - 1
      np.testing.assert_array_equal(frame_ids(a), want)
      differ += np.any(want != idx)  # where counting frames would differ
  assert differ > 10  # of the 20 clips


def test_unknown_frame_count_is_decoded_once(tmp_path, count_decoded):
  frames = numbered(50)
  known = write(tmp_path / "v.mp4", frames)
  unknown = write(tmp_path / "v.mkv", frames)
  assert stream_info(known)[0] == 50 and stream_info(unknown)[0] == 0
  for fps, seed, kw in ((8.0, None, dict(where=1.0, seek=False)),
                        (8.0, 3, {}), (0.0, None, {})):
    clips, counts = [], []
    for path in (known, unknown):
      count_decoded["frames"] = 0
      rng = None if seed is None else np.random.default_rng(seed)
      clips.append(video.decode(path, 16, fps, rng, **kw))
      counts.append(count_decoded["frames"])
    np.testing.assert_array_equal(clips[0], clips[1])
    assert counts[0] == counts[1]
  # The clip at the very end, without seeking: every frame once (counting
  # them by decoding first, as before, took 50 + 50).
  count_decoded["frames"] = 0
  clip = video.decode(unknown, 16, 8.0, None, seek=False, where=1.0)
  assert count_decoded["frames"] == 50
  np.testing.assert_array_equal(
      frame_ids(clip), video.clip_indices(50, 25.0, 16, 8.0, None, where=1.0))


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_frame_threading_gives_the_same_clips(tmp_path, monkeypatch,
                                              count_decoded, codec):
  # libx264 with its default B-frames: frames are decoded out of order.
  path = write(tmp_path / "v.mp4", numbered(60), codec=codec)
  clips = {}
  for thread_type in ("AUTO", "SLICE"):
    monkeypatch.setattr(video, "THREAD_TYPE", thread_type)
    clips[thread_type] = [
        video.decode(path, 16, fps, np.random.default_rng(s), seek=seek)
        for fps in (8.0, 0.0) for s in range(3) for seek in (True, False)]
  assert {t.split(".")[-1] for t in count_decoded["thread_type"]} == {
      "AUTO", "SLICE"}
  for a, b in zip(clips["AUTO"], clips["SLICE"]):
    np.testing.assert_array_equal(a, b)


class FakeFrame:
  def __init__(self, j, pts, duration=0):
    self.j, self.pts, self.duration, self.rotation = j, pts, duration, 0

  def to_ndarray(self, format):  # pylint: disable=redefined-builtin
    del format
    return np.full((1, 1, 3), self.j, np.uint8)


def test_picking_frames_by_timestamp():
  def pick(pts, idx, from_start=True, duration=0, slot=lambda p: p):
    frames = [FakeFrame(j, p, duration) for j, p in enumerate(pts)]
    out = video._pick(iter(frames), np.array(idx), slot, from_start)
    return out if out is None else [None if f is None else int(f[0, 0, 0])
                                    for f in out]
  # Gaps hold the frame before; frames sharing a slot: the last one.
  assert pick([0, 1, 4, 5, 5, 6], [0, 2, 3, 4, 5, 6]) == [0, 1, 1, 2, 4, 5]
  # From the start, slots before the first frame show it.
  assert pick([2, 3], [0, 1, 2, 3]) == [0, 0, 0, 1]
  # After a seek that landed past the clip's first slot: give up (decode
  # from the start instead).
  assert pick([2, 3], [1, 2], from_start=False) is None
  assert pick([1, 2, 3], [1, 2], from_start=False) == [0, 1]
  # The last frame lasts its duration; past it the clip is short.
  assert pick([0, 1], [1, 2, 3], duration=2) == [1, 1, None]
  # No timestamp: None, and count mode ignores them.
  assert pick([0, None], [0, 1]) is None
  assert pick([None, None, None], [1, 2], slot=None) == [1, 2]
