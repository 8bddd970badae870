"""grain pipelines over the three sources, and the preprocessing ops."""
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vitok_jax.data import demo_sources
from vitok_jax.data import input_pipeline
from vitok_jax.data import preprocess as ops


def cfg(**kw):
  base = dict(data="embedded", res=32, batch_size=4, frames=1,
              crop_scale=(0.5, 1.0), flip=True, num_workers=0)
  base.update(kw)
  return input_pipeline.default_config(**base)


def test_embedded_train_batches_are_augmented_and_in_range():
  it = iter(input_pipeline.make_train_dataset(cfg(), seed=0))
  a, b = next(it)["image"], next(it)["image"]
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
    got = next(it2)
    np.testing.assert_array_equal(got["image"], e["image"])
    np.testing.assert_array_equal(got["skipped"], 0)


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


def test_labels_are_photo_identity_and_folder_classes(tmp_path):
  # Embedded photos: the class of a photo is its index, in train and eval.
  ev = list(input_pipeline.make_eval_dataset(cfg(), 4))
  labels = np.concatenate([b["label"][b["mask"]] for b in ev])
  assert labels.tolist() == list(range(len(demo_sources.EMBEDDED_PHOTOS)))
  it = iter(input_pipeline.make_train_dataset(cfg(crop="center", flip=False),
                                              seed=0))
  ref = {int(l): img for b in ev for l, img, m in zip(b["label"], b["image"],
                                                      b["mask"]) if m}
  b = next(it)
  for label, img in zip(b["label"], b["image"]):  # centre crop = eval crop
    np.testing.assert_allclose(img, ref[int(label)], atol=1e-6)
  # Folders: the top-level subfolder is the class, sorted; root files -1.
  rng = np.random.default_rng(0)
  for sub in ("zebra", "ant", "."):
    (tmp_path / sub).mkdir(exist_ok=True)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / sub / "x.png")
  src = input_pipeline.get_source(f"folder:{tmp_path}")
  got = {f.split("/")[-2]: src.label(i) for i, f in enumerate(src.files)}
  assert got["ant"] == 0 and got["zebra"] == 1 and -1 in got.values()
  with pytest.raises(ValueError, match="config.input.crop"):
    input_pipeline.make_train_dataset(cfg(crop="middle"), seed=0)


def test_tfds_source_through_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    src = input_pipeline.get_source("tfds:mnist:train")
    assert len(src) == 6
    it = iter(input_pipeline.make_train_dataset(cfg(data="tfds:mnist:train", batch_size=2), 0))
    x = next(it)["image"]
  assert x.shape == (2, 32, 32, 3)  # grey images become RGB


@pytest.mark.parametrize("name,says", [
    ("imagenet2012", "--manual_dir="), ("mnist", "tfds build mnist")])
def test_a_missing_tfds_set_says_how_to_prepare_it(name, says, tmp_path,
                                                  monkeypatch):
  """Never a download (tfds.data_source(download=False)): the error names the
  tfds build command, and ImageNet's manual download folder."""
  tfds = pytest.importorskip("tensorflow_datasets")
  called = {}
  real = tfds.data_source

  def spy(*a, **kw):
    called.update(kw)
    return real(*a, **kw)
  monkeypatch.setattr(tfds, "data_source", spy)
  with pytest.raises(FileNotFoundError) as e:
    input_pipeline.get_source(f"tfds:{name}:train",
                              data_dir=str(tmp_path / "tfds"))
  assert called["download"] is False
  assert "--file_format=array_record" in str(e.value)
  assert says in str(e.value)
  assert "importlib_resources" not in str(e.value)


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


@pytest.fixture(scope="module")
def coordinate_folder(tmp_path_factory):
  """Four 200 x 200 PNGs whose red/green values are each pixel's row/column:
  a training crop tells the box it was cut from."""
  root = tmp_path_factory.mktemp("coords")
  rows, cols = np.meshgrid(np.arange(200), np.arange(200), indexing="ij")
  for k in range(4):
    img = np.stack([rows, cols, np.full_like(rows, 60 * k)], -1)
    Image.fromarray(img.astype(np.uint8)).save(root / f"{k}.png")
  return root


