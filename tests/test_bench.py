"""tools/bench.py runs on CPU with a tiny variant and reports its figures."""
from tests.helpers import load_tool


def test_bench_runs_and_prints(capsys):
  out = load_tool("bench").main(["--variant", "mu-mu/8", "--res", "32", "--batch", "8",
                   "--dtype", "float32", "--steps", "2", "--warmup", "1",
                   "--mesh", "data:8,fsdp:1"])
  text = capsys.readouterr().out
  assert "images/s" in text and "MFU" in text
  assert out["images_per_sec"] > 0 and out["devices"] == 8
  assert 0 < out["mfu"] < 1


def test_bench_times_the_dit_step(capsys):
  out = load_tool("bench").main(["--dit", "mu", "--variant", "mu-mu/8", "--res", "32",
                   "--batch", "8", "--dtype", "float32", "--steps", "2",
                   "--warmup", "1", "--mesh", "data:8,fsdp:1", "--classes", "5"])
  text = capsys.readouterr().out
  assert text.startswith("DiT-mu on 16 tokens x 16") and "MFU" in text
  assert out["images_per_sec"] > 0 and 0 < out["mfu"] < 1


def test_bench_modes_xla_flops_profile_and_input(tmp_path, capsys):
  bench = load_tool("bench")
  out = bench.main(["--variant", "mu-mu/8", "--res", "32", "--batch", "8", "--dtype",
                    "float32", "--steps", "2", "--warmup", "1", "--mesh", "data:8",
                    "--remat", "dots", "--profile", str(tmp_path / "trace")])
  # XLA's count of the compiled step sits beside the analytic model FLOPs.
  assert out["xla_tflops_per_step"] >= out["model_tflops_per_step"] > 0
  assert any(tmp_path.joinpath("trace").rglob("*.xplane.pb"))
  enc = bench.main(["--variant", "mu-mu/8", "--res", "32", "--batch", "8", "--dtype",
                    "float32", "--steps", "2", "--warmup", "1", "--mode", "encode"])
  assert enc["mode"] == "encode" and enc["images_per_sec"] > 0
  inp = bench.main(["--input", "embedded", "--res", "32", "--batch", "4",
                    "--batches", "2"])
  assert inp["per_sec"] > 0 and "images/s on one core" in capsys.readouterr().out
