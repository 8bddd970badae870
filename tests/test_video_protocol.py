"""The UCF-101 reconstruction protocol (Table 5 as the tokenizer literature
computes it): a folder of videos restricted by a split list, consecutive
frames at the native rate, several clips per video at evenly spaced
positions, TFDS videos decoded frame by frame, evaluation input decoded by
grain workers, I3D's frame minimum checked at start, and outputs that name
the protocol and the clip count."""
import io
import json
import os
import shutil

import av
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs.vitok import video_s_b4x8_128
from vitok_jax.data import demo_sources
from vitok_jax.data import input_pipeline
from vitok_jax.data import sources
from vitok_jax.data import video
from vitok_jax.evaluators import common as evaluators
from vitok_jax.evaluators import ref_stats
from tests.helpers import ROOT, launch

LEVEL = 6  # frame k of a test video is a flat grey of level LEVEL * k + 20


def write_levels(path, num_frames, fps=25, h=40, w=48):
  """A video whose frame k is flat grey LEVEL * k + 20: a decoded frame
  tells its own index (mpeg4 keeps flat frames to within a level or two)."""
  with av.open(str(path), "w") as c:
    s = c.add_stream("mpeg4", rate=fps)
    s.height, s.width, s.pix_fmt, s.bit_rate = h, w, "yuv420p", 2_000_000
    for k in range(num_frames):
      f = np.full((h, w, 3), LEVEL * k + 20, np.uint8)
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def frame_numbers(clip):
  """The source frame indices of a clip [T, H, W, 3] in [-1, 1]."""
  level = (np.asarray(clip).mean(axis=(1, 2, 3)) + 1) * 127.5
  return np.round((level - 20) / LEVEL).astype(int)


@pytest.fixture(scope="module")
def ucf_like(tmp_path_factory):
  """A UCF-101-shaped folder: class subfolders of .avi files and a
  trainlist naming some of them ("<class>/<file> <label>")."""
  root = tmp_path_factory.mktemp("ucf")
  for cls, n in (("ApplyEyeMakeup", 30), ("Biking", 24), ("Drumming", 27)):
    (root / cls).mkdir()
    write_levels(root / cls / f"v_{cls}_g01_c01.avi", n)
  (root / "Drumming" / "v_Drumming_g02_c01.avi").write_bytes(b"not a video")
  lists = root / "ucfTrainTestlist"
  lists.mkdir()
  (lists / "trainlist01.txt").write_text(
      "Biking/v_Biking_g01_c01.avi 2\r\n"
      "Drumming/v_Drumming_g01_c01.avi 3\r\n\r\n")
  return root


def cfg(**kw):
  return input_pipeline.default_config(**dict(dict(
      res=32, frames=4, fps=0.0, batch_size=2, flip=False, num_workers=0), **kw))


def test_clip_positions_and_the_native_rate():
  # fps 0: consecutive frames; `where` spreads starts over the possible ones.
  np.testing.assert_array_equal(video.clip_indices(30, 25.0, 4, 0.0, None,
                                                   where=0.0), [0, 1, 2, 3])
  np.testing.assert_array_equal(video.clip_indices(30, 25.0, 4, 0.0, None,
                                                   where=1.0), [26, 27, 28, 29])
  for n in range(16, 60):  # 0.5 is the centred clip of before
    assert video.clip_indices(n, 25.0, 16, 0.0, None)[0] == (n - 16) // 2
  # 25 -> 8 fps still strides (the §3.5 protocol).
  assert np.diff(video.clip_indices(100, 25.0, 4, 8.0, None)).tolist() == [3, 3, 3]
  with pytest.raises(ValueError, match="where=1.5"):
    video.clip_indices(30, 25.0, 4, 0.0, None, where=1.5)


