"""benchmarks/gpu.sh parses and refuses clearly where no GPU is visible; the training-context search
it runs works on the CPU at toy sizes (the GPU figures themselves come from a GPU machine)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_sh_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], check=True, timeout=30)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_gpu_sh_refuses_without_a_gpu():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True,
                          text=True, timeout=120, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3
    assert "no CUDA device visible to torch" in done.stderr


def test_training_context_search_runs_and_records_what_stopped_it(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train_context.py"),
                           "--device", "cpu", "--mixers", "mamba", "--dim", "8", "--depth", "1",
                           "--heads", "1", "--dtype", "fp32", "--min-log2", "4", "--max-log2", "5",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "gpu_train_context.json").read_text())
    assert [p["length"] for p in record["points"]] == [16, 32]
    assert all(p["status"] == "ok" and p["step_s"] > 0 for p in record["points"])
    assert record["points"][-1]["stopped_by"] == "--max-log2 5"
    assert "| mamba | 32 |" in (tmp_path / "gpu_train_context.md").read_text()


def test_training_context_search_stops_before_a_point_would_pass_the_budget(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train_context.py"),
                           "--device", "cpu", "--mixers", "linear", "--dim", "8", "--depth", "1",
                           "--heads", "1", "--dtype", "fp32", "--min-log2", "4", "--max-log2", "9",
                           "--budget-s", "0.001", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    points = json.loads((tmp_path / "gpu_train_context.json").read_text())["points"]
    assert [p["length"] for p in points] == [16]
    assert "would pass the mixer's budget of 0.001 s" in points[0]["stopped_by"]


def test_forward_benchmark_checks_the_first_rows_against_float64(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_forward.py"),
                           "--device", "cpu", "--mixers", "mamba2", "--dim", "8", "--heads", "2",
                           "--dtype", "fp32", "--min-log2", "5", "--max-log2", "6",
                           "--check-len", "16", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    points = json.loads((tmp_path / "gpu_forward.json").read_text())["points"]
    assert [p["length"] for p in points] == [32, 64]
    assert all(p["status"] == "ok" and p["rel_err_first_rows"] < 1e-5 for p in points)
    assert points[-1]["stopped_by"] == "--max-log2 6"

