"""NaFlex geometry (data/naflex.py) and its grain pipelines
(data/naflex_pipeline.py)."""
import math

import einops
import jax
import numpy as np
import pytest
from PIL import Image

from vitok_jax.data import input_pipeline
from vitok_jax.data import naflex
from vitok_jax.data import naflex_pipeline
from vitok_jax.data import preprocess as ops


# --------------------------------------------------------------------------
# The resize rule
# --------------------------------------------------------------------------
def bisection_size(h, w, patch, max_patches):
  """SigLIP 2 / big_vision's rule as they compute it: bisection over the
  scale (float64 here, to convergence), each side rounded up to whole
  patches, at least one patch."""
  def size(s):
    return [max(patch, patch * math.ceil(s * side / patch)) for side in (h, w)]

  lo, hi = 1e-9, 1e4
  for _ in range(200):
    mid = (lo + hi) / 2
    th, tw = size(mid)
    if (th // patch) * (tw // patch) <= max_patches:
      lo = mid
    else:
      hi = mid
  return tuple(size(lo))


def test_the_resize_rule_by_hand():
  assert naflex.naflex_size(256, 256, 16, 256) == (256, 256)
  # 3:4 with 256 patches: 14 x 18 = 252 (15 x 19 would be 285; 14 x 19 is
  # not one scale: ceil(0.75 * 19) = 15).
  assert naflex.naflex_size(480, 640, 16, 256) == (224, 288)
  assert naflex.naflex_grid(10, 10000, 16) == (1, 16)  # at least one row
  assert naflex.naflex_grid(5, 7, 1) == (1, 1)


def test_the_resize_rule_is_the_bisection_over_scales():
  rng = np.random.default_rng(0)
  cases = [(int(rng.integers(1, 2000)), int(rng.integers(1, 2000)),
            int(rng.choice([4, 8, 14, 16])), int(rng.integers(1, 600)))
           for _ in range(300)]
  cases += [(h, w, 16, 256) for h in (224, 256, 300, 375, 500, 1024)
            for w in (100, 256, 333, 500, 640)]
  for h, w, p, n in cases:
    got = naflex.naflex_size(h, w, p, n)
    assert got == bisection_size(h, w, p, n), (h, w, p, n)
    assert (got[0] // p) * (got[1] // p) <= n


def test_the_canvas_holds_every_grid_within_its_aspect():
  for n in (16, 64, 256):
    for r in (1.0, 2.0, 4.0):
      g = naflex.canvas_grid(n, r)
      sides = [max(naflex.naflex_grid(h, w, n))
               for h in range(1, 80) for w in range(1, 80)
               if max(h, w) <= r * min(h, w)]
      assert max(sides) <= g, (n, r)
      assert max(sides) >= g - 1  # and is not much larger than needed


# --------------------------------------------------------------------------
# Sequences <-> images
# --------------------------------------------------------------------------
def test_patch_positions_by_hand():
  img = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
  patches, coords, valid = naflex.patchify_to_sequence(img, 2, 1, 8)
  assert patches.shape == (8, 12) and valid.tolist() == [True] * 6 + [False] * 2
  # Row-major over the 2 x 3 grid; padding at (0, 0, 0) and zeros.
  assert coords[:6].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2],
                                 [0, 1, 0], [0, 1, 1], [0, 1, 2]]
  assert not coords[6:].any() and not patches[6:].any()
  # Patch 5 = grid (1, 2) = pixels [2:4, 4:6], in (dy, dx, channel) order.
  np.testing.assert_array_equal(patches[5], img[2:4, 4:6].reshape(-1))
  np.testing.assert_array_equal(
      patches[5, :6], [(2 * 6 + 4) * 3 + c for c in range(3)] +
      [(2 * 6 + 5) * 3 + c for c in range(3)])


def test_clip_patches_follow_the_contract_einops():
  rng = np.random.default_rng(0)
  clip = rng.standard_normal((4, 6, 8, 3)).astype(np.float32)
  patches, coords, valid = naflex.patchify_to_sequence(clip, 2, 2, 30)
  want = einops.rearrange(clip[None], "b (t q) (h p1) (w p2) c -> "
                          "b (t h w) (q p1 p2 c)", q=2, p1=2, p2=2)[0]
  assert valid.sum() == 2 * 3 * 4
  np.testing.assert_array_equal(patches[:24], want)
  assert coords[13].tolist() == [1, 0, 1]  # t-major: 12 + 1


