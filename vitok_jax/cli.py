"""What every command (train, eval, sample, export) shares.

  * `--config=PATH[:args]`: a PATH missing from the working directory is
    looked up relative to the repository (or, after `pip install .`, to
    site-packages, where `configs/` is installed beside the package), so
    `vitok-train --config=configs/vitok/s_b16_256.py` works from anywhere;
  * flag and config errors are one line that names the key (and the closest
    valid one), exit status 2; a job's failure names the job;
  * `--help` exits 0 and lists the job's own flags (absl's exits 1);
  * `run_config`: the config a run stored with its checkpoints, so that the
    eval, sample and export jobs need no `--config` (it stays an override).
"""
import difflib
import os
import pathlib
import sys
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging
import ml_collections

# The folder that holds both `vitok_jax/` and `configs/`: the repository for
# an editable install or a checkout, site-packages for `pip install .`.
REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIG_ERROR_STATUS = 2  # as argparse's usage errors


def find_config(path: str) -> str:
  """PATH as given when it exists (relative to the cwd), else the same
  relative path under REPO when that exists; otherwise unchanged (the config
  loader then fails naming it)."""
  if not path or os.path.isabs(path) or os.path.exists(path):
    return path
  alt = REPO / path
  return str(alt) if alt.exists() else path


def resolve_config_args(argv):
  """argv with `--config=PATH[:args]` (or `--config PATH`) found via
  find_config, and `--config.mesh=data:4,fsdp:4` written as the config's
  tuple of (name, size) pairs."""
  out, i = list(argv), 1
  while i < len(out):
    a = out[i]
    if a.startswith("--config="):
      path, sep, args = a[len("--config="):].partition(":")
      out[i] = "--config=" + find_config(path) + sep + args
    elif a.startswith("--config.mesh=") and not a.split("=", 1)[1].lstrip(
        ).startswith(("(", "[")):
      # The tools' short spelling, data:4,fsdp:4 (sharding.parse_mesh).
      from vitok_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
      out[i] = "--config.mesh=" + repr(sharding.parse_mesh(a.split("=", 1)[1]))
    elif a == "--config" and i + 1 < len(out):
      path, sep, args = out[i + 1].partition(":")
      out[i + 1] = find_config(path) + sep + args
      i += 1
    i += 1
  return out


def _closest(word: str, choices) -> str:
  close = difflib.get_close_matches(word, [str(c) for c in choices], n=1,
                                    cutoff=0.4)
  return f" (closest valid key: {close[0]!r})" if close else ""


