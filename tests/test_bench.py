"""tools/bench.py runs on CPU with a tiny variant and reports its figures."""
import jax
import pytest

from tests.helpers import load_tool


def _check_rates(out, examples, peak_tflops):
  """images/s and MFU recomputed from the reported step time and FLOPs:
  MFU = model FLOPs / step time / (peak per device x devices)."""
  step_s = out["step_ms"] / 1000
  assert out["images_per_sec"] == pytest.approx(examples / step_s, rel=1e-6)
  assert out["achieved_tflops"] == pytest.approx(
      out["model_tflops_per_step"] / step_s, rel=1e-6)
  assert out["mfu"] == pytest.approx(
      out["model_tflops_per_step"] * 1e12 / step_s /
      (peak_tflops * 1e12 * jax.device_count()), rel=1e-6)


def test_bench_runs_and_prints(capsys):
  out = load_tool("bench").main(["--variant", "mu-mu/8", "--res", "32", "--batch", "8",
                   "--dtype", "float32", "--steps", "2", "--warmup", "1",
                   "--mesh", "data:8,fsdp:1"])
  text = capsys.readouterr().out
  assert "images/s" in text and "MFU" in text
  assert out["devices"] == 8 and out["batch"] == 8 and out["step_ms"] > 0
  _check_rates(out, 8, 989.0)  # default peak: H100 SXM bf16 dense


def test_bench_times_the_dit_step(capsys):
  out = load_tool("bench").main(["--dit", "mu", "--variant", "mu-mu/8", "--res", "32",
                   "--batch", "8", "--dtype", "float32", "--steps", "2",
                   "--warmup", "1", "--mesh", "data:8,fsdp:1", "--classes", "5",
                   "--peak_tflops", "0.5"])
  text = capsys.readouterr().out
  assert text.startswith("DiT-mu on 16 tokens x 16") and "MFU" in text
  assert "of 0.5 TFLOP/s/device" in text and out["step_ms"] > 0
  _check_rates(out, 8, 0.5)


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
