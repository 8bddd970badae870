"""tools/bench.py runs on CPU with a tiny variant and reports its figures."""
import importlib.util
import pathlib


def test_bench_runs_and_prints(capsys):
  path = pathlib.Path(__file__).parents[1] / "tools" / "bench.py"
  spec = importlib.util.spec_from_file_location("bench_tool", path)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  out = tool.main(["--variant", "mu-mu/8", "--res", "32", "--batch", "8",
                   "--dtype", "float32", "--steps", "2", "--warmup", "1",
                   "--mesh", "data:8,fsdp:1"])
  text = capsys.readouterr().out
  assert "images/s" in text and "MFU" in text
  assert out["images_per_sec"] > 0 and out["devices"] == 8
  assert 0 < out["mfu"] < 1