def _base_config(argv):
  """The --config file loaded with its ':args' and no overrides, or None."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  spec = [a for a in argv if a.startswith("--config=")]
  if not spec:
    return None
  fv = flags.FlagValues()
  args = [argv[0], spec[-1]]
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                  sys_argv=args)
  fv(args)
  return fv.config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """A config file with its ':args' (`configs/vitok/s_b16_256.py:runlocal`),
  found via find_config; for tools that take no --config.x.y overrides."""
  path, sep, args = spec.partition(":")
  return _base_config(["load", "--config=" + find_config(path) + sep + args])


def unknown_override(argv) -> Optional[str]:
  """The first `--config.a.b=v` of argv whose key the config lacks, as a
  message naming it and the closest valid key; None when all exist."""
  try:
    config = _base_config(argv)
  except Exception:  # pylint: disable=broad-except
    return None  # the file itself fails: its own message says why
  if config is None:
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    key = a[len("--config."):].split("=")[0]
    node, seen = config, "config"
    for part in key.split("."):
      keys = list(node.keys()) if isinstance(
          node, (dict, ml_collections.ConfigDict)) else []
      if part not in keys:
        return (f"--config.{key}: {seen} has no key {part!r}" +
                _closest(part, keys))
      node, seen = node[part], f"{seen}.{part}"
  return None


def _innermost(e: BaseException) -> str:
  """The message of the first exception in e's chain of causes (config_flags
  wraps a config file's own ValueError in "Error whilst parsing ...")."""
  while e.__cause__ is not None or (e.__context__ is not None and
                                    not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  return f"--config: {e}" if isinstance(e, ValueError) else (
      f"--config: {type(e).__name__}: {e}")


def config_error(job: str, message: str) -> None:
  """Prints `<job>: config error: <message>` (its first line) and exits 2."""
  lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
  # config_flags puts a config file's traceback inside its message: the
  # last line is the file's own error.
  line = (lines[-1] if any(l.startswith("Traceback") for l in lines) else
          lines[0]) if lines else ""
  print(f"{job}: config error: {line}", file=sys.stderr, flush=True)
  sys.exit(CONFIG_ERROR_STATUS)


def _print_help(job: str, doc: str) -> None:
  print(f"{job}\n\n{(doc or '').strip()}\n\nflags:")
  by_module = flags.FLAGS.flags_by_module_dict()
  for module in sorted(by_module):
    # Under `python -m`, absl files the job's flags under its file's path.
    if module == "__main__" or "vitok_jax" in module:
      print(flags.FLAGS.module_help(module))
  sys.stdout.flush()


def flags_parser(job: str, doc: str = "") -> Callable:
  """app.run's flags_parser: config paths found from any cwd, --help with
  exit 0, and every flag or config error as one line with exit 2."""

  def parse(argv):
    argv = resolve_config_args(argv)
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
      _print_help(job, doc)
      sys.exit(0)
    for a in argv:
      path = a[len("--config="):].partition(":")[0]
      if a.startswith("--config=") and not os.path.exists(path):
        where = sorted({os.getcwd(), str(REPO)})
        config_error(job, f"--config: no file {path!r} (looked in "
                     f"{' and '.join(where)})")
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      config_error(job, unknown_override(argv) or (
          _innermost(e) if e.__cause__ else e))
    except Exception as e:  # pylint: disable=broad-except
      # A config file that fails to load, or ml_collections' bare
      # AttributeError("'lrr'") for an override whose key does not exist.
      config_error(job, unknown_override(argv) or _innermost(e))
    return None

  return parse


def check_config(job: str, resolve: Callable, config):
  """resolve(config) (a trainer's resolve_config), or one line and exit 2
  when a key is unknown or a value breaks its rule."""
  try:
    return resolve(config)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    config_error(job, e)


def run_config(workdir: str, step: Optional[int] = None,
               defaults: Optional[Callable] = None
               ) -> ml_collections.ConfigDict:
  """The config the run at `workdir` saved with its checkpoint `step` (or the
  latest): what the eval, sample and export jobs use without --config.
  defaults(trainer name) -> that trainer's default_config(): keys added to
  it since the run was saved take their defaults (older runs still load)."""
  from vitok_jax.io import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from vitok_jax.io import fileio  # pylint: disable=g-import-not-at-top
  folder, _ = ckpt_lib.step_dir(workdir, step)
  path = fileio.join(folder, "config", "metadata")
  if not fileio.exists(path):
    raise FileNotFoundError(f"{folder} holds no saved config ({path}): pass "
                            "the run's --config")
  config = ml_collections.ConfigDict(fileio.read_json(path))
  if defaults is not None:
    _add_missing(config, defaults(config.get("trainer", "tokenizer")))
  return config


def _add_missing(config, defaults) -> None:
  """Sets the keys of `defaults` that `config` lacks, recursively (a dict
  that is empty in `defaults`, such as evals, is free-form)."""
  for key in defaults.keys():
    if key not in config:  # a saved config is not locked
      config[key] = defaults[key]
    elif isinstance(defaults[key], ml_collections.ConfigDict) and isinstance(
        config[key], ml_collections.ConfigDict) and len(defaults[key].keys()):
      _add_missing(config[key], defaults[key])


def run_job(job: str, fn: Callable[[], object]) -> None:
  """Runs fn; any exception is logged as `<job> failed: ...` and the process
  exits 1 at once, without waiting for library threads (Orbax, grain) that
  could otherwise hold the interpreter at exit. Usage errors and stop
  requests (signals) keep their own exit paths."""
  from vitok_jax.parallel import stop_request  # pylint: disable=g-import-not-at-top
  try:
    fn()
  except (stop_request.StopRequested, app.UsageError, SystemExit):
    raise
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("%s failed: %s: %s", job, type(e).__name__, e)
    logging.flush()
    print(f"{job} failed: {type(e).__name__}: {e}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
