"""tools/convert_weights.py: every pretrained network in one command, each
source file checked by sha256, and where to get each missing one."""
import hashlib

import numpy as np
import pytest

from tests.helpers import load_tool

cw = load_tool("convert_weights")
VGG_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def test_hash_prefixes_come_from_the_torch_hub_names():
  assert cw.name_prefix("vgg16-397923af.pth") == "397923af"
  assert cw.name_prefix("pt_inception-2015-12-05-6726825d.pth") == "6726825d"
  assert cw.name_prefix("i3d_torchscript.pt") is None
  assert cw.name_prefix("vgg.pth") is None


def test_missing_files_say_where_to_get_them(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(cw.importlib.util, "find_spec", lambda name: None)
  status = cw.main(["--src", str(tmp_path / "empty"), "--out",
                    str(tmp_path / "w")])
  assert status == {n: "missing" for n in cw.NETWORKS}
  out = capsys.readouterr().out
  for name, (_, where) in cw.FILES.items():
    assert f"{name} (get it from {where})" in out
  assert "download.pytorch.org/models/vgg16-397923af.pth" in out


def test_a_file_that_is_not_the_known_one_is_refused(tmp_path, capsys):
  src = tmp_path / "src"
  src.mkdir()
  (src / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not it")
  status = cw.main(["--src", str(src), "--out", str(tmp_path / "w"),
                    "--only", "fid_inception_v3.npz"])
  assert status["fid_inception_v3.npz"].startswith("refused")
  assert "does NOT match the name's sha256 prefix 6726825d" in (
      capsys.readouterr().out)
  assert not (tmp_path / "w" / "fid_inception_v3.npz").exists()


def test_lpips_converts_through_its_tool_with_the_known_linear_layers(
    tmp_path, monkeypatch, capsys):
  """The lpips package's vgg.pth matches the digest the tool knows; a VGG
  of the right shapes (zeros here: its digest stands in for torchvision's)
  is converted by tools/convert_lpips.py."""
  torch = pytest.importorskip("torch")
  if cw.find("vgg.pth", str(tmp_path)) is None:  # not imported: no torchvision
    pytest.skip("the lpips package is not installed")
  src = tmp_path / "src"
  src.mkdir()
  sd, c_in = {}, 3
  for idx, c in zip(cw.load_tool("convert_lpips").VGG_CONV_INDICES,
                    VGG_CHANNELS):
    sd[f"features.{idx}.weight"] = torch.zeros(c, c_in, 3, 3)
    sd[f"features.{idx}.bias"] = torch.zeros(c)
    c_in = c
  vgg = src / "vgg16-397923af.pth"
  torch.save(sd, vgg)
  digest = hashlib.sha256(vgg.read_bytes()).hexdigest()
  monkeypatch.setitem(cw.FILES, "vgg16-397923af.pth", (digest, "here"))
  status = cw.main(["--src", str(src), "--out", str(tmp_path / "w"),
                    "--only", "lpips_vgg16.npz"])
  assert status == {"lpips_vgg16.npz": "converted"}
  out = capsys.readouterr().out
  assert "vgg.pth: sha256 " + cw.FILES["vgg.pth"][0] + " matches" in out
  with np.load(tmp_path / "w" / "lpips_vgg16.npz") as f:
    assert f["vgg/conv5_3/kernel"].shape == (3, 3, 512, 512)
    assert f["lin4"].shape == (512,)
  # Run again: kept, not converted twice.
  assert cw.main(["--src", str(src), "--out", str(tmp_path / "w"), "--only",
                  "lpips_vgg16.npz"]) == {"lpips_vgg16.npz": "kept"}
