"""PyTorch export: parity on random weights, round trip, sharded runs, errors."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import torch_reference as tr
from tests.helpers import load_tool
from vitok_jax import export
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.models import vitok
from vitok_jax.parallel import sharding as sh
import vitok_jax.torch as vt

torch = tr.torch
TINY = dict(enc_width=48, enc_depth=2, enc_heads=2, dec_width=48, dec_depth=2,
            dec_heads=2)


def _randomize(params, seed=1):
  """Every leaf perturbed (biases, norms, embeddings too) so parity is strict."""
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tdef, [
      l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(a).max()


CASES = {
    "image S-B/16-shaped": ("S-B/8", (2, 16, 24, 3), {}),
    "video q=2": ("S-B/2x8", (2, 4, 16, 16, 3), {}),
    "latent": ("S-B/8", (2, 16, 16, 3), dict(num_latent_tokens=3)),
    "masked l_eval": ("S-B/8", (2, 16, 16, 3), dict(mask_lengths=(1, 2), eval_length=2)),
    "no posemb": ("S-B/8", (2, 16, 16, 3), dict(posemb="none")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_on_random_weights(case, tmp_path):
  variant, shape, kw = CASES[case]
  model = vitok.create(variant, 4, **{**TINY, **kw})
  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  params = _randomize(model.init(jax.random.key(0), x)["params"])
  out = str(tmp_path / "m.safetensors")
  export.export(params, model, out)
  tm = vt.load(out)
  enc = model.apply({"params": params}, x, method="encode")
  recon = model.apply({"params": params}, x)[0]
  with torch.no_grad():
    t_enc = tm.encode(torch.from_numpy(x))
    t_recon = tm(torch.from_numpy(x)).numpy()
    # Round trip: torch encode -> torch decode == the JAX reconstruction.
    t_rt = tm.decode(t_enc["z"], tm.token_grid(x.shape)).numpy()
  assert _rel(enc["mean"], t_enc["mean"].numpy()) < 1e-5
  assert _rel(enc["z"], t_enc["z"].numpy()) < 1e-5
  assert _rel(recon, t_recon) < 1e-5
  assert _rel(np.asarray(recon).reshape(t_rt.shape), t_rt) < 1e-5
  # Decoding the same latents (e.g. from a DiT) agrees too.
  grid = model.token_grid(x.shape)
  z = np.random.default_rng(1).normal(size=enc["z"].shape).astype(np.float32)
  with torch.no_grad():
    t_dec = tm.decode(torch.from_numpy(z), grid).numpy()
  assert _rel(model.apply({"params": params}, z, grid, method="decode"), t_dec) < 1e-5


def test_torch_subpackage_does_not_need_jax():
  import subprocess, sys
  code = ("import sys; sys.modules['jax'] = None; import vitok_jax.torch as vt; "
          "m = vt.ViTok(4, 48, 1, 2, 48, 1, 2, 8, posemb='none'); "
          "import torch; print(m(torch.zeros(1, 16, 16, 3)).shape)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     cwd=pathlib.Path(__file__).parents[1])
  assert r.returncode == 0, r.stderr
  assert "torch.Size([1, 16, 16, 3])" in r.stdout


def test_sharded_checkpoint_exports_like_single_device(tmp_path, capsys):
  from configs.vitok import s_b16_256
  from vitok_jax.trainers import tokenizer
  c = tokenizer.resolve_config(s_b16_256.get_config("runlocal,lpips=0"))
  c.input.update(res=32, batch_size=8)
  c.sharding.fsdp_min_size = 1
  exported = {}
  for name, mesh in (("fsdp8", sh.make_mesh([("data", 1), ("fsdp", 8)])),
                     ("single", sh.make_mesh([("data", 1)], jax.devices()[:1]))):
    setup = tokenizer.make_setup(c, mesh)
    state = setup.init(jax.random.key(0))
    if name == "fsdp8":
      specs = [s.spec for s in jax.tree.leaves(setup.state_sharding["params"])]
      assert any("fsdp" in tuple(s) for s in specs)
    ck = ckpt_lib.Checkpointer(str(tmp_path / name), async_save=False)
    ck.save(0, state, {}, c)
    ck.close()
    out = str(tmp_path / f"{name}.safetensors")
    err = load_tool("export_pytorch").main(["--workdir", str(tmp_path / name), "--out", out, "--verify"])
    assert err < 1e-5
    exported[name] = out
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith("max relative error: ")
  from safetensors.numpy import load_file
  a, b = load_file(exported["fsdp8"]), load_file(exported["single"])
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_mismatched_or_truncated_checkpoints_name_the_parameter(tmp_path):
  model = vitok.create("S-B/8", 4, **TINY)
  x = jnp.zeros((1, 16, 16, 3))
  params = jax.device_get(model.init(jax.random.key(0), x)["params"])
  # A tree with a missing leaf fails at export, naming it.
  broken = jax.tree.map(lambda a: a, params)
  del broken["decoder"]["block_1"]["mlp"]["up"]
  with pytest.raises(ValueError, match=r"missing parameters \['decoder.block_1.mlp.up.weight'\]"):
    export.export(broken, model, str(tmp_path / "b.safetensors"))
  # A truncated weights file fails at load, naming what is missing...
  out = str(tmp_path / "m.safetensors")
  export.export(params, model, out)
  from safetensors.numpy import load_file, save_file
  state = load_file(out)
  del state["encoder.norm.weight"]
  save_file(state, out)
  with pytest.raises(ValueError, match=r"missing parameters \['encoder.norm.weight'\]"):
    vt.load(out)
  # ... and one with an extra tensor names the surplus.
  export.export(params, model, out)
  state = load_file(out)
  state["decoder.block_9.attn.qkv.weight"] = np.zeros((3, 3), np.float32)
  save_file(state, out)
  with pytest.raises(ValueError, match=r"surplus parameters \['decoder.block_9.attn.qkv.weight'\]"):
    vt.load(out)
  with pytest.raises(FileNotFoundError, match="tools/export_pytorch.py"):
    vt.load(str(tmp_path / "nope.safetensors"))


def test_verify_fails_on_nan(tmp_path):
  from configs.vitok import s_b16_256
  from vitok_jax.trainers import tokenizer
  c = tokenizer.resolve_config(s_b16_256.get_config("runlocal,lpips=0"))
  c.input.update(res=32, batch_size=8)
  mesh = sh.make_mesh([("data", 1)], jax.devices()[:1])
  setup = tokenizer.make_setup(c, mesh)
  state = jax.device_get(setup.init(jax.random.key(0)))
  state["params"]["to_pixels"]["bias"] = np.full_like(
      state["params"]["to_pixels"]["bias"], np.nan)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "run"), async_save=False)
  ck.save(0, state, {}, c)
  ck.close()
  with pytest.raises(SystemExit, match="NaN or above --tolerance"):
    load_tool("export_pytorch").main(["--workdir", str(tmp_path / "run"), "--out",
                                      str(tmp_path / "m.safetensors"), "--verify"])


# ---------------------------------------------------------------- the DiT
DIT_CASES = {"grid of codes": ((1, 2, 3), 6), "1D codes": (None, 5)}


@pytest.mark.parametrize("case", list(DIT_CASES))
def test_dit_parity_and_torch_ddim_sampling(case, tmp_path):
  from vitok_jax.diffusion import ddpm
  from vitok_jax.diffusion import flow
  from vitok_jax.diffusion import codec as codec_lib
  from vitok_jax.models import dit
  grid, n = DIT_CASES[case]
  model = dit.create("mu", 4, 3)
  x = np.random.default_rng(0).standard_normal((3, n, 4)).astype(np.float32)
  t = np.array([0, 500, 999], np.int32)
  y = np.array([0, 2, 3], np.int32)  # 3 = the null class
  # Random everything: the zero-initialised gates and head would make a
  # fresh DiT's parity trivial.
  params = _randomize(model.init(jax.random.key(0), x, t, y, grid)["params"],
                      seed=2)
  stats = codec_lib.LatentStats(np.full(4, 0.5, np.float32),
                                  np.full(4, 2.0, np.float32))
  out = str(tmp_path / "dit.safetensors")
  export.export_dit(params, model, out, stats, grid=grid)
  tm, tstats = vt.load_dit(out)
  ours = model.apply({"params": params}, x, t, y, grid)
  with torch.no_grad():
    theirs = tm(torch.from_numpy(x), torch.from_numpy(t).long(),
                torch.from_numpy(y).long()).numpy()
  assert np.abs(np.asarray(ours)).max() > 0.1
  assert _rel(ours, theirs) < 1e-5
  np.testing.assert_array_equal(tstats["std"].numpy(), 2.0)
  # DDIM with CFG 1.5 from the same x_T: the torch sampler equals ours.
  sched = ddpm.linear_schedule()
  labels = jnp.array([0, 1, 2])
  eps = lambda x, t, y: model.apply({"params": params}, x, t, y, grid)
  ours = ddpm.ddim_sample(
      lambda x, t: ddpm.guided_eps(eps, x, t, labels, 3, 1.5), sched,
      jnp.asarray(x), num_steps=10)
  theirs = vt.dit.ddim_sample(tm, torch.tensor([0, 1, 2]), torch.from_numpy(x),
                              num_steps=10, cfg_scale=1.5).numpy()
  assert _rel(ours, theirs) < 1e-4
  # A flow-matching DiT: Heun (and Euler) with CFG on the velocities.
  for solver in flow.SOLVERS:
    ours = flow.ode_sample(
        lambda x, t: ddpm.guided_eps(eps, x, t, labels, 3, 1.5),
        jnp.asarray(x), 6, solver)
    theirs = vt.dit.flow_sample(tm, torch.tensor([0, 1, 2]),
                                torch.from_numpy(x), num_steps=6,
                                cfg_scale=1.5, solver=solver).numpy()
    assert _rel(ours, theirs) < 1e-4, solver
  with pytest.raises(ValueError, match="not a ViTok; use vitok_jax.torch.load_dit"):
    vt.load(out)
