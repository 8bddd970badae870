"""Helpers for configs: `parse_arg` for `--config=file.py:key=value,...` and
a check that a config only uses keys the code knows about."""
from typing import Any

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


def parse_arg(arg, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
  """big_vision's parser: "variant=S-B/16,res=256,runlocal" -> ConfigDict.

  A bare name sets a boolean to True. Values are cast to the type of their
  default. Unknown names raise unless `lazy` (then they are kept as strings).
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  for item in str(arg).split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in spec:
      if not lazy:
        raise ValueError(f"Unknown config argument {key!r}; known: "
                         f"{sorted(spec)}")
      out[key] = value
      continue
    out[key] = _coerce(value if "=" in item else "true", spec[key])
  return out


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
      raise ValueError(f"Unknown config key {path!r}; valid keys here: "
                       f"{sorted(defaults.keys())}")
    sub, ref = config[key], defaults[key]
    if isinstance(sub, (dict, ml_collections.ConfigDict)) and isinstance(
        ref, (dict, ml_collections.ConfigDict)):
      check_keys(sub, ref, path)


def merge_defaults(config, defaults) -> ml_collections.ConfigDict:
  """`defaults` overridden by `config` (after check_keys), as a new dict."""
  check_keys(config, defaults)
  out = ml_collections.ConfigDict(defaults.to_dict() if hasattr(
      defaults, "to_dict") else defaults)

  def _update(dst, src):
    for k in src.keys():
      v = src[k]
      if isinstance(v, (dict, ml_collections.ConfigDict)) and isinstance(
          dst.get(k), (dict, ml_collections.ConfigDict)):
        _update(dst[k], v)
      else:
        with dst.ignore_type():
          dst[k] = v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
  _update(out, config)
  return out


def check_ranges(config, ranges: dict) -> None:
  """Raises ValueError naming the first key outside its valid range.

  ranges: {"a.b": (lowest, highest, lowest allowed?, highest allowed?)},
  None = unbounded; a None value (an optional key) is not checked.
  """
  for key, (lo, hi, lo_ok, hi_ok) in ranges.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if value is None:
      continue
    bad = (value != value or (lo is not None and (
        value < lo or (value == lo and not lo_ok))) or (hi is not None and (
            value > hi or (value == hi and not hi_ok))))
    if bad:
      interval = (("[" if lo_ok else "(") + f"{lo}, " +
                  (f"{hi}" if hi is not None else "inf") +
                  ("]" if hi_ok else ")"))
      raise ValueError(f"config.{key}={value!r} is outside its valid range "
                       f"{interval}")
