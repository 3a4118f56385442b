"""benchmarks/max_context.py's search and merge, and memory_slope.py's ratios, on stand-in
measurements (no ranks launched)."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_script", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_search_doubles_then_bisects_to_the_longest_fitting_context(monkeypatch):
    max_context = load("max_context")
    per_token = 1000  # bytes per token and rank: 5000 tokens fit in 5e6 bytes
    monkeypatch.setattr(max_context, "measure", lambda spec, world, timeout: {
        "status": "ok", "memory_bytes": per_token * spec["length"] / world, "time_s": 0.0})
    args = argparse.Namespace(memory_mib=5e6 / 2 ** 20, start=512, multiple=64, resolution=8)
    one = max_context.search({}, 1, args, cap_s=60)
    assert one["stopped_by"] == "memory"
    # doubling: 512 ... 4096 fit, 8192 does not; bisection to (8192 - 4096) / 8 = 512 tokens
    assert 5000 - 512 <= one["max_context"] <= 5000
    assert [p["length"] for p in one["points"]][:5] == [512, 1024, 2048, 4096, 8192]
    two = max_context.search({}, 2, args, cap_s=60)
    assert 10000 - 1024 <= two["max_context"] <= 10000


def test_search_says_when_the_start_does_not_fit_or_a_point_fails(monkeypatch):
    max_context = load("max_context")
    args = argparse.Namespace(memory_mib=1, start=512, multiple=64, resolution=8)
    monkeypatch.setattr(max_context, "measure", lambda spec, world, timeout: {
        "status": "ok", "memory_bytes": 2 ** 30, "time_s": 0.0})
    assert max_context.search({}, 1, args, cap_s=60)["stopped_by"] == "memory (the start does not fit)"
    monkeypatch.setattr(max_context, "measure", lambda spec, world, timeout: {
        "status": "failed", "error": "boom"})
    row = max_context.search({}, 1, args, cap_s=60)
    assert row["stopped_by"] == "failure" and row["max_context"] is None


def test_a_later_search_replaces_an_earlier_one_and_gains_are_against_one_process():
    max_context = load("max_context")

    def record(rows):
        return {"provenance": {"git_describe": "abc"}, "rows": [
            {"mixer": "s4d", "world": w, "checkpoint": False, "max_context": n, "stopped_by": s,
             "points": []} for w, n, s in rows]}

    rows = max_context.merged_rows([record([(1, 1000, "time"), (2, 3000, "memory")]),
                                    record([(1, 1500, "memory")])])
    max_context.add_gains(rows)
    by_world = {r["world"]: r for r in rows}
    assert by_world[1]["max_context"] == 1500 and by_world[1]["run"] == 1
    assert by_world[2]["vs_one_process"] == 2.0


def test_slope_ratios_compare_rows_of_the_same_commit():
    memory_slope = load("memory_slope")
    rows = [{"mixer": "s4d", "world": w, "commit": c, "checkpoint": False, "status": "ok",
             "short": 1024, "long": 2048, "kb_per_token": kb}
            for w, c, kb in ((1, "a", 10.0), (2, "a", 6.0), (1, "b", 8.0), (2, "b", 4.0))]
    memory_slope.add_ratios(rows)
    assert [r["ratio"] for r in rows] == [1.0, 0.6, 1.0, 0.5]
    assert [r["meets_goal"] for r in rows] == [True, True, True, True]
    rows[1]["kb_per_token"] = 6.5
    memory_slope.add_ratios(rows)
    assert rows[1]["meets_goal"] is False
    # a row at other lengths has no one-process row of its own to compare with
    other = {**rows[1], "short": 512, "long": 1024}
    other.pop("ratio"), other.pop("meets_goal"), other.pop("goal")
    memory_slope.add_ratios(rows + [other])
    assert "ratio" not in other


def test_the_latest_verdict_is_the_newest_runs_row():
    memory_slope = load("memory_slope")

    def run(date, commit, kb_two):
        rows = [{"mixer": "s4d", "form": f, "world": w, "commit": commit, "checkpoint": False,
                 "malloc": "fixed", "status": "ok", "short": 1024, "long": 2048, "kb_per_token": kb}
                for f, w, kb in (("-", 1, 10.0), ("state", 2, kb_two))]
        return {"date": date, "rows": rows}

    runs = [run("2026-01-02", "new", 5.0), run("2026-01-01", "old", 7.0)]  # appended out of order
    memory_slope.add_ratios([r for one in runs for r in one["rows"]])
    lines = memory_slope.latest_verdicts(runs).splitlines()
    assert len(lines) == 3  # header, rule, one line for s4d state P=2
    assert "| s4d | no | 2 | state | 0.50 | 0.60 | yes | new |" in lines[2]


def test_a_point_over_the_cap_is_a_miss_and_a_point_past_its_time_cap_stops_the_search():
    max_context = load("max_context")

    def measure_at(length, timeout):
        if length > 4096:
            return {"status": "over the cap"}  # a watchdog ended a rank: does not fit
        return {"status": "ok", "memory_bytes": length, "time_s": 0.0}

    row = max_context.longest_fitting(measure_at, 512, 64, 8, 1e9, cap_s=60)
    assert row["stopped_by"] == "memory" and 4096 - 512 <= row["max_context"] <= 4096
    assert row["points"][4] == {"length": 8192, "status": "over the cap", "memory_bytes": None,
                                "time_s": None, "error": None}
    timeouts = []

    def slow_at(length, timeout):
        timeouts.append(timeout)
        return measure_at(length, timeout) if length < 2048 else {"status": "timed out", "error": "timed out"}

    row = max_context.longest_fitting(slow_at, 512, 64, 8, 1e9, cap_s=60, point_cap_s=7)
    assert row["stopped_by"] == "time (a point over 7 s)" and row["max_context"] == 1024
    assert max(timeouts) == 7


def allocate(group, spec):
    """A stand-in for a measured call: holds ``spec["mib"]`` MiB for a while inside ``peak_rise``
    (longer than the watchdog's poll)."""
    import time

    import torch

    def call():
        held = torch.ones(spec["mib"] * 2 ** 18, dtype=torch.float32)
        time.sleep(0.5)
        return held

    memory, seconds = load("memory_slope").peak_rise(call, spec.get("cap_bytes"))
    return {"rank": 0, "memory_bytes": memory, "time_s": seconds}


def test_the_watchdog_ends_a_rank_whose_memory_passes_the_cap():
    memory_slope = load("memory_slope")
    over = memory_slope.measure({"mib": 256, "cap_bytes": 32 * 2 ** 20}, 1, 60, worker=allocate)
    assert over["status"] == "over the cap"
    under = memory_slope.measure({"mib": 64, "cap_bytes": 2 ** 30}, 1, 60, worker=allocate)
    assert under["status"] == "ok" and 60 * 2 ** 20 <= under["memory_bytes"] <= 2 ** 30


def fail_with_message(group, spec):
    raise ValueError(f"no room for {spec['length']} tokens")


def test_a_failed_point_keeps_the_exception_line():
    memory_slope = load("memory_slope")
    failed = memory_slope.measure({"length": 7}, 1, 60, worker=fail_with_message)
    assert failed["status"] == "failed"
    assert failed["error"] == "rank 0 failed: ValueError: no room for 7 tokens"


def test_rows_name_the_mmap_threshold_they_ran_with():
    memory_slope = load("memory_slope")
    args = memory_slope.parse_args(["--mixers", "s4d"])
    assert memory_slope.malloc_label(memory_slope.model_spec(args)) == "fixed 128 KiB"
    args = memory_slope.parse_args(["--mmap-threshold", str(2 ** 20), "--malloc", "fixed"])
    assert memory_slope.malloc_label(memory_slope.model_spec(args)) == "fixed 1024 KiB"
    args = memory_slope.parse_args(["--malloc", "default"])
    assert memory_slope.malloc_label(memory_slope.model_spec(args)) == "default"