def test_a_split_list_restricts_a_folder_and_keeps_its_labels(ucf_like):
  src = input_pipeline.source_of(cfg(
      data=f"folder:{ucf_like}",
      file_list=str(ucf_like / "ucfTrainTestlist" / "trainlist01.txt")))
  # Classes come from the whole folder, so labels match UCF-101's numbering.
  assert src.classes == ["ApplyEyeMakeup", "Biking", "Drumming"]
  assert [src.describe(i).split("/")[-1] for i in range(len(src))] == [
      "v_Biking_g01_c01.avi", "v_Drumming_g01_c01.avi"]
  assert [src.label(i) for i in range(2)] == [1, 2]
  missing = ucf_like / "missing.txt"
  missing.write_text("Biking/v_Biking_g01_c01.avi\nBiking/nope.avi\n")
  with pytest.raises(FileNotFoundError, match="names 1 of its 2 files.*nope.avi"):
    input_pipeline.source_of(cfg(data=f"folder:{ucf_like}", file_list=str(missing)))
  with pytest.raises(ValueError, match="file_list.*needs a 'folder:<path>'"):
    input_pipeline.source_of(cfg(data="tfds:ucf101:train", file_list=str(missing)))


def test_eval_clips_per_video_are_consecutive_and_evenly_spaced(ucf_like):
  c = cfg(data=f"folder:{ucf_like}", clips_per_video=3)
  src = input_pipeline.source_of(c)
  assert len(src) == 4 and input_pipeline.eval_num_examples(c) == 12
  batches = list(input_pipeline.make_eval_dataset(c, 2))
  got = [(int(i), frame_numbers(x).tolist())
         for b in batches for i, x, m in zip(b["index"], b["image"], b["mask"]) if m]
  # The broken file's 3 clips are left out; the rest keep their indices.
  lengths = {0: 30, 1: 24, 2: 27}  # videos in sorted order; 3 is broken
  want = []
  for v, n in lengths.items():
    for k in range(3):
      start = int(np.floor((k + 0.5) / 3 * (n - 4)))
      want.append((3 * v + k, list(range(start, start + 4))))
  assert got == want


def test_eval_workers_give_the_same_batches(ucf_like):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain reads its flags (the jobs parse them)
    flags.FLAGS.mark_as_parsed()
  c = cfg(data=f"folder:{ucf_like}", clips_per_video=2)
  one = list(input_pipeline.make_eval_dataset(c, 2))
  c.num_workers = 2
  two = list(input_pipeline.make_eval_dataset(c, 2))
  assert len(one) == len(two) == 4
  for a, b in zip(one, two):
    for k in ("image", "label", "mask", "index"):
      np.testing.assert_array_equal(a[k], b[k])


def test_tfds_videos_decode_only_the_frames_of_a_clip(monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def jpeg(k):
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 32, 3), LEVEL * k + 20, np.uint8)).save(
        buf, "JPEG", quality=95)
    return buf.getvalue()

  stored = [jpeg(k) for k in range(40)]
  seen = {}

  class FakeSource:  # what tfds.data_source returns with SkipDecoding
    def __len__(self):
      return 2

    def __getitem__(self, i):
      return {"video": list(stored), "label": 7 + i}

  def data_source(name, split, data_dir=None, decoders=None, download=True):
    seen.update(name=name, split=split, decoders=decoders, download=download)
    return FakeSource()

  monkeypatch.setattr(tfds, "data_source", data_source)
  decoded = []
  real = sources.decode_frame
  monkeypatch.setattr(sources, "decode_frame",
                      lambda f: decoded.append(1) or real(f))
  src = input_pipeline.source_of(cfg(data="tfds:ucf101/ucf101_1:train"))
  assert seen["name"] == "ucf101/ucf101_1" and seen["split"] == "train"
  assert isinstance(seen["decoders"]["video"], tfds.decode.SkipDecoding)
  assert seen["download"] is False  # never fetched at run time
  assert src.label(1) == 8 and not decoded  # a label decodes no frame
  clip = src.clip(src[0], 4, 0.0, None, where=0.0)
  assert len(decoded) == 4  # 4 of the 40 stored frames
  np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)),
                             [LEVEL * k + 20 for k in range(4)], atol=1.5)


