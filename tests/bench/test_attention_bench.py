"""benchmarks/attention_scaling.py's engine: a tiny grid writes its files, a rerun keeps the points,
budgets skip points, and the vanilla baseline is the attention it claims to be."""
from __future__ import annotations

import json
import math

import pytest
import torch

from longmix.bench import attention as bench
from longmix.bench import attention_report as report
from longmix.fileio import append_record


def _reference(q, k, v, causal):
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(q.shape[1], q.shape[1]).triu(1).bool(), -math.inf)
    return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)


@pytest.mark.parametrize("causal", [True, False])
def test_vanilla_baseline_is_exact_attention(causal):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 37, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(bench.vanilla_attention(q, k, v, causal), _reference(q, k, v, causal),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["sdpa", "longmix"])
@pytest.mark.parametrize("causal", [True, False])
def test_one_process_baselines_are_exact_attention(method, causal):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 37, 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 37, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    shape = bench.Shape(heads=4, kv_heads=2, head_dim=8, dtype="fp64", causal=causal)
    got = bench._method_fn(method, shape, None)(q, k, v)
    torch.testing.assert_close(got, _reference(q, k, v, causal), rtol=1e-10, atol=1e-10)


def test_predictions_scale_time_quadratically_and_vanilla_memory_with_l_squared():
    shape = bench.Shape(heads=2, kv_heads=2, head_dim=16, dtype="fp32", causal=True)
    prev = {"seq_len": 1024, "time_s": 2.0, "peak_rss_bytes": 300e6, "baseline_rss_bytes": 200e6}
    t, mem = bench._predict(shape, bench.Series("ring", 2), 2048, prev)
    assert t == pytest.approx(8.0) and mem == pytest.approx(400e6)
    t, mem = bench._predict(shape, bench.Series("vanilla", 1), 2048, prev)
    assert mem >= 2048**2 * (2 * 2 * 4 + 1)  # scores + softmax per head, and the causal mask


def _tiny(tmp_path, **kw) -> bench.BenchConfig:
    shape = bench.Shape(heads=2, kv_heads=1, head_dim=16, dtype="fp32", causal=True)
    return bench.BenchConfig(shape=shape, min_log2_len=8, max_log2_len=9, procs=(2,),
                             methods=("sdpa", "vanilla", "longmix", "auto", "shuffle", "hybrid"),
                             min_time_s=0.0, out_dir=tmp_path, **kw)


