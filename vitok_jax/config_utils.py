"""Helpers for configs (docs/configs.md says how they are written):

  * `parse_arg`: the arguments after the colon of
    `--config=file.py:key=value,...`, typed by their defaults; with
    `runlocal`, the config's small-machine defaults (local_defaults) apply
    first and explicit arguments still win;
  * `check_keys`: a config uses only keys its trainer's default config has;
  * named validators (`POSITIVE`, `FRACTION`, ...) and `check_values`, which
    fails naming the key and the rule it breaks.
"""
from typing import Any, Callable, NamedTuple, Optional

import ml_collections


def _coerce(value: str, default: Any) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("", "true", "1", "yes"):
      return True
    if value.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"Expected a boolean, got {value!r}")
  if default is None:
    return value
  return type(default)(value)


def _did_you_mean(word: str, choices) -> str:
  import difflib  # pylint: disable=g-import-not-at-top
  close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def parse_arg(arg, lazy: bool = False, local_defaults: Optional[dict] = None,
              **spec) -> ml_collections.ConfigDict:
  """big_vision's parser: "variant=S-B/16,res=256,runlocal" -> ConfigDict.

  A bare name sets a boolean to True. Values are cast to the type of their
  default. Unknown names raise unless `lazy` (then they are kept as strings).
  `local_defaults`: the defaults that change when the argument `runlocal`
  is set (a small run for one CPU); arguments given explicitly override
  them.
  """
  out = ml_collections.ConfigDict(dict(spec))
  items = [i for i in str(arg or "").split(",") if i]
  given = {}
  for item in items:
    key, _, value = item.partition("=")
    if key not in spec:
      if not lazy:
        raise ValueError(f"Unknown config argument {key!r}"
                         f"{_did_you_mean(key, spec)}; known: {sorted(spec)}")
      given[key] = value
      continue
    given[key] = _coerce(value if "=" in item else "true", spec[key])
  if local_defaults and given.get("runlocal"):
    unknown = set(local_defaults) - set(spec)
    if unknown:
      raise ValueError(f"runlocal defaults for unknown arguments "
                       f"{sorted(unknown)}")
    out.update(local_defaults)
  for key, value in given.items():
    out[key] = value
  return out


def arguments(spec: dict, given: dict, who: str = "config"
              ) -> ml_collections.ConfigDict:
  """A config file's arguments: `spec` (its ARGS: every name with its
  default) with the `given` ones set; a name not in spec fails, naming the
  closest one. Config files name their arguments once, in ARGS, and their
  make(**args) reads them from this (`a.res`)."""
  unknown = sorted(set(given) - set(spec))
  if unknown:
    raise ValueError(f"{who}: unknown argument {unknown[0]!r}"
                     f"{_did_you_mean(unknown[0], spec)}; known: "
                     f"{sorted(spec)}")
  return ml_collections.ConfigDict(dict(spec, **given))


def check_keys(config, defaults, prefix="config") -> None:
  """Raises ValueError on a key of `config` that `defaults` does not have.

  Catches typos (config.optim.lrr) that ConfigDict would silently accept.
  A dict that is empty in `defaults` (e.g. config.evals) is free-form.
  """
  if isinstance(defaults, (dict, ml_collections.ConfigDict)) and not len(
      defaults.keys()):
    return
  for key in config.keys():
    path = f"{prefix}.{key}"
    if key not in defaults:
      raise ValueError(f"Unknown config key {path!r}"
                       f"{_did_you_mean(key, defaults.keys())}; valid keys "
                       f"here: {sorted(defaults.keys())}")
    sub, ref = config[key], defaults[key]
    if isinstance(sub, (dict, ml_collections.ConfigDict)) and isinstance(
        ref, (dict, ml_collections.ConfigDict)):
      check_keys(sub, ref, path)


def missing_keys(config, defaults, prefix="config") -> list:
  """Keys of `defaults` that `config` lacks (free-form dicts excepted)."""
  out = []
  if not len(defaults.keys()):
    return out
  for key in defaults.keys():
    path = f"{prefix}.{key}"
    if key not in config:
      out.append(path)
    elif isinstance(defaults[key], ml_collections.ConfigDict) and isinstance(
        config[key], (dict, ml_collections.ConfigDict)):
      out += missing_keys(config[key], defaults[key], path)
  return out


def with_defaults(config, defaults, prefix="config"
                  ) -> ml_collections.ConfigDict:
  """`defaults` (a complete ConfigDict, typed placeholders kept) with the
  keys of `config` set over it, after check_keys. For partial dicts such as
  an evaluator's entry written as a plain dict."""
  check_keys(config, defaults, prefix)
  out = defaults  # a fresh dict from a default_config() function

  def _update(dst, src):
    for k in src.keys():
      v = src[k]
      if isinstance(v, (dict, ml_collections.ConfigDict)) and isinstance(
          dst.get(k), ml_collections.ConfigDict) and len(dst[k].keys()):
        _update(dst[k], v)
      else:
        with dst.ignore_type():
          dst[k] = v
  _update(out, config)
  return out


# --------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------
class Validator(NamedTuple):
  """A rule a numeric config value must satisfy; `rule` names it."""
  rule: str  # "> 0", "in [0, 1)"
  ok: Callable[[Any], bool]


POSITIVE = Validator("> 0", lambda v: v > 0)
NON_NEGATIVE = Validator(">= 0", lambda v: v >= 0)
FRACTION = Validator("in [0, 1)", lambda v: 0 <= v < 1)  # decays, betas
UNIT_INTERVAL = Validator("in [0, 1]", lambda v: 0 <= v <= 1)
OPEN_UNIT_INTERVAL = Validator("in (0, 1)", lambda v: 0 < v < 1)


def check_values(config, validators: dict) -> None:
  """Raises ValueError naming the first key whose value breaks its rule.

  validators: {"a.b": Validator}. An unset value (None: a typed placeholder
  not given) is not checked; NaN breaks every rule.
  """
  for key, validator in validators.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if value is None:
      continue
    if value != value or not validator.ok(value):
      raise ValueError(f"config.{key}={value!r} is invalid: it must be "
                       f"{validator.rule}")