@pytest.mark.parametrize("frames,tubelet", [(1, 1), (4, 2)])
def test_unpack_and_crop_native_round_trip_exactly(frames, tubelet):
  rng = np.random.default_rng(1)
  shapes = [(6, 10), (8, 4), (2, 2)]
  rows = []
  images = []
  for h, w in shapes:
    x = rng.uniform(-1, 1, ((frames,) if frames > 1 else ()) + (h, w, 3))
    images.append(x.astype(np.float32))
    rows.append(naflex.patchify_to_sequence(x, 2, tubelet, 32))
  patches, coords, valid = (np.stack(a) for a in zip(*rows))
  # Whatever the padding holds changes nothing.
  patches[~valid] = 7.0
  coords[~valid] = 3
  canvas, mask = jax.jit(naflex.unpack, static_argnums=(3, 4, 5))(
      patches, coords, valid, (8, 10), 2, frames)
  lead = (3, frames) if frames > 1 else (3,)
  assert canvas.shape == lead + (8, 10, 3) and mask.shape == lead + (8, 10)
  for i, (x, (h, w)) in enumerate(zip(images, shapes)):
    np.testing.assert_array_equal(canvas[i][..., :h, :w, :], x)
    want = np.zeros((8, 10), bool)
    want[:h, :w] = True
    np.testing.assert_array_equal(mask[i], np.broadcast_to(want, mask[i].shape))
    assert not np.asarray(canvas[i])[..., ~want, :].any()
  natives = naflex.crop_native(patches, coords, valid, 2, frames)
  for got, x in zip(natives, images):
    np.testing.assert_array_equal(got, x)


def test_unpack_drops_what_the_canvas_cannot_hold():
  x = np.ones((4, 8, 3), np.float32)
  p, c, v = naflex.patchify_to_sequence(x, 2, 1, 8)
  canvas, mask = naflex.unpack(p[None], c[None], v[None], (4, 4), 2)
  assert canvas.shape == (1, 4, 4, 3) and bool(mask.all())


def test_a_padding_row_is_left_out_of_crop_native():
  p, c, v = naflex.patchify_to_sequence(np.zeros((2, 2, 3)), 2, 1, 4)
  v0 = np.zeros_like(v)
  assert len(naflex.crop_native(np.stack([p, p]), np.stack([c, c]),
                                np.stack([v, v0]), 2)) == 1


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------
SIZES = [(30, 50), (64, 16), (40, 40), (17, 90), (50, 36)]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixed")
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(SIZES):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        root / f"{i}.png")
  return str(root)


def cfg(root, **kw):
  base = dict(data=f"folder:{root}", batch_size=4, flip=False, num_workers=0,
              naflex=True, max_patches=16)
  base.update(kw)
  return input_pipeline.default_config(**base)


def test_the_config_holds_the_naflex_keys_and_square_stays_square():
  c = input_pipeline.default_config()
  assert (c.naflex, c.max_patches) == (False, 256)
  assert tuple(c.naflex_aspect) == (0.5, 2.0)
  assert tuple(c.naflex_area) == (0.5, 1.0)
  batch = next(iter(input_pipeline.make_train_dataset(
      input_pipeline.default_config(res=16, batch_size=2), seed=0)))
  assert set(batch) == {"image", "label", "skipped"}
  assert batch["image"].shape == (2, 16, 16, 3)


def test_training_rows_mix_aspects_within_the_range(mixed_folder):
  c = cfg(mixed_folder)
  it = iter(naflex_pipeline.make_train_dataset(c, seed=0, patch=4))
  side = naflex_pipeline.canvas_side(c, 4) // 4
  aspects = []
  for _ in range(6):
    b = next(it)
    assert b["patches"].shape == (4, 16, 48)
    assert b["patches"].dtype == np.float32
    assert b["coords"].shape == (4, 16, 3) and b["valid"].shape == (4, 16)
    assert -1 <= b["patches"].min() and b["patches"].max() <= 1
    assert not b["patches"][~b["valid"]].any()
    for co, va in zip(b["coords"], b["valid"]):
      n = int(va.sum())
      assert va[:n].all() and not va[n:].any()  # the image first
      _, gh, gw = naflex.native_grid(co, va)
      assert gh * gw == n and max(gh, gw) <= side
      aspects.append(gw / gh)
  # Crops of aspect 0.5 .. 2 (whole patches: a 16-patch grid rounds).
  assert min(aspects) < 0.9 and max(aspects) > 1.1
  assert all(0.25 <= a <= 4 for a in aspects)


def test_training_without_ranges_keeps_each_whole_image(mixed_folder):
  c = cfg(mixed_folder, naflex_aspect=(), naflex_area=())
  b = next(iter(naflex_pipeline.make_train_dataset(c, seed=0, patch=4)))
  grids = {naflex.native_grid(co, va)[1:]
           for co, va in zip(b["coords"], b["valid"])}
  assert grids <= {naflex.naflex_grid(h, w, 16) for h, w in SIZES}


def test_training_resumes_from_the_iterator_state(mixed_folder):
  ds = naflex_pipeline.make_train_dataset(cfg(mixed_folder), seed=3, patch=4)
  it = iter(ds)
  next(it)
  state = it.get_state()
  want = next(it)
  it2 = iter(ds)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["patches"], want["patches"])


