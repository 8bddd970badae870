"""Shared test helpers."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).parents[1]


def load_tool(name: str):
  """tools/<name>.py as a module (tools/ is scripts, not a package)."""
  spec = importlib.util.spec_from_file_location(f"tool_{name}",
                                                ROOT / "tools" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod
