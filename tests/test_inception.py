"""FID InceptionV3 port: parity with pytorch_fid on the same random weights."""
import jax
import numpy as np
import pytest

from tests import torch_reference as tr
from tests.helpers import load_tool
from vitok_jax.evaluators import metrics
from vitok_jax.models import inception

torch = tr.torch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """pytorch_fid's InceptionV3 built from random weights saved as a .pth
  (its download bypassed), and our .npz converted from the same file."""
  fid = tr.import_pytorch_fid_inception()
  tmp = tmp_path_factory.mktemp("inception")
  # The FID architecture, as fid_inception_v3() builds it, minus the download.
  net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  for name, cls, arg in [("Mixed_5b", fid.FIDInceptionA, (192, 32)),
                         ("Mixed_5c", fid.FIDInceptionA, (256, 64)),
                         ("Mixed_5d", fid.FIDInceptionA, (288, 64)),
                         ("Mixed_6b", fid.FIDInceptionC, (768, 128)),
                         ("Mixed_6c", fid.FIDInceptionC, (768, 160)),
                         ("Mixed_6d", fid.FIDInceptionC, (768, 160)),
                         ("Mixed_6e", fid.FIDInceptionC, (768, 192)),
                         ("Mixed_7b", fid.FIDInceptionE_1, (1280,)),
                         ("Mixed_7c", fid.FIDInceptionE_2, (2048,))]:
    setattr(net, name, cls(*arg))
  g = torch.Generator().manual_seed(0)
  state = {}
  for k, v in net.state_dict().items():
    if k.endswith("num_batches_tracked"):
      state[k] = v
    elif k.endswith("conv.weight"):
      fan_in = v[0].numel()
      state[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
    elif k.endswith("bn.weight") or k.endswith("running_var"):
      state[k] = 0.5 + torch.rand(v.shape, generator=g)
    elif k.endswith("bn.bias") or k.endswith("running_mean"):
      state[k] = 0.1 * torch.randn(v.shape, generator=g)
    elif k == "fc.weight":
      state[k] = 0.05 * torch.randn(v.shape, generator=g)
    else:  # fc.bias: large, so that adding it would change the IS
      state[k] = 2.0 * torch.randn(v.shape, generator=g)
  pth = tmp / "pt_inception_random.pth"
  torch.save(state, pth)
  orig = fid.load_state_dict_from_url
  fid.load_state_dict_from_url = lambda *a, **k: torch.load(pth, weights_only=True)
  try:
    ref = fid.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  finally:
    fid.load_state_dict_from_url = orig
  load_tool("convert_inception").main(["--pth", str(pth), "--out", str(tmp / "inc.npz")])
  return ref, state, str(tmp / "inc.npz")


def test_pool_features_and_logits_match_pytorch_fid(reference):
  """...and ADM's sFID features: mixed_6/conv, the ReLU output of
  Mixed_6d.branch1x1, its first 7 channels flattened in NHWC order."""
  ref, state, path = reference
  params = inception.load(path)
  x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
  pool, logits, spatial = jax.jit(inception.FIDInceptionV3(spatial=True).apply)(
      {"params": params}, x)
  # pytorch_fid's block 2 is Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, unnamed:
  # 6b, 6c, 6d, 6e have 128, 160, 160, 192 channels_7x7.
  assert [ref.blocks[2][i].branch7x7_1.conv.out_channels
          for i in range(4, 8)] == [128, 160, 160, 192]
  branch = ref.blocks[2][6].branch1x1
  seen = []
  hook = branch.register_forward_hook(lambda m, i, o: seen.append(o))
  with torch.no_grad():
    t_pool = ref(torch.from_numpy(x).permute(0, 3, 1, 2))[0].reshape(2, -1)
    t_logits = t_pool @ state["fc.weight"].T  # unbiased
  hook.remove()
  t_spatial = seen[0][:, :7].permute(0, 2, 3, 1).reshape(2, -1).numpy()
  assert spatial.shape == t_spatial.shape == (2, 2023)
  rel_s = np.abs(np.asarray(spatial) - t_spatial).max() / np.abs(t_spatial).max()
  assert rel_s < 1e-4, rel_s
  rel = np.abs(np.asarray(pool) - t_pool.numpy()).max() / np.abs(t_pool.numpy()).max()
  assert rel < 1e-4, rel
  rel_l = np.abs(np.asarray(logits) - t_logits.numpy()).max() / np.abs(t_logits.numpy()).max()
  assert rel_l < 1e-4, rel_l
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008)


def test_inception_score_is_torch_fidelitys_unbiased_one(reference):
  """Ours (streamed, 4 splits) against torch-fidelity's IS computed on
  pytorch-fid's pool features times the fc weights (no bias), same weights."""
  metric_isc = tr.import_torch_fidelity_isc()
  ref, state, path = reference
  params = inception.load(path)
  assert "bias" not in params["fc"]
  n, splits = 40, 4
  # Blocky images of different colours.
  low = np.random.default_rng(2).uniform(0, 1, (n, 6, 6, 3)).astype(np.float32)
  x = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)
  with torch.no_grad():
    pool = ref(torch.from_numpy(x).permute(0, 3, 1, 2))[0].reshape(n, -1).double()
  # Random pool features share a large mean, which makes every posterior
  # the same (IS ~ 1); fc weights orthogonal to it let posteriors differ.
  # Both sides use these weights; the bias stays the fixture's.
  mu = pool.mean(0)
  w = torch.randn(2048, 1008, generator=torch.Generator().manual_seed(3),
                  dtype=torch.float64)
  w -= torch.outer(mu, mu @ w) / (mu @ mu)
  w *= 3.0 / (pool @ w).std()
  params["fc"]["kernel"] = jax.numpy.asarray(w.numpy(), jax.numpy.float32)
  apply = jax.jit(inception.FIDInceptionV3().apply)
  score = metrics.InceptionScore(n, splits)
  for i in range(0, n, 6):  # streamed in uneven pieces across split borders
    score.update(np.asarray(apply({"params": params}, x[i:i + 6])[1]))
  ours, ours_std = score.result()
  unbiased = pool @ w
  theirs = metric_isc.isc_features_to_metric(unbiased, splits=splits,
                                             shuffle=False)
  assert ours > 1.5  # a score with room to differ
  assert ours == pytest.approx(theirs["inception_score_mean"], rel=1e-3)
  assert ours_std == pytest.approx(theirs["inception_score_std"], rel=1e-2,
                                   abs=1e-3)
  biased = metric_isc.isc_features_to_metric(
      unbiased + 3.0 * state["fc.bias"].double(), splits=splits, shuffle=False)
  assert abs(biased["inception_score_mean"] - ours) > 0.05 * ours


@pytest.mark.parametrize("size", [64, 512])
def test_resize_matches_torch_bilinear(size):
  x = np.random.default_rng(1).uniform(0, 1, (1, size, size, 3)).astype(np.float32)
  ours = np.asarray(inception.resize_bilinear(x, 299))
  theirs = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_missing_weights_names_file_and_tool(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz.*tools/convert_inception.py"):
    inception.load(str(tmp_path / "nope.npz"))
