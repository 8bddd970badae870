"""Every training/evaluation command that the README, docs/*.md or a config's
docstring documents resolves: the config file and its arguments parse, every
--config.<key>=<value> override exists (the configs are locked) and arrives,
and the model it describes builds for the configured input."""
import ast
import functools
import os
import pathlib
import re
import shlex

from absl import flags
from ml_collections import config_flags
import pytest

from vitok_jax import cli
from vitok_jax.models import dit as dit_lib
from vitok_jax.models import vitok
from vitok_jax import trainers
from vitok_jax.trainers import dit
from vitok_jax.trainers import tokenizer

ROOT = pathlib.Path(__file__).parents[1]


def documented_commands():
  """(where, [--config=..., --config.k=v, ...]) for each documented line."""
  sources = ([ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) +
             sorted((ROOT / "configs").rglob("*.py")))
  out = []
  for path in sources:
    text = path.read_text()
    if path.suffix == ".py":
      text = ast.get_docstring(ast.parse(text)) or ""
    for n, line in enumerate(text.splitlines(), 1):
      i = line.find("--config=")
      if i < 0:
        continue
      # A shell line continuation ends the line's own part of the command.
      part = line[i:].split(" #")[0].rstrip().rstrip("\\").rstrip()
      # A command in inline code ends at its closing backtick; FILE is a
      # placeholder (a tool's flags explained in prose).
      part = part.split("`")[0]
      if part.startswith("--config=FILE"):
        continue
      # Inside a quoted remote command (gcloud ... --command="cd x && python
      # -m vitok_jax.train --config=..."), the closing quote has no opening one.
      for quote in "\"'":
        if part.count(quote) % 2 and part.endswith(quote):
          part = part[:-1]
      tokens = shlex.split(part)
      out.append((f"{path.relative_to(ROOT)}:{n}",
                  [t for t in tokens if t.startswith("--config")]))
  return out


COMMANDS = documented_commands()


def test_the_docs_document_commands():
  where = {w.split(":")[0] for w, _ in COMMANDS}
  assert {"README.md", "docs/gpu.md", "docs/tpu.md", "docs/generation.md",
          "docs/video.md", "docs/training.md", "configs/vitok/s_b16_256.py",
          "configs/vitok/s_b16_256_stage2.py",
          "configs/dit/dit_l_vitok_s_b16_256.py",
          "configs/dit/dit_xl_vitok_s_b16_256.py",
          "configs/dit/dit_xl_vitok_s_b16_512.py"} <= where
  assert any("--config.model.mask_lengths" in " ".join(t) for _, t in COMMANDS)


def _value(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


@pytest.mark.parametrize("where,tokens", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_resolves(where, tokens, tmp_path, monkeypatch):
  del where
  monkeypatch.chdir(ROOT)  # config paths in the docs are relative to the root
  # Run directories of the docs (/runs/s1) become real, empty folders here.
  tokens = [t.replace("/runs/", f"{tmp_path}/runs/") for t in tokens]
  for m in re.finditer(r"init_from=([^,\s]+)", " ".join(tokens)):
    os.makedirs(m.group(1), exist_ok=True)
  # As the entry points read them (vitok_jax/cli.py): the mesh's short
  # spelling becomes the config's tuple.
  tokens = cli.resolve_config_args(["train"] + tokens)[1:]
  argv = ["train"] + tokens
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                  lock_config=True,  # as vitok_jax.train
                                  sys_argv=argv)
  fv(argv)
  trainer = trainers.get(fv.config.trainer)
  config = trainer.resolve_config(fv.config)
  for t in tokens[1:]:  # every override reached the resolved config
    key, _, text = t[len("--config."):].partition("=")
    got = functools.reduce(lambda c, k: c[k], key.split("."), config)
    want = _value(text)
    if key == "mesh":
      got, want = tuple(map(tuple, got)), tuple(map(tuple, want))
    assert (tuple(got) == tuple(want) if isinstance(want, tuple) else
            got == want), (key, got, want)
  if trainer is dit:  # the tokenizer's latents are checked at start
    model = dit_lib.from_config(config.model, config.latents.channels,
                                config.num_classes)
    assert model.in_channels == config.latents.channels
    assert model.num_classes == config.num_classes
    return
  model = vitok.from_config(config.model)
  if config.input.naflex:  # no square grid; resolve_config checked the rest
    return
  grid = model.token_grid(tokenizer.input_shape(config, batch=1))
  if model.mask_lengths:
    assert max(model.mask_lengths) <= model.num_codes(grid)


def test_the_readme_pytorch_snippet_runs(monkeypatch):
  """The README's PyTorch block, as written, on small exported-like modules
  (vt.load / vt.load_dit stand in for the files): every name is defined and
  every shape comment holds (decode gives [B, T, H, W, 3])."""
  torch = pytest.importorskip("torch")
  import vitok_jax.torch as vt  # pylint: disable=g-import-not-at-top
  from vitok_jax import export  # pylint: disable=g-import-not-at-top
  text = (ROOT / "README.md").read_text()
  block = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
           if "vt.load(" in b]
  assert len(block) == 1
  model = vt.ViTok(**export.model_config(
      vitok.create("mu-mu/16", code_channels=16),
      {"enc_posemb": {"embedding": torch.zeros(256, 1)}})).eval()  # 16 x 16
  dit = vt.DiT(**export.dit_model_config(
      dit_lib.create("mu", 16, 1000), grid=(1, 16, 16))).eval()
  stats = {"mean": torch.zeros(16), "std": torch.ones(16)}
  monkeypatch.setattr(vt, "load", lambda path: model)
  monkeypatch.setattr(vt, "load_dit", lambda path: (dit, stats))
  # Two DDIM steps stand in for the snippet's 250 (the same code path).
  code = block[0].replace("num_steps=250", "num_steps=2")
  env = {}
  exec(compile(code, "README.md", "exec"), env)  # pylint: disable=exec-used
  assert env["recon"].shape == (1, 256, 256, 3)
  assert env["z"].shape == (1, 256, 16)
  assert tuple(env["grid"]) == (1, 16, 16)
  assert env["images"].shape == (1, 256, 256, 3)
  assert env["samples"].shape == (1, 256, 256, 3)