def test_eval_rows_are_whole_images_at_their_naflex_size(mixed_folder):
  c = cfg(mixed_folder, max_patches=24)
  batches = list(naflex_pipeline.make_eval_dataset(c, 2, patch=4))
  assert len(batches) == 3
  assert [b["mask"].tolist() for b in batches][-1] == [True, False]
  last = batches[-1]
  assert not last["valid"][1].any() and last["index"][1] == -1
  got = [img for b in batches for img in naflex.crop_native(
      b["patches"], b["coords"], b["valid"], 4)]
  files = input_pipeline.source_of(c)
  assert len(got) == len(SIZES)
  for i, img in enumerate(got):
    src = ops.to_rgb_uint8(files[i])
    h, w = naflex.naflex_size(*src.shape[:2], 4, 24)
    np.testing.assert_array_equal(img, ops.value_range(ops.resize(src, (h, w))))


def test_bad_ranges_name_the_key(mixed_folder):
  with pytest.raises(ValueError, match="naflex_area"):
    naflex_pipeline.crop_ranges(cfg(mixed_folder, naflex_area=(0.5, 2.0)))
  with pytest.raises(ValueError, match="naflex_aspect"):
    naflex_pipeline.crop_ranges(cfg(mixed_folder, naflex_aspect=(2.0, 0.5)))


def test_training_flips_mirror_the_image():
  c = input_pipeline.default_config(flip=True, naflex=True, max_patches=16,
                                    naflex_aspect=(), naflex_area=())
  view = naflex_pipeline.TrainView(c, 4)
  img = np.zeros((16, 16, 3), np.uint8)
  img[:, :8] = 255  # white left half
  left = []
  for seed in range(16):
    out = view({"image": img, "label": np.int32(0)},
               np.random.default_rng(seed))
    x = naflex.crop_native(out["patches"][None], out["coords"][None],
                           out["valid"][None], 4)[0]
    assert x.shape == (16, 16, 3)  # the whole image, at 4 x 4 patches
    left.append(float(x[:, :8].mean()))
  assert set(left) == {-1.0, 1.0}


def test_padding_is_small():
  for n in (64, 256):
    short = [n - np.prod(naflex.naflex_grid(h, w, n))
             for h in range(50, 400, 7) for w in range(50, 400, 11)
             if max(h, w) <= 4 * min(h, w)]
    assert max(short) <= 0.25 * n and np.mean(short) <= 0.05 * n


class FakeVideos:
  """Videos without files: video i is 5 identical frames of one random
  image of SIZES[i] (or 2 frames: too short for a 4-frame clip)."""
  is_video = True

  def __init__(self):
    rng = np.random.default_rng(0)
    self.frames = [rng.integers(0, 256, s + (3,), dtype=np.uint8)
                   for s in SIZES]

  def __len__(self):
    return len(SIZES)

  def __getitem__(self, i):
    return i

  def label(self, i):
    return i

  def describe(self, i):
    return f"video {i}"

  def clip(self, ref, t, fps, rng, where=0.5):
    del fps, rng, where
    n = 2 if ref == 4 else 5
    if n < t:
      raise ValueError("too short")
    return np.stack([self.frames[ref]] * t)


def test_clip_views_crop_and_flip_every_frame_alike():
  c = input_pipeline.default_config(frames=4, max_patches=32, naflex=True,
                                    flip=True)
  source = FakeVideos()
  recs = input_pipeline.CheckedSource(source)
  train = naflex_pipeline.TrainView(c, 4, 2, source)
  evaluate = naflex_pipeline.EvalView(c, 4, 2, 0, 1, source)
  for i in range(4):
    for seed in range(3):
      out = train(recs[i], np.random.default_rng(seed))
      assert out["patches"].shape == (32, 2 * 4 * 4 * 3)
      gt, gh, gw = naflex.native_grid(out["coords"], out["valid"])
      assert gt == 2 and gt * gh * gw == out["valid"].sum() <= 32
      clip = naflex.crop_native(out["patches"][None], out["coords"][None],
                                out["valid"][None], 4, frames=4)[0]
      for f in clip[1:]:  # identical frames stay identical
        np.testing.assert_array_equal(f, clip[0])
    out = evaluate(0, recs[i])
    clip = naflex.crop_native(out["patches"][None], out["coords"][None],
                              out["valid"][None], 4, frames=4)[0]
    size = naflex.naflex_size(*SIZES[i], 4, 16)  # 2 tubelets share 32
    want = ops.value_range(ops.resize(source.frames[i], size))
    np.testing.assert_array_equal(clip, np.stack([want] * 4))
  bad = train(recs[4], np.random.default_rng(0))
  assert isinstance(bad, input_pipeline.BadRecord) and "short" in bad.error
  assert isinstance(evaluate(0, recs[4]), input_pipeline.BadRecord)