def test_sample_videos_are_real_files_read_by_the_table5_protocol():
  c = cfg(data="samplevideos", frames=4, clips_per_video=4)
  src = input_pipeline.source_of(c)
  assert [f.split("/")[-1] for f in src.files] == list(demo_sources.SAMPLE_VIDEOS)
  assert input_pipeline.eval_num_examples(c) == 12
  # carphone: 120 frames at 29.97 fps; clip k of 4 starts at
  # floor((k + 0.5) / 4 * 116): an independent decode of those frames.
  with av.open(src.files[1]) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert len(frames) == 120
  start = int(np.floor(2.5 / 4 * 116))
  want = video.resize_and_crop(np.stack(frames[start:start + 4]), 32, None)
  got = src.clip(src[1], 4, 0.0, None, where=2.5 / 4)
  np.testing.assert_array_equal(video.resize_and_crop(got, 32, None), want)
  with pytest.raises(ValueError, match="samplevideos.*frames > 1"):
    input_pipeline.source_of(cfg(data="samplevideos", frames=1))


def test_training_pans_zoom_in_further_than_evaluation():
  photo = demo_sources.EmbeddedPhotos()[0]  # 512 x 512, a fine texture
  pans = input_pipeline.source_of(cfg(data="embedded", frames=2))
  assert pans.window == demo_sources.PAN_WINDOW == (0.2, 0.8)
  rng = np.random.default_rng(0)
  sides = []
  real = demo_sources.pan_zoom

  def spy(p, t, r, size=160, window=(0.45, 0.8)):
    sides.append(window)
    return real(p, t, r, size=size, window=window)

  import unittest.mock  # pylint: disable=g-import-not-at-top
  with unittest.mock.patch.object(demo_sources, "pan_zoom", spy):
    pans.clip(0, 2, 8.0, rng)
    pans.clip(0, 2, 8.0, None)
  assert sides == [(0.2, 0.8), (0.45, 0.8)]  # training, then evaluation
  # The window fractions are what pan_zoom crops: with window (0.2, 0.2)
  # frame 0 is the 102.4-pixel box at the path's first centre.
  r = np.random.default_rng(1)
  side = r.uniform(0.2, 0.2, 2)[0] * 512
  cy0, cx0 = r.uniform(0, 1, 4)[:2]
  cy, cx = side / 2 + cy0 * (512 - side), side / 2 + cx0 * (512 - side)
  want = np.asarray(Image.fromarray(photo).resize(
      (64, 64), Image.BICUBIC,
      box=(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)))
  clip = demo_sources.pan_zoom(photo, 2, np.random.default_rng(1), size=64,
                        window=(0.2, 0.2))
  np.testing.assert_array_equal(clip[0], want)


def test_pans_from_a_photo_pyramid():
  photo = demo_sources.EmbeddedPhotos()[0]  # 512 x 512
  levels = demo_sources.photo_pyramid(photo)
  assert [im.size for im in levels] == [(512, 512), (256, 256), (128, 128),
                                        (64, 64), (32, 32)]
  # One level is the photo itself: exactly the same clip.
  np.testing.assert_array_equal(
      demo_sources.pan_zoom(levels[:1], 4, np.random.default_rng(3), size=32),
      demo_sources.pan_zoom(photo, 4, np.random.default_rng(3), size=32))
  # A fixed 400-pixel window at 32 pixels comes from level 2 (100 >= 3 x 32,
  # 50 < 96), its box a quarter of the photo's.
  clip = demo_sources.pan_zoom(levels, 2, np.random.default_rng(1), size=32,
                        window=(400 / 512, 400 / 512))
  r = np.random.default_rng(1)
  r.uniform(0, 1, 2)
  cy0, cx0 = r.uniform(0, 1, 4)[:2]
  cy, cx = 200 + cy0 * 112, 200 + cx0 * 112
  quarter = Image.fromarray(photo).reduce(2).reduce(2)
  want = np.asarray(quarter.resize((32, 32), Image.BICUBIC, box=(
      (cx - 200) / 4, (cy - 200) / 4, (cx + 200) / 4, (cy + 200) / 4)))
  np.testing.assert_array_equal(clip[0], want)
  # Training clips render at the crop side from the pyramid: the clips the
  # 160-pixel render and its resize give, to about a grey level RMS.
  c = cfg(data="embedded", frames=16, res=32)
  fast = input_pipeline.source_of(c)
  slow = input_pipeline.get_source("embedded", frames=16)
  assert (fast.train_size, slow.train_size) == (32, None)
  err = []
  for i in range(6):
    a = fast.clip(i, 16, 8.0, np.random.default_rng(i))
    b = video.resize_and_crop(slow.clip(i, 16, 8.0, np.random.default_rng(i)),
                              32, None)
    assert a.shape == b.shape == (16, 32, 32, 3)
    err.append(np.mean((a.astype(float) - b.astype(float)) ** 2))
  assert 0 < np.sqrt(np.mean(err)) < 1.5
  # Evaluation clips do not change: 160 pixels from the photo.
  np.testing.assert_array_equal(fast.clip(2, 16, 8.0, None),
                                demo_sources.pan_zoom(fast.photos[2], 16, None))


