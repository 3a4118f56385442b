"""benchmarks/hf_context.py: its rows and gains on stand-in measurements, and one real point of
its rank worker (a tiny length on two ranks: seconds)."""
from __future__ import annotations

import pytest

from test_memory_benchmarks import load  # the one loader of a benchmark script


def args_for(hf_context, *extra):
    return hf_context.parse_args(["--start", "512", "--multiple", "64", "--resolution", "8", *extra])


def test_gains_are_against_transformers_on_one_process_not_longmix_on_one_rank(monkeypatch):
    hf_context = load("hf_context")
    per_token = {"transformers": 2000, "longmix": 1000}  # bytes per token on one rank

    def fake_measure(spec, world, timeout, worker):
        assert worker is hf_context.hf_worker
        return {"status": "ok", "memory_bytes": per_token[spec["tool"]] * spec["length"] / world,
                "time_s": 0.0}

    monkeypatch.setattr(hf_context, "measure", fake_measure)
    args = args_for(hf_context, "--cap-mib", str(4e6 / 2 ** 20))  # 2000 / 4000 tokens per rank fit
    rows = [hf_context.search_row("llama", "train", tool, world, args)
            for tool, world in [("transformers", 1), ("longmix", 1), ("longmix", 2)]]
    load("max_context").add_gains(rows, is_base=lambda r: r["tool"] == "transformers")
    longest = {(r["tool"], r["world"]): r["max_context"] for r in rows}
    # within 1/8 of the last doubling's interval below the true limits 2000, 4000, 8000
    assert 2000 - 1024 // 8 <= longest[("transformers", 1)] <= 2000
    assert 4000 - 2048 // 8 <= longest[("longmix", 1)] <= 4000
    assert 8000 - 4096 // 8 <= longest[("longmix", 2)] <= 8000
    assert all(r["stopped_by"] == "memory" for r in rows)
    assert rows[0]["vs_one_process"] == 1.0
    assert rows[2]["vs_one_process"] == pytest.approx(longest[("longmix", 2)] / longest[("transformers", 1)])
    goal = [line for line in hf_context.goal_lines(rows) if "P = 2" in line]
    # the range runs from longmix's answer over transformers' first miss to the reverse
    first_miss = {(r["tool"], r["world"]): hf_context.first_miss(r) for r in rows}
    assert first_miss[("transformers", 1)] > 2000 and first_miss[("longmix", 2)] > 8000
    low = longest[("longmix", 2)] / first_miss[("transformers", 1)]
    assert len(goal) == 1 and f"{rows[2]['vs_one_process']:.2f}x" in goal[0] and f"{low:.2f}x" in goal[0]
    assert ("not met" in goal[0]) == (rows[2]["vs_one_process"] < 1.8)


def test_a_search_out_of_time_says_so(monkeypatch):
    hf_context = load("hf_context")
    monkeypatch.setattr(hf_context, "measure", lambda spec, world, timeout, worker: {
        "status": "timed out", "error": "timed out"})
    row = hf_context.search_row("mamba", "train", "transformers", 1, args_for(hf_context))
    assert row["max_context"] is None and row["stopped_by"].startswith("time")
    assert "time" in hf_context.markdown_text({"config": vars(args_for(hf_context)), "rows": [row],
                                               "command": "c", "date": "d", "machine": {},
                                               "provenance": {"git_describe": "x", "git_commit": "y"}})


def test_bad_arguments_are_named():
    hf_context = load("hf_context")
    with pytest.raises(SystemExit):
        hf_context.parse_args(["--cap-mib", "0"])
    with pytest.raises(SystemExit):
        hf_context.parse_args(["--ranks", "0"])
    with pytest.raises(ValueError, match="model must be"):
        hf_context.build("gpt", 64, 2)


def test_the_worker_measures_a_real_training_step_on_two_ranks(monkeypatch):
    import importlib

    from test_memory_benchmarks import BENCHMARKS

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the spawned ranks import the worker by name
    hf_context = importlib.import_module("hf_context")
    spec = {"model": "mamba", "mode": "train", "tool": "longmix", "hidden": 32, "layers": 1,
            "threads": 1, "cap_bytes": 2 ** 30, "length": 96, "strategy": "ring"}  # 48 tokens per rank
    point = hf_context.measure(spec, 2, 120, worker=hf_context.hf_worker)
    assert point["status"] == "ok", point
    assert len(point["by_rank"]) == 2 and 0 <= point["memory_bytes"] < 2 ** 30 and point["time_s"] > 0
