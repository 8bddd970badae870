"""LPIPS port: numeric parity with the lpips package, and the weights file."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import torch_reference as tr
from tests.helpers import load_tool
from vitok_jax.models import lpips as lpips_lib

torch = tr.torch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """lpips.LPIPS with a random VGG and the real linear layers, plus our
  weights file converted from the same state dicts through our tool."""
  lpips = tr.import_lpips()
  torch.manual_seed(0)
  ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
  tmp = tmp_path_factory.mktemp("lpips")
  # The random VGG as a torchvision-format state dict (features.<idx>.*).
  vgg_sd = {}
  for k, v in ref.net.state_dict().items():  # slice<k>.<idx>.weight
    _, idx, kind = k.split(".")
    vgg_sd[f"features.{idx}.{kind}"] = v
  torch.save(vgg_sd, tmp / "vgg16.pth")
  lin_file = os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/vgg.pth")
  load_tool("convert_lpips").main(["--vgg", str(tmp / "vgg16.pth"), "--lin", lin_file,
                        "--out", str(tmp / "lpips.npz")])
  return ref, str(tmp / "lpips.npz")


def test_parity_with_lpips_package(reference):
  ref, path = reference
  params = lpips_lib.load(path)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  ours = np.asarray(lpips_lib.make_distance_fn()(params, x, y))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(x).permute(0, 3, 1, 2),
                 torch.from_numpy(y).permute(0, 3, 1, 2)).reshape(-1).numpy()
  assert np.all(theirs > 0)
  rel = np.abs(ours - theirs) / np.abs(theirs)
  assert rel.max() < 1e-4, (ours, theirs)


def test_distance_is_zero_for_identical_images_and_has_input_grads(reference):
  params = lpips_lib.load(reference[1])
  fn = lpips_lib.make_distance_fn()
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  np.testing.assert_allclose(fn(params, x, x), 0.0, atol=1e-7)
  g = jax.grad(lambda a: fn(params, a, x + 0.1).sum())(x)
  assert float(jnp.abs(g).sum()) > 0


def test_missing_weights_file_names_file_and_tool(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz.*tools/convert_lpips.py"):
    lpips_lib.load(str(tmp_path / "nope.npz"))


def test_random_weights_only_when_allowed(caplog):
  with pytest.raises(ValueError, match="tools/convert_lpips.py"):
    lpips_lib.load(None)
  params = lpips_lib.load(None, allow_random=True)
  assert "RANDOM VGG16" in caplog.text
  assert all(float(params[f"lin{l}"].min()) >= 0 for l in range(5))


def test_wrong_weights_file_is_rejected(tmp_path):
  np.savez(tmp_path / "bad.npz", **{"vgg/conv1_1/kernel": np.zeros((3, 3, 3, 8))})
  with pytest.raises(ValueError, match="expected names/shapes"):
    lpips_lib.load(str(tmp_path / "bad.npz"))