def test_cached_statistics_are_kept_apart_by_protocol():
  base = dict(data="folder:/ucf", res=128, frames=16)
  names = {ref_stats.cache_name(input_pipeline.default_config(**base, **kw))
           for kw in (dict(fps=0.0), dict(fps=8.0), dict(fps=0.0, clips_per_video=2),
                      dict(fps=0.0, file_list="/ucf/trainlist01.txt"))}
  assert len(names) == 4
  assert ref_stats.cache_name(input_pipeline.default_config(
      **base, fps=0.0)) == "folder-ucf_128px_16fnative_all_v2.npz"


def test_video_configs_evaluate_by_table5_or_at_8_fps():
  c = video_s_b4x8_128.get_config()
  d = c.evals.val.data
  assert c.input.data == d.data == "tfds:ucf101/ucf101_1:train"  # §4.2: train
  assert d.fps == 0.0 and c.input.fps == 8.0 and d.clips_per_video == 1
  c = video_s_b4x8_128.get_config(
      "protocol=fps8,eval_clips=2,eval_examples=100,"
      "eval_data=tfds:kinetics700:validation")
  d = c.evals.val.data
  assert (d.data, d.fps, d.clips_per_video, c.evals.val.num_examples) == (
      "tfds:kinetics700:validation", 8.0, 2, 100)
  with pytest.raises(ValueError, match="protocol='table6'.*fps8.*table5"):
    video_s_b4x8_128.get_config("protocol=table6")


def test_rfvd_with_fewer_than_9_frames_fails_at_start():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  with pytest.raises(ValueError, match=r"at least 9 frames.*input.frames=8"):
    evaluators.build("val", dict(
        type="reconstruction", batch_size=1, i3d_weights="random",
        data=dict(data="heldout", res=32, frames=8)),
        predict_fns=dict(reconstruct=lambda p, x: x), mesh=mesh)


def _video_args():
  """A tiny video ViTok's eval job: 6 clips of 10 frames (I3D needs 9) in
  batches of 4, so every layout pads the last batch; a random I3D."""
  return ["--config=configs/vitok/video_s_b4x8_128.py:runlocal,frames=10,"
          "real_videos=false",
          "--config.evals.val.num_examples=6",
          "--config.evals.val.batch_size=4",
          "--config.evals.val.i3d_weights=random",
          "--config.evals.val.inception_weights=none.npz"]


def checkpoint_dir(wd):
  """A freshly initialised video ViTok saved as step 1 of a run in `wd`
  (the eval job restores it like any run; training it first would only add
  compile time)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from vitok_jax.io import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.parallel import sharding as sh  # pylint: disable=g-import-not-at-top
  from vitok_jax.trainers import tokenizer  # pylint: disable=g-import-not-at-top
  argv = ["eval"] + _video_args()
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                           sys_argv=argv)
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    fv(argv)
    config = tokenizer.resolve_config(holder.value)
  finally:
    os.chdir(cwd)
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  setup = tokenizer.make_setup(config, mesh)
  state = setup.init(jax.random.key(0))
  ckpt = ckpt_lib.Checkpointer(str(wd), async_save=False)
  ckpt.save(1, state, {}, config)
  ckpt.close()
  return wd


@pytest.mark.slow
def test_eval_job_names_the_protocol_and_the_clips(ucf_like, tmp_path):
  """The real eval job (python -m vitok_jax.eval) of a video ViTok on 2
  processes x 2 fake devices and on 1 x 4, each process with 2 grain
  workers: 3 clips of 10 consecutive frames from each listed video, so 6
  clips in batches of 4 (every layout pads its last batch). rPSNR, rSSIM,
  rFVD (whole-clip I3D features, reduced in float64 across processes) and
  the bicubic baseline do not depend on the layout; the summary line and
  results_<step>.json name the protocol and the count."""
  args = _video_args() + [
      f"--config.evals.val.data.data=folder:{ucf_like}",
      "--config.evals.val.data.file_list="
      f"{ucf_like / 'ucfTrainTestlist' / 'trainlist01.txt'}",
      "--config.evals.val.data.fps=0", "--config.evals.val.data.clips_per_video=3",
      "--config.evals.val.data.num_workers=2",
      "--config.evals.val.label=UCF-101 train"]
  ckpt = checkpoint_dir(tmp_path / "ckpt")
  wd, one = tmp_path / "run", tmp_path / "one"
  shutil.copytree(ckpt, wd)
  shutil.copytree(ckpt, one)
  outs = launch("vitok_jax.eval", args + [f"--workdir={wd}"], processes=2,
                devices=2)
  saved = json.loads((wd / "eval" / "results_1.json").read_text())
  # The same numbers as 1 process of 4 devices (its workers, its rows).
  launch("vitok_jax.eval", args + [f"--workdir={one}"], processes=1, devices=4)
  ref = json.loads((one / "eval" / "results_1.json").read_text())
  assert ref["protocols"] == saved["protocols"]
  assert ref["val/rfvd_random_i3d"] == 1 and ref["val/rfvd"] > 0
  for k in ("val/rpsnr", "val/rssim", "val/rfvd", "val/bicubic_rpsnr",
            "val/num_clips"):
    assert saved[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
  assert saved["val/num_clips"] == 6 and saved["val/num_examples"] == 60
  protocol = saved["protocols"]["val"]
  assert protocol.startswith("6 clips of 10 consecutive frames at the native "
                             "rate, short side 32 (bicubic) + centre crop, 3 per video")
  assert "trainlist01.txt" in protocol
  line = [l for l in outs[0].splitlines() if l.startswith("UCF-101 train:")]
  assert len(line) == 1 and line[0].endswith(f"[{protocol}]"), outs[0]
  assert "rFVD" in line[0] and "UCF-101 train:" not in outs[1]  # process 0's


def test_a_320x240_clip_is_resized_by_its_short_side_then_centre_cropped(
    tmp_path):
  """UCF-101's 320 x 240 frames at res 32: the short side (240) goes to 32
  and the long side by the same factor (320 * 32 / 240 = 42.7, rounded up
  to 43), then the centre 32 x 32 (columns 5 .. 36), as PIL computes it
  here; directly, and through the evaluation input from a losslessly
  encoded .avi. A training crop is a 32-wide window of the same resized
  frames, at full height."""
  import math  # pylint: disable=g-import-not-at-top
  frames = np.random.default_rng(0).integers(0, 256, (6, 240, 320, 3),
                                             dtype=np.uint8)
  res = 32
  nw = math.ceil(320 * res / 240)
  left = (nw - res) // 2
  assert (nw, left) == (43, 5)
  resized = np.stack([np.asarray(Image.fromarray(f).resize(
      (nw, res), Image.BICUBIC, reducing_gap=3.0)) for f in frames])
  want = resized[:, :, left:left + res]
  np.testing.assert_array_equal(video.resize_and_crop(frames, res, None),
                                want)
  train = video.resize_and_crop(frames, res, np.random.default_rng(1))
  windows = [resized[:, :, x:x + res] for x in range(nw - res + 1)]
  assert any(np.array_equal(train, w) for w in windows)
  # Through the evaluation input: frames 1 .. 4, the centred clip of 4.
  (tmp_path / "Biking").mkdir()
  with av.open(str(tmp_path / "Biking" / "v_Biking_g01_c01.avi"), "w") as c:
    s = c.add_stream("png", rate=25)  # lossless
    s.height, s.width, s.pix_fmt = 240, 320, "rgb24"
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  (b,) = list(input_pipeline.make_eval_dataset(
      cfg(data=f"folder:{tmp_path}", res=res, batch_size=1), 1))
  np.testing.assert_allclose(b["image"][0], want[1:5] / 127.5 - 1.0,
                             atol=1e-6)