def test_tiny_grid_writes_files_and_rerun_keeps_points(tmp_path, monkeypatch):
    cfg = _tiny(tmp_path)
    records = bench.run_benchmark(cfg, log=lambda line: None)
    by = {(r["method"], r["seq_len"]): r for r in records}
    assert len(by) == 2 * 6
    for method in ("sdpa", "vanilla", "longmix", "auto", "shuffle", "hybrid"):
        for L in (256, 512):
            rec = by[(method, L)]
            assert rec["status"] == "ok", rec
            assert rec["time_s"] > 0 and rec["gflops"] > 0
            assert rec["reps"] >= 3 and rec["time_s"] == sorted(rec["times"])[len(rec["times"]) // 2]
            assert rec["peak_rss_bytes"] >= rec["baseline_rss_bytes"] > 0
    assert by[("auto", 256)]["strategy_used"] in ("shuffle", "ring")

    lines = cfg.path("jsonl").read_text().splitlines()
    assert len(lines) == 2 * 6
    # a matmul peak of 1 GFLOP/s per thread count makes every % equal to the rate per rank x 100
    peaks = tmp_path / "matmul_peak.json"
    peaks.write_text(json.dumps({"peaks": [{"dtype": "fp32", "threads": t, "gflops": 1.0}
                                           for t in (1, 2, 4)]}))
    png, md = report.write_report(cfg, records, peaks)
    assert png.stat().st_size > 1000
    text = md.read_text()
    assert "Machine:" in text and "| 2^9 |" in text and "%)" in text
    assert "torch sdpa time / longmix 1-process time" in text and "vanilla MHA time / torch sdpa" in text

    def must_not_run(*args, **kwargs):
        raise AssertionError("a recorded point was measured again")

    monkeypatch.setattr(bench, "run_point", must_not_run)
    again = bench.run_benchmark(cfg, log=lambda line: None)
    assert [r.get("time_s") for r in again] == [r.get("time_s") for r in records]
    assert cfg.path("jsonl").read_text().splitlines() == lines


def test_over_budget_points_are_skipped_not_run(tmp_path, monkeypatch):
    calls = []

    def fake_run_point(cfg, series, seq_len, timeout_s):  # a fixed 1 s per point
        calls.append((series.method, seq_len))
        return {"status": "ok", "time_s": 1.0, "gflops": 1.0, "peak_rss_bytes": 2**20,
                "baseline_rss_bytes": 2**20}

    monkeypatch.setattr(bench, "run_point", fake_run_point)
    # vanilla's scores at L=512 need 512^2 * 9 bytes > 2 MiB (at 256, less); the time budget
    # admits the first 1 s point but not the 4 s predicted for twice the length
    cfg = _tiny(tmp_path, mem_budget_gb=2 / 1024, time_budget_s=2.0)
    cfg.methods = ("vanilla", "longmix")
    records = {(r["method"], r["seq_len"]): r for r in bench.run_benchmark(cfg, log=lambda s: None)}
    assert sorted(calls) == [("longmix", 256), ("vanilla", 256)]
    assert "GiB" in records[("vanilla", 512)]["reason"]
    assert "4 s > 2 s" in records[("longmix", 512)]["reason"]
    assert records[("vanilla", 512)]["status"] == records[("longmix", 512)]["status"] == "skipped"
    recorded = [json.loads(line) for line in cfg.path("jsonl").read_text().splitlines()]
    assert [r["status"] for r in recorded] == ["ok", "ok"]  # skips aren't recorded: reruns retry


def test_peer_runs_and_is_compared(tmp_path):
    pytest.importorskip("ring_attention_pytorch")
    cfg = _tiny(tmp_path)
    rec = bench.run_point(cfg, bench.Series("peer", 2), 512, timeout_s=120)
    assert rec["status"] == "ok", rec
    ours = bench.run_point(cfg, bench.Series("ring", 2), 512, timeout_s=120)
    lines = report.summarize(cfg, [{**rec, "seq_len": 512}, {**ours, "seq_len": 512}])
    assert any("ring-attention-pytorch time / longmix ring time" in line for line in lines)
    assert bench.check_peer(cfg.shape, 2)["status"] == "ok"


def test_missing_peer_is_skipped_cleanly(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_peer(name, *args, **kwargs):
        if name.startswith("ring_attention_pytorch"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peer)
    monkeypatch.setattr(bench, "run_point", lambda *a, **k: pytest.fail("nothing should run"))
    cfg = _tiny(tmp_path)
    cfg.methods = ("peer",)
    records = bench.run_benchmark(cfg, log=lambda line: None)
    assert [r["status"] for r in records] == ["invalid", "invalid"]
    assert "not installed" in records[0]["reason"]


def test_torn_last_line_neither_breaks_resume_nor_swallows_the_next_record(tmp_path):
    """A run killed mid-write leaves half a line: it is ignored, and the next record stays whole."""
    path = tmp_path / "points.jsonl"
    append_record(path, {"key": "a", "status": "ok"})
    with path.open("a") as f:
        f.write('{"key": "b", "sta')  # the torn write
    assert set(bench.load_results(path)) == {"a"}
    append_record(path, {"key": "c", "status": "error"})
    assert bench.load_results(path) == {"a": {"key": "a", "status": "ok"},
                                        "c": {"key": "c", "status": "error"}}


@pytest.mark.parametrize("kw, match", [(dict(heads=0), "heads"), (dict(heads=4, kv_heads=3), "kv_heads=3"),
                                       (dict(head_dim=-1), "head_dim"), (dict(dtype="fp16"), "dtype")])
def test_bad_shape_is_a_value_error_naming_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        bench.Shape(**kw)


def test_matmul_peak_and_percent_of_peak():
    from longmix.bench.peak import measure_peaks, peaks_by, percent_of_peak

    records = measure_peaks(threads=(1,), dtypes=("fp32", "bf16"), sizes=(64, 128), budget_s=5)
    peaks = peaks_by(records)
    assert set(peaks) == {("fp32", 1), ("bf16", 1)} and all(g > 0 for g in peaks.values())
    assert percent_of_peak(peaks[("fp32", 1)] / 2, "fp32", 1, peaks) == pytest.approx(50)
    assert percent_of_peak(1.0, "fp32", 8, peaks) is None  # not measured on 8 threads


def test_the_softmax_ceiling_on_attention():
    from longmix.bench.peak import attention_ceiling, softmax_ns_per_score

    # 4 * 32 flops at 128 GFLOP/s is 1 ns per score: no vector work, 100%; as much again, 50%
    assert attention_ceiling(128.0, 32, 0.0) == pytest.approx(100)
    assert attention_ceiling(128.0, 32, 1.0) == pytest.approx(50)
    assert attention_ceiling(128.0, 64, 1.0) == pytest.approx(200 / 3)  # wider heads hide more
    costs = softmax_ns_per_score(rows=16, cols=64, reps=8)
    assert set(costs) == {"exp", "softmax"} and all(ns > 0 for ns in costs.values())
