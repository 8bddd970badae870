"""I3D for FVD: parity with the PyTorch I3D that vp-suite ships (a port of
DeepMind's kinetics-i3d) on shared random weights, and the conversion tool:
a TorchScript detector is converted only when our I3D reproduces its
forward pass, and the .npz says where it came from."""
import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import warnings

import jax
import numpy as np
import pytest

from tests.helpers import load_tool
from tests.torch_reference import torch
from vitok_jax.evaluators import common
from vitok_jax.models import i3d
from vitok_jax.parallel import sharding as sh
import vitok_jax.utils as u

# The fewest frames I3D takes (time strided by 8 before a 2-frame pool) at
# FVD's 224 x 224: the conversion check's, to stay fast; the resize check
# brings the same number of 128 x 128 frames to it.
SMALL_CLIP = (9, 224, 224)
RESIZE_CLIP = (9, 128, 128)


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


class Detector(torch.nn.Module):
  """A stand-in for StyleGAN-V's i3d_torchscript.pt: the detector's forward
  signature, videos [B, 3, T, H, W] in [-1, 1] -> the 400 logits averaged
  over time (return_features; else their softmax). Its parameters are named
  "i3d.net.<port name>", not the port's names, so that the converter has to
  match them in order, as it must for the real file. rescale is accepted and
  unused (the converter passes False); resize=True resizes each frame to
  224 x 224 bilinearly (align_corners=False), as the real detector does, or
  by `mode` "nearest": a detector whose resize differs."""

  def __init__(self, traced, mode: str = "bilinear"):
    super().__init__()
    self.i3d = traced
    self.mode = mode

  def forward(self, videos, rescale: bool = False, resize: bool = False,
              return_features: bool = False):
    if resize:
      b, c, t, h, w = videos.shape
      frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
      if self.mode == "nearest":
        frames = torch.nn.functional.interpolate(frames, size=(224, 224),
                                                 mode="nearest")
      else:
        frames = torch.nn.functional.interpolate(
            frames, size=(224, 224), mode="bilinear", align_corners=False)
      videos = frames.reshape(b, t, c, 224, 224).permute(0, 2, 1, 3, 4)
    logits = self.i3d(videos).squeeze(-1).squeeze(-1).mean(dim=2)
    return logits if return_features else torch.softmax(logits, dim=1)


class _Features(torch.nn.Module):
  def __init__(self, net):
    super().__init__()
    self.net = net

  def forward(self, videos):
    return self.net.extract_features(videos)


def save_detector(net, path: str, mode: str = "bilinear") -> str:
  """`net` (the port) as a saved TorchScript Detector. Traced (the port's
  padding is computed in numpy, so it does not script) at SMALL_CLIP, which
  fixes its padding to that size, then scripted for keyword arguments."""
  x = torch.zeros(1, 3, *SMALL_CLIP)
  with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter("ignore")  # TracerWarnings: sizes become constants
    traced = torch.jit.trace(_Features(net), x, check_trace=False)
  torch.jit.script(Detector(traced, mode)).save(path)
  return path


@pytest.fixture(scope="module")
def detector_file(reference, tmp_path_factory):
  return save_detector(reference[0], str(
      tmp_path_factory.mktemp("detector") / "i3d_torchscript.pt"))


class ReorderedBatchNorm(torch.nn.Module):
  """Inference BatchNorm that registers its tensors in another order (here
  bias before scale): the same function, so the TorchScript's own forward
  is right, but a converter that assigns by order and checks shapes puts
  the bias on the scale and the scale on the bias."""

  def __init__(self, bn):
    super().__init__()
    for name in ("bias", "weight", "running_mean", "running_var"):
      self.register_buffer(name, getattr(bn, name).detach().clone())
    self.eps = bn.eps

  def forward(self, x):
    return torch.nn.functional.batch_norm(
        x, self.running_mean, self.running_var, self.weight, self.bias,
        False, 0.0, self.eps)


def _convert(conv, src, out):
  conv.main(["--torchscript", src, "--out", out, "--check_clip",
             ",".join(map(str, SMALL_CLIP)), "--resize_clip",
             ",".join(map(str, RESIZE_CLIP))])


