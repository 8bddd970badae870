"""grain pipelines over the three sources, and the preprocessing ops."""
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vitok_jax import input_pipeline
from vitok_jax.pp import ops


def cfg(**kw):
  base = dict(data="embedded", res=32, batch_size=4, frames=1,
              crop_scale=(0.5, 1.0), flip=True, num_workers=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_embedded_train_batches_are_augmented_and_in_range():
  it = iter(input_pipeline.make_train_dataset(cfg(), seed=0))
  a, b = next(it), next(it)
  assert a.shape == (4, 32, 32, 3) and a.dtype == np.float32
  assert -1.0 <= a.min() and a.max() <= 1.0
  assert not np.allclose(a, b)


def test_train_iterator_state_resumes_the_stream():
  it = iter(input_pipeline.make_train_dataset(cfg(), seed=0))
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(input_pipeline.make_train_dataset(cfg(), seed=0))
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2), e)


def test_folder_source_reads_images(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "sub").mkdir()
  for i in range(5):
    img = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / ("sub" if i % 2 else ".") / f"{i}.png")
  (tmp_path / "notes.txt").write_text("not an image")
  src = input_pipeline.get_source(f"folder:{tmp_path}")
  assert len(src) == 5
  batches = list(input_pipeline.make_eval_dataset(cfg(data=f"folder:{tmp_path}"), 4))
  assert [b["mask"].tolist() for b in batches] == [[True] * 4, [True, False, False, False]]
  assert batches[1]["image"].shape == (4, 32, 32, 3)
  assert np.all(batches[1]["image"][1:] == 0)


def test_tfds_source_through_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    src = input_pipeline.get_source("tfds:mnist:train")
    assert len(src) == 6
    it = iter(input_pipeline.make_train_dataset(cfg(data="tfds:mnist:train", batch_size=2), 0))
    x = next(it)
  assert x.shape == (2, 32, 32, 3)  # grey images become RGB


def test_unknown_source_string():
  with pytest.raises(ValueError, match="config.input.data='s3://x'"):
    input_pipeline.get_source("s3://x")


def test_ops():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
  assert ops.random_resized_crop(img, 16, rng).shape == (16, 16, 3)
  c = ops.center_crop(img, 20)
  assert c.shape == (20, 20, 3)
  x = ops.value_range(img)
  assert x.min() >= -1 and x.max() <= 1
  np.testing.assert_array_equal(ops.to_uint8(x), img)
  flipped = [ops.random_flip(img, np.random.default_rng(s)) for s in range(8)]
  assert any(np.array_equal(f, img[:, ::-1]) for f in flipped)
  assert any(np.array_equal(f, img) for f in flipped)