def _train_examples(root, n_batches=4, **kw):
  c = cfg(data=f"folder:{root}", batch_size=16, **kw)
  it = iter(input_pipeline.make_train_dataset(c, seed=0))
  return np.concatenate([next(it)["image"] for _ in range(n_batches)])


def _crop_sizes(images):
  """(width, height) in source pixels of each crop: the resize maps a linear
  ramp to a linear ramp, of slope (crop side / res) per output pixel; fitted
  away from the borders. A mirrored crop has a negative width."""
  res = images.shape[1]
  v = (images.astype(np.float64) + 1) * 127.5  # back to [0, 255]
  j = np.arange(4, res - 4)
  sizes = []
  for im in v:
    col_slope = np.polyfit(j, im[res // 2, 4:-4, 1], 1)[0]
    row_slope = np.polyfit(j, im[4:-4, res // 2, 0], 1)[0]
    sizes.append((col_slope * res, row_slope * res))
  return np.array(sizes)


@pytest.mark.parametrize("scale", [(0.25, 0.25), (0.1, 0.3)])
def test_training_crops_cover_the_configured_area(coordinate_folder, scale):
  w, h = _crop_sizes(_train_examples(coordinate_folder, crop_scale=scale,
                                     flip=False)).T
  assert np.all(w > 0)  # no flips asked for, none made
  frac = w * h / 200**2
  # Each crop has area scale x the image's, up to rounding its sides to
  # pixels (<= 1%); aspect ratios in [3/4, 4/3].
  assert np.all(frac > scale[0] - 0.01) and np.all(frac < scale[1] + 0.01)
  assert np.all((w / h > 0.74) & (w / h < 1.36)) and np.ptp(w / h) > 0.3
  if scale[0] < scale[1]:  # and the draws span the range
    assert frac.min() < scale[0] + 0.03 and frac.max() > scale[1] - 0.03


def test_training_flips_mirror_half_the_crops(coordinate_folder):
  plain = _train_examples(coordinate_folder, crop_scale=(0.1, 0.3), flip=False)
  flipped = _train_examples(coordinate_folder, crop_scale=(0.1, 0.3), flip=True)
  mirrored = _crop_sizes(flipped)[:, 0] < 0
  # About half of 64 (within 3 binomial standard deviations: 4 each).
  assert 20 <= mirrored.sum() <= 44
  # The same crop boxes (the flip is drawn after the crop): a mirrored crop
  # is the unflipped crop of its box mirrored, the others are equal.
  for f, p, m in zip(flipped, plain, mirrored):
    np.testing.assert_array_equal(f, np.fliplr(p) if m else p)


def _folder_with_bad_files(path, n_good=8):
  rng = np.random.default_rng(0)
  for i in range(n_good):
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
        path / f"good{i}.jpg")
  whole = (path / "good0.jpg").read_bytes()
  (path / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
  (path / "empty.jpg").write_bytes(b"")
  (path / "text.jpg").write_text("this is not an image")
  return {str(path / n) for n in ("truncated.jpg", "empty.jpg", "text.jpg")}


def test_unreadable_records_are_skipped_counted_and_named(tmp_path, caplog):
  bad = _folder_with_bad_files(tmp_path)
  c = cfg(data=f"folder:{tmp_path}", batch_size=1)
  src = input_pipeline.get_source(c.data)
  # Grain's own epoch order (an oracle independent of our skipping): run up
  # to the first good record after the last bad one of epoch 1.
  import grain
  order = list(grain.MapDataset.source(list(range(len(src)))).shuffle(
      seed=0).repeat(None)[:len(src)])
  is_bad = [src.files[i] in bad for i in order]
  last_bad = max(k for k, b in enumerate(is_bad) if b)
  n_good = sum(1 for b in is_bad[:last_bad] if not b) + 1
  it = iter(input_pipeline.make_train_dataset(c, seed=0))
  with caplog.at_level("WARNING"):
    batches = [next(it) for _ in range(n_good)]
  assert sum(int(b["skipped"].sum()) for b in batches) == 3
  assert all(b["image"].shape == (1, 32, 32, 3) for b in batches)
  named = {p for p in bad if any(p in r.getMessage() for r in caplog.records)}
  assert named == bad


def test_all_records_unreadable_fails_clearly(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"")
  (tmp_path / "b.png").write_text("no")
  it = iter(input_pipeline.make_train_dataset(cfg(data=f"folder:{tmp_path}"), 0))
  with pytest.raises(ValueError, match="unreadable records in a row"):
    next(it)


def test_bad_fraction_limit_names_the_key():
  input_pipeline.check_bad_fraction(5, 1000, 0.01)  # 0.5%: fine
  input_pipeline.check_bad_fraction(9, 20, 0.01)  # early: judged over 1000
  with pytest.raises(ValueError, match="config.input.max_bad_fraction=0.01"):
    input_pipeline.check_bad_fraction(30, 2000, 0.01)


@pytest.mark.parametrize("mode", ["I;16", "P", "CMYK", "L", "LA", "RGBA"])
def test_every_pil_mode_decodes_to_the_right_rgb(tmp_path, mode):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  if mode == "I;16":  # a 16-bit grey PNG: its true mean, not near-white
    grey16 = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "x.png")
    want = np.repeat(np.round(grey16 / 257.0)[..., None], 3, -1)
  elif mode in ("RGBA", "LA"):  # half transparent: over white
    alpha = np.where(np.arange(16)[:, None] < 8, 255, 0).astype(np.uint8)
    alpha = np.broadcast_to(alpha, (16, 16))
    base = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    im = base if mode == "RGBA" else base.convert(mode)
    im.save(tmp_path / "x.png")
    opaque = np.asarray(im.convert("RGBA"))[..., :3].astype(np.float64)
    a = alpha[..., None] / 255.0
    want = np.round(opaque * a + 255 * (1 - a))
  else:
    im = Image.fromarray(rgb).convert(mode)
    im.save(tmp_path / ("x.jpg" if mode == "CMYK" else "x.png"))
    with Image.open(tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")) as f:
      want = np.asarray(f.convert("RGB"))
  got = input_pipeline.get_source(f"folder:{tmp_path}")[0]
  assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
  np.testing.assert_allclose(got, want, atol=1)
  if mode == "I;16":
    assert abs(got.mean() - grey16.mean() / 257) < 0.5


def test_processes_read_disjoint_slices_that_make_the_global_batch(
    monkeypatch):
  """Each of N processes yields its share of every step; their union is the
  one-process global batch of that step, without duplicates."""

  class Numbered:  # record i is an image filled with the value i
    def __len__(self):
      return 40

    def __getitem__(self, i):
      return np.full((8, 8, 3), i, np.uint8)

  monkeypatch.setattr(input_pipeline, "source_of", lambda config: Numbered())
  config = input_pipeline.default_config(
      data="numbered", res=8, frames=1, batch_size=8, crop="center",
      flip=False, num_workers=0)

  def steps(process, count, n=3):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    monkeypatch.setattr(jax, "process_count", lambda: count)
    it = iter(input_pipeline.make_train_dataset(config, seed=0))
    out = []
    for _ in range(n):
      img = next(it)["image"]
      out.append(np.round((img[:, 0, 0, 0] + 1) * 127.5).astype(int))
    return out

  one = steps(0, 1)
  for count in (2, 4):
    shares = [steps(p, count) for p in range(count)]
    for s in range(3):
      assert all(len(sh[s]) == 8 // count for sh in shares)
      union = np.concatenate([sh[s] for sh in shares])
      assert len(set(union.tolist())) == 8  # no example twice in a step
      assert sorted(union.tolist()) == sorted(one[s].tolist())