def test_torchscript_is_converted_verified_and_its_provenance_logged(
    reference, detector_file, tmp_path, capsys, caplog):
  _, sd = reference
  conv = load_tool("convert_i3d")
  names = list(torch.jit.load(detector_file).state_dict())
  assert names[0] == "i3d.net.logits.conv3d.weight"  # matched in order
  out = str(tmp_path / "i3d.npz")
  _convert(conv, detector_file, out)
  assert "verified: max relative difference" in capsys.readouterr().out
  # The tensors landed where the port's names say (test_parity_with_the_
  # pytorch_i3d checks those at 224 x 224).
  params, record = i3d.load(out, with_provenance=True)
  jax.tree.map(np.testing.assert_array_equal, params,
               conv.convert_state_dict(sd))
  # Provenance: the file, its hash, the kind of weights, the date, the check.
  with open(detector_file, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert record["source"] == "i3d_torchscript.pt"
  assert record["sha256"] == digest and record["weights"] == "torchscript"
  assert record["converted"].startswith("20")
  assert 0 <= record["max_rel_diff"] < 1e-4 and record["tolerance"] == 1e-4
  assert 0 <= record["resize_max_rel_diff"] < 1e-5
  assert json.loads(str(np.load(out)["provenance"])) == record
  # The evaluators' loader logs it in one line; a file from before the tool
  # stored provenance still loads, and says it has none.
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  old = str(tmp_path / "old.npz")
  u.save_npz_tree(old, params)
  with caplog.at_level(logging.INFO):
    assert common.load_i3d(out, mesh, "rFVD") is not None
    assert common.load_i3d(old, mesh, "rFVD") is not None
  lines = [r.getMessage() for r in caplog.records if "rFVD: I3D" in r.getMessage()]
  assert len(lines) == 2
  assert f"i3d_torchscript.pt (torchscript, sha256 {digest})" in lines[0]
  assert "max relative difference" in lines[0] and "\n" not in lines[0]
  assert old in lines[1] and "no provenance recorded" in lines[1]


def test_torchscript_with_reordered_batchnorm_tensors_is_refused(
    reference, tmp_path):
  """Other names, same shapes: only the forward pass can tell that one
  BatchNorm's scale and bias come in the other order."""
  net = copy.deepcopy(reference[0])
  net.Mixed_4b.b1b.bn = ReorderedBatchNorm(net.Mixed_4b.b1b.bn)
  src = save_detector(net, str(tmp_path / "reordered.pt"))
  names = list(torch.jit.load(src).state_dict())
  k = names.index("i3d.net.Mixed_4b.b1b.bn.bias")
  assert names[k + 1] == "i3d.net.Mixed_4b.b1b.bn.weight"
  out = str(tmp_path / "reordered.npz")
  with pytest.raises(SystemExit) as e:
    _convert(load_tool("convert_i3d"), src, out)
  message = str(e.value.code)
  assert "REFUSED, nothing written" in message
  figure = re.search(r"max relative difference (\S+) ", message)
  assert figure and float(figure.group(1)) > 1e-4, message
  assert not os.path.exists(out)
  # A swap that makes a variance negative gives NaN logits: also refused.
  conv = load_tool("convert_i3d")
  assert conv.relative_difference(np.full(3, np.nan), np.ones(3)) == np.inf


class FewLogitsOff(torch.nn.Module):
  """A detector whose logits are those of `det` except 3 of the 400, each
  off by 5e-4 of the largest: a conversion wrong in a few logits only. No
  tensors of its own, so the converter sees the same weights as det's."""

  def __init__(self, det):
    super().__init__()
    self.det = det

  def forward(self, videos, rescale: bool = False, resize: bool = False,
              return_features: bool = False):
    logits = self.det(videos, rescale=rescale, resize=resize,
                      return_features=True)
    bump = 5e-4 * logits.abs().max()
    out = logits.clone()
    for k in (7, 123, 301):
      out[:, k] = out[:, k] + bump
    return out if return_features else torch.softmax(out, dim=1)


def test_a_conversion_wrong_in_a_few_logits_only_is_refused(detector_file,
                                                            tmp_path):
  """3 logits of 400 off by 5e-4 of the largest: the max relative difference
  is 5e-4 / (1 + <= 5e-4), above the tolerance 1e-4, and the tool refuses,
  naming that figure (a mean over the logits, 4e-6, would pass)."""
  src = str(tmp_path / "few_off.pt")
  torch.jit.script(FewLogitsOff(torch.jit.load(detector_file))).save(src)
  out = str(tmp_path / "few_off.npz")
  with pytest.raises(SystemExit) as e:
    _convert(load_tool("convert_i3d"), src, out)
  message = str(e.value.code)
  assert "REFUSED, nothing written" in message
  figure = float(re.search(r"max relative difference (\S+) ", message)[1])
  assert figure == pytest.approx(5e-4, rel=2e-3), message
  assert not os.path.exists(out)


def test_a_detector_whose_resize_differs_is_refused(reference, tmp_path):
  """The same weights, but the detector resizes 128-pixel clips to 224 by
  nearest neighbour: the logits at 224 agree, the features of a 128-pixel
  clip differ (by ~2.5e-5 of the largest with these random weights; a
  bilinear resize like ours by ~5e-7), and nothing is written."""
  src = save_detector(reference[0], str(tmp_path / "nearest.pt"),
                      mode="nearest")
  out = str(tmp_path / "nearest.npz")
  with pytest.raises(SystemExit) as e:
    _convert(load_tool("convert_i3d"), src, out)
  message = str(e.value.code)
  assert "through the resize to 224" in message and "REFUSED" in message
  assert not os.path.exists(out)


def test_a_file_of_another_network_lists_its_tensors(tmp_path):
  conv = load_tool("convert_i3d")
  with pytest.raises(ValueError, match=r"(?s)has 2 tensors.*Its tensors:\n"
                     r"  net\.a\.weight \(3, 4\)\n  net\.b\.bias \(5,\)"):
    conv.convert_state_dict({"net.a.weight": np.zeros((3, 4)),
                             "net.b.bias": np.zeros(5)})
