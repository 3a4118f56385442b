"""The benchmark scripts' own logic: mqar_steps.py runs with a changed task go to files of their
own and bad arguments are refused by name; a partial sequence_parallel.py run keeps the full run's files;
plan_time_train.py runs both plans and compares them; planner_time.py redraws a stored record."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mqar_steps.py"


def run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--quiet", "--runs", str(tmp_path / "runs"),
                           "--out-dir", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=300)


def test_a_changed_task_writes_files_named_by_the_changes(tmp_path):
    done = run(tmp_path, "--param", "length=64", "--param", "min_distance=16", "--context", "64", "--steps", "4")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [f"mqar_length64_min_distance16_steps.{ext}"
                                                     for ext in ("jsonl", "md", "png")]
    text = (out / "mqar_length64_min_distance16_steps.md").read_text()
    assert "the small grid's task changed, so not its cell" in text
    assert "'length': 64, 'min_distance': 16" in text and "| softmax | 64 | 32 | 1 | sinusoidal |" in text


def test_bad_arguments_are_refused_by_name(tmp_path):
    bad_param = run(tmp_path, "--param", "length", "--steps", "4")
    assert bad_param.returncode == 2 and "--param must be KEY=VALUE" in bad_param.stderr
    too_long = run(tmp_path, "--param", "length=64", "--steps", "4")  # the grid's C=256 > length 64
    assert too_long.returncode == 2 and "--context 256 exceeds the task's length 64" in too_long.stderr
    assert not (tmp_path / "out").exists()


def test_a_partial_sequence_parallel_run_never_names_the_full_runs_files():
    import importlib.util

    path = SCRIPT.parent / "sequence_parallel.py"
    spec = importlib.util.spec_from_file_location("sequence_parallel_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def stem(*argv):
        return module.result_stem(module.parse_args(list(argv)))

    assert stem() == "sequence_parallel" and stem("--backward", "--quick") == "sequence_parallel_backward_quick"
    assert stem("--backward", "--mixers", "mamba") == "sequence_parallel_backward_mamba"
    assert stem("--mixers", "s4d", "mamba", "--quick") == "sequence_parallel_s4d_mamba_quick"


def test_planner_benchmark_judges_the_pick_by_time_against_the_fastest_measured():
    import importlib.util

    spec = importlib.util.spec_from_file_location("planner_time", SCRIPT.parent / "planner_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    group = [{"form": "shuffle", "status": "ok", "predicted_s": 1.0, "time_s": 1.05, "bytes": 900},
             {"form": "state", "status": "ok", "predicted_s": 1.5, "time_s": 1.0, "bytes": 100}]
    judged = {r["form"]: r for r in module.judge(group)}
    assert judged["shuffle"]["picked_by_time"] and judged["state"]["picked_by_bytes"]
    assert judged["state"]["fastest"] and judged["shuffle"]["pick_within_10pct"]
    assert judged["state"]["error"] == pytest.approx(0.5)


def test_plan_time_train_runs_both_plans_and_compares_them(tmp_path):
    script = SCRIPT.parent / "plan_time_train.py"
    done = subprocess.run([sys.executable, str(script), "--mixers", "mamba", "--ranks", "2", "--steps", "2",
                           "--rounds", "1", "--context", "256", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    row, = json.loads((tmp_path / "plan_time_train.json").read_text())["rows"]
    assert row["forms"]["bytes"] == ["state", "state"]  # mamba's fewest bytes
    assert set(row["forms"]["time"]) <= {"shuffle", "state"} and row["tests_agree"]
    assert row["bytes_over_time"] == pytest.approx(row["train_s"]["bytes"] / row["train_s"]["time"])
    assert "| mamba | 2 | state, state |" in (tmp_path / "plan_time_train.md").read_text()


def test_planner_time_redraws_a_stored_record_without_measuring(tmp_path):
    stored = SCRIPT.parent / "results" / "planner_time.json"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "planner_time.py"), "--from-json", str(stored),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "planner_time.md").read_text() == stored.with_suffix(".md").read_text()
    assert (tmp_path / "planner_time.png").stat().st_size > 0
