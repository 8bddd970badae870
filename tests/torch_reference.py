"""Imports of the PyTorch reference implementations used by parity tests.

PyPI's torchvision is a CUDA build; on the CPU torch wheel its import fails
with "operator torchvision::nms does not exist" because the compiled ops
library does not load. Declaring the two op schemas it registers fake kernels
for lets the pure-Python models (VGG16, InceptionV3) import; no op is stubbed
with an implementation, and the detection ops stay unusable.
"""
import pytest

torch = pytest.importorskip("torch")


def _declare_torchvision_ops():
  for name in ("nms", "qnms"):
    try:
      torch.library.define(
          f"torchvision::{name}",
          "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already declared (or the real library loaded)
      pass


def import_torchvision():
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except RuntimeError:
    _declare_torchvision_ops()
    import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision


def import_lpips():
  import_torchvision()
  return pytest.importorskip("lpips")


def import_pytorch_fid_inception():
  import_torchvision()
  return pytest.importorskip("pytorch_fid.inception")


def import_torch_fidelity_isc():
  """torch-fidelity's Inception Score from features (metric_isc)."""
  import_torchvision()
  pytest.importorskip("torch_fidelity")
  import torch_fidelity.metric_isc as metric_isc  # pylint: disable=g-import-not-at-top
  return metric_isc


def import_torch_fidelity_prc():
  """torch-fidelity's improved precision/recall from features (metric_prc)."""
  import_torchvision()
  pytest.importorskip("torch_fidelity")
  import torch_fidelity.metric_prc as metric_prc  # pylint: disable=g-import-not-at-top
  return metric_prc
