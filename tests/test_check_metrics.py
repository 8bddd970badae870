"""tools/check_metrics.py, which CI runs on the demo's result."""
import json

import pytest

from tests.helpers import load_tool

check = load_tool("check_metrics")


def _write(tmp_path, rows):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 9, "heldout/rp')  # a line cut by a kill


def _args(tmp_path):
  return ["--workdir", str(tmp_path), "--metric", "heldout/rpsnr",
          "--above", "heldout/bicubic_rpsnr"]


def test_passes_only_when_the_last_row_is_above(tmp_path, capsys):
  rows = [{"step": 1, "heldout/rpsnr": 30.0, "heldout/bicubic_rpsnr": 24.0},
          {"step": 2, "loss": 0.1},
          {"step": 3, "heldout/rpsnr": 23.9, "heldout/bicubic_rpsnr": 24.0}]
  _write(tmp_path, rows)
  assert check.main(_args(tmp_path)) == 1  # the last row decides
  assert "FAILED" in capsys.readouterr().out
  _write(tmp_path, rows[:2])
  assert check.main(_args(tmp_path)) == 0
  # Equal is not above.
  _write(tmp_path, [{"step": 1, "heldout/rpsnr": 24.0,
                     "heldout/bicubic_rpsnr": 24.0}])
  assert check.main(_args(tmp_path)) == 1


def test_missing_file_or_keys_are_named(tmp_path):
  with pytest.raises(SystemExit, match="metrics.jsonl does not exist"):
    check.main(_args(tmp_path))
  _write(tmp_path, [{"step": 1, "loss": 0.1}])
  with pytest.raises(SystemExit, match="no row has all of"):
    check.main(_args(tmp_path))
