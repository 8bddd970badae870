"""The package's layers, read from its import statements: library modules
never import a trainer, the host loop knows only its Task (not the
trainers, not their shared step helpers), and no two modules import each
other, directly or around a cycle. And its layout (docs/layout.md): a root
of entry points and a few shared modules, everything else in a subpackage
by concept, no module over 500 lines."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).parents[1] / "vitok_jax"
# Entry points and the trainer registry may import trainers.
ENTRY_POINTS = {"vitok_jax.train", "vitok_jax.eval", "vitok_jax.sample",
                "vitok_jax.export", "vitok_jax.trainers"}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PKG.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set:
  """The vitok_jax modules a file imports (anywhere in it, lazy ones too)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("vitok_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "vitok_jax"):
      for a in node.names:  # "from vitok_jax.models import vitok"
        candidate = f"{node.module}.{a.name}"
        out.add(candidate if (PKG.parent / (candidate.replace(".", "/") + ".py")
                              ).exists() or (PKG.parent / candidate.replace(
                                  ".", "/")).is_dir() else node.module)
  return out


GRAPH = {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


# The package root: the entry points, export and the few modules every
# layer shares. Everything else lives in a subpackage by concept.
ROOT_MODULES = {"__init__", "train", "eval", "sample", "export", "cli",
                "config_utils", "losses", "optim", "flops", "utils"}
SUBPACKAGES = {"data", "diffusion", "evaluators", "io", "models", "parallel",
               "torch", "trainers"}
MAX_LINES = 500


def test_the_root_holds_entry_points_and_subpackages_by_concept():
  modules = {p.stem for p in PKG.glob("*.py")}
  packages = {p.name for p in PKG.iterdir()
              if (p / "__init__.py").exists()}
  assert modules == ROOT_MODULES, sorted(modules ^ ROOT_MODULES)
  assert packages == SUBPACKAGES, sorted(packages ^ SUBPACKAGES)


def test_no_module_is_over_500_lines():
  long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f"split these modules: {long}"


def test_the_graph_is_read():
  assert "vitok_jax.trainers.tokenizer" in GRAPH["vitok_jax.train"] or (
      "vitok_jax.trainers" in GRAPH["vitok_jax.train"])
  assert "vitok_jax.models.vitok" in GRAPH["vitok_jax.diffusion.codec"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_library_module_imports_a_trainer(module):
  if module in ENTRY_POINTS or module.startswith("vitok_jax.trainers."):
    return
  bad = sorted(m for m in GRAPH[module] if m.startswith("vitok_jax.trainers"))
  assert not bad, f"{module} imports {bad}"


def test_the_host_loop_knows_only_its_task():
  bad = sorted(m for m in GRAPH["vitok_jax.trainers.host_loop"]
               if m.startswith("vitok_jax.trainers"))
  assert not bad, bad


def test_no_import_cycles():
  state = {}

  def visit(m, stack):
    state[m] = "open"
    for n in sorted(GRAPH.get(m, ())):
      if n not in GRAPH or n == m:
        continue
      assert state.get(n) != "open", " -> ".join(stack + [m, n])
      if n not in state:
        visit(n, stack + [m])
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [])


# File access goes through vitok_jax/io/fileio.py, so that every path a job
# reads or writes may be gs://. These calls reach only the local disk:
LOCAL_ONLY_CALLS = {"open", "os.path.join", "os.path.exists", "os.path.isdir",
                    "os.path.isfile", "os.path.abspath", "os.path.dirname",
                    "os.path.basename", "os.path.expanduser", "os.makedirs",
                    "os.listdir", "os.remove", "os.replace", "os.rename",
                    "os.walk", "os.scandir", "os.open", "np.load", "np.save",
                    "np.savez", "shutil.move", "shutil.rmtree", "shutil.copy",
                    "glob.glob", "pathlib.Path"}
# (file, call) pairs that never touch a job's paths, with the reason.
LOCAL_ONLY_ALLOWED = {
    # The demo's photos ship inside scikit-learn and matplotlib.
    ("vitok_jax/data/demo_sources.py", "os.path.join"),
    ("vitok_jax/data/demo_sources.py", "os.path.dirname"),
    # Config files are Python modules, imported from the local disk.
    ("vitok_jax/cli.py", "os.path.exists"),
    ("vitok_jax/cli.py", "pathlib.Path"),
}
IO_TOOLS = ("check_metrics", "encode_dataset", "export_pytorch", "plot_sweep",
            "convert_inception", "convert_lpips", "compute_ref_stats")


def _dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    inner = _dotted(node.value)
    return f"{inner}.{node.attr}" if inner else ""
  return ""


def test_file_access_goes_through_fileio():
  root = PKG.parent
  files = [p for p in PKG.rglob("*.py") if p.name != "fileio.py"]
  files += [root / "tools" / f"{t}.py" for t in IO_TOOLS]
  found = []
  for path in files:
    rel = str(path.relative_to(root))
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Call):
        name = _dotted(node.func)
        if name in LOCAL_ONLY_CALLS and (rel, name) not in LOCAL_ONLY_ALLOWED:
          found.append(f"{rel}:{node.lineno} {name}()")
  assert not found, ("local-only file access outside vitok_jax/io/fileio.py "
                     "(use fileio.*):\n" + "\n".join(found))
