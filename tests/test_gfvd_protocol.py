"""Table 7's gFVD as a protocol: the video DiT computes it by default on
UCF-101's original frames, a generation evaluator on clips without I3D
weights fails at start naming the key (or says in every output that gFVD
was not computed), LARP's label protocol draws the labels of real clips."""
import numpy as np
import pytest

from configs.dit import dit_l_vitok_s_b4x8_128 as video_dit
from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import scoring
from vitok_jax.parallel import sharding as sh
from vitok_jax.trainers import dit


def test_the_video_dit_scores_gfvd_on_ucf101s_original_frames():
  c = dit.resolve_config(video_dit.get_config("tokenizer=/runs/v"))
  assert c.input.data == "tfds:ucf101/ucf101_1:train" and c.input.fps == 8.0
  for ev in c.evals.values():
    assert ev.i3d_weights == "weights/i3d_kinetics400.npz"
    assert ev.labels == "random"
    assert (ev.num_samples, ev.final_num_samples) == (10_000, 50_000)
  larp = dit.resolve_config(video_dit.get_config("tokenizer=/runs/v,"
                                                 "protocol=larp"))
  assert larp.input.fps == 0.0 and larp.input.frames == 16
  for ev in larp.evals.values():
    assert ev.labels == "data"
    assert (ev.num_samples, ev.final_num_samples) == (10_000, 10_000)
  with pytest.raises(ValueError, match="protocol='ucf'"):
    video_dit.get_config("protocol=ucf")


def _evaluator(i3d_weights):
  config = generation.default_config()
  config.update(num_samples=2, batch_size=8, i3d_weights=i3d_weights)
  mesh = sh.make_mesh([("data", -1)])
  return generation.Evaluator(
      "vid", config, predict_fns=dict(sample=lambda cfg, steps: None,
                                      num_classes=3), mesh=mesh,
      input_config=input_pipeline.default_config(data="heldout", res=16,
                                                 frames=9))


def test_clips_without_i3d_weights_fail_at_start_or_say_so():
  with pytest.raises(ValueError, match="evals.vid: i3d_weights is not set"):
    _evaluator("")
  ev = _evaluator("none")
  line = ev.summary({"vid/num_samples": 2.0})
  assert "gFVD NOT computed (i3d_weights='none')" in line
  assert "gFVD NOT computed" in ev.protocol({"vid/num_samples": 2.0})


def test_data_labels_are_those_of_seeded_random_real_examples():
  data_labels = np.array([0, 0, 0, 2, 2, 1, 7, 7, 7, 7], np.int32)
  got = generation.sample_labels(1000, 8, "data", seed=3,
                                 data_labels=data_labels)
  want = data_labels[np.random.default_rng(3).integers(0, 10, 1000)]
  np.testing.assert_array_equal(got, want)
  # The real clips' class frequencies, not uniform over the classes.
  assert not np.isin(got, [3, 4, 5, 6]).any()
  with pytest.raises(ValueError, match="labelled data set"):
    generation.sample_labels(4, 8, "data", data_labels=np.array([-1, -1]))
  # The demo's photos: one class per photo.
  labels = input_pipeline.source_labels(input_pipeline.default_config(
      data="embedded"))
  np.testing.assert_array_equal(labels, np.arange(9))


def test_the_protocol_names_clips_reference_and_inception_input():
  data = input_pipeline.default_config(data="tfds:ucf101/ucf101_1:train",
                                       res=128, frames=16, fps=0.0)
  nets = scoring.Nets(i3d_params={}, fvd_ref_clips=9537,
                      inception_input="adm")
  text = scoring.protocol("g", {"g/num_samples": 10_000.0, "g/gfid": 1.0,
                                "g/gis_splits": 2.0}, nets, data)
  assert text == (
      "gFVD of 10000 sampled clips of 16 frames against 9537 real clips of "
      "16 consecutive frames at the native rate, short side 128 (bicubic) + centre "
      "crop, 1 per video, tfds:ucf101/ucf101_1:train; ADM's Inception input "
      "(TF1 bilinear, (x - 128) / 128), gIS over 2 split(s) of up to 5000")


def test_the_clip_filter_is_selectable_and_named():
  """LARP crops with bilinear (antialiased) resizing, we default to bicubic:
  the filter is a config key, it changes the pixels as PIL says, the
  protocol line names it and cached statistics keep the two apart."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vitok_jax.data import video  # pylint: disable=g-import-not-at-top
  from vitok_jax.evaluators import ref_stats  # pylint: disable=g-import-not-at-top
  frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3),
                                             dtype=np.uint8)
  got = video.resize_and_crop(frames, 60, None, filter="bilinear")
  want = np.stack([np.asarray(Image.fromarray(f).resize(
      (80, 60), Image.BILINEAR, reducing_gap=3.0))[:, 10:70] for f in frames])
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, video.resize_and_crop(frames, 60, None))
  with pytest.raises(ValueError, match="video_filter='lanczos'"):
    video.resize_and_crop(frames, 60, None, filter="lanczos")
  c = input_pipeline.default_config(data="folder:/ucf", res=128, frames=16,
                                    fps=0.0, video_filter="bilinear")
  assert "short side 128 (bilinear) + centre crop" in (
      input_pipeline.describe_clips(c))
  names = {ref_stats.cache_name(c), ref_stats.cache_name(
      input_pipeline.default_config(data="folder:/ucf", res=128, frames=16,
                                    fps=0.0))}
  assert len(names) == 2
