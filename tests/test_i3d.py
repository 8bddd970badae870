"""I3D for FVD: parity with the PyTorch I3D that vp-suite ships (a port of
DeepMind's kinetics-i3d) on shared random weights, and the conversion tool."""
import importlib.util
import os

import jax
import numpy as np
import pytest

from tests.helpers import load_tool
from tests.torch_reference import torch
from vitok_jax.models import i3d
import vitok_jax.utils as u


def reference_i3d_module():
  """vp_suite/measure/fvd/_pytorch_i3d/pytorch_i3d.py, loaded on its own:
  vp-suite pins ancient versions of everything, so it is installed with
  --no-deps and its package __init__ (which imports all of them) never runs."""
  spec = importlib.util.find_spec("vp_suite")
  if spec is None:
    pytest.fail("vp-suite is missing: pip install --no-deps vp-suite==0.0.9 "
                "(the README's set-up does)")
  path = os.path.join(os.path.dirname(spec.origin), "measure", "fvd",
                      "_pytorch_i3d", "pytorch_i3d.py")
  mod_spec = importlib.util.spec_from_file_location("pytorch_i3d", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def reference():
  torch.manual_seed(0)
  net = reference_i3d_module().InceptionI3d(num_classes=400).eval()
  with torch.no_grad():  # BatchNorm statistics away from identity too
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm3d):
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.1, 0.1)
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  return net, sd


def test_parity_with_the_pytorch_i3d(reference, tmp_path):
  net, sd = reference
  params = load_tool("convert_i3d").convert_state_dict(sd)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net.extract_features(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
  ref = ref.squeeze(-1).squeeze(-1).numpy().transpose(0, 2, 1)  # [B, T', 400]
  ours = np.asarray(jax.jit(lambda p, x: i3d.I3D().apply({"params": p}, x))(params, x))
  assert ours.shape == ref.shape == (2, 1, 400)
  assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
  # The .npz round trip loads and checks names and shapes.
  path = str(tmp_path / "i3d.npz")
  u.save_npz_tree(path, params)
  jax.tree.map(np.testing.assert_array_equal, i3d.load(path), params)


def test_converter_matches_tensors_in_order_when_names_differ(reference):
  _, sd = reference
  conv = load_tool("convert_i3d")
  by_name = conv.convert_state_dict(sd)
  renamed = {f"t{i}": v for i, (k, v) in enumerate(sd.items())
             if not k.endswith("num_batches_tracked")}
  jax.tree.map(np.testing.assert_array_equal, conv.convert_state_dict(renamed), by_name)
  del renamed["t5"]
  with pytest.raises(ValueError, match="not the Inception-v1 I3D"):
    conv.convert_state_dict(renamed)


def test_structure_strides_and_missing_weights(tmp_path):
  # 16 frames -> 1 time step (strides 2, 2, 2 and the [2, 7, 7] pool);
  # 32 frames -> 3; 224 pixels -> 1 x 1.
  for t, t_out in ((16, 1), (32, 3)):
    out = jax.eval_shape(lambda: i3d.I3D().init_with_output(
        jax.random.key(0), np.zeros((1, t, 224, 224, 3), np.float32))[0])
    assert out.shape == (1, t_out, 400)
  assert i3d.same_pads((8, 56, 56), (3, 3, 3), (2, 2, 2)) == [(0, 1)] * 3
  assert i3d.same_pads((7,), (3,), (2,)) == [(1, 1)]
  with pytest.raises(FileNotFoundError, match="tools/convert_i3d.py"):
    i3d.load(str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match=r"clips \[B, T, H, W, 3\]"):
    i3d.I3D().init(jax.random.key(0), np.zeros((1, 224, 224, 3)))
