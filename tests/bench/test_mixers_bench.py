"""benchmarks/mixers_scaling.py on a tiny grid: files written, reruns neither lose nor duplicate
points, interrupted sweeps keep what they measured, and over-budget points are skipped."""
import csv
import json
import math

import pytest

from longmix.bench import mixers as bench

MIXERS = ("s4d", "mamba")


def config(tmp_path, **kw):
    base = dict(mixers=MIXERS, min_log2_len=6, max_log2_len=7, dim=8, heads=2, repeats=1,
                out_dir=str(tmp_path), command="pytest")
    return bench.SweepConfig(**{**base, **kw})


def csv_rows(tmp_path):
    with open(tmp_path / "mixers_scaling.csv", newline="") as f:
        return list(csv.DictReader(f))


class Counting:
    """Wraps run_point (real or fake) and records which points were measured."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, cfg, mixer, length, timeout_s):
        self.calls.append((mixer, length))
        return self.inner(cfg, mixer, length, timeout_s)


def fake_point(seconds_per_position=1e-4):
    def run(cfg, mixer, length, timeout_s):
        return dict(mixer=mixer, family="ssm", length=length, log2_length=int(math.log2(length)),
                    dim=cfg.dim, heads=1, batch=cfg.batch, dtype=cfg.dtype, causal=cfg.causal,
                    status="ok", time_s=seconds_per_position * length, repeats=1, forward_mb=1.0,
                    peak_mb=100.0, hwm_reset=True, threads=1, note="")
    return run


def test_real_sweep_writes_every_file_and_a_rerun_measures_only_new_points(tmp_path, monkeypatch):
    counter = Counting(bench.run_point)  # real: each point in a fresh process
    monkeypatch.setattr(bench, "run_point", counter)
    bench.run_sweep(config(tmp_path), progress=False, echo=lambda s: None)
    assert sorted(counter.calls) == sorted((m, n) for m in MIXERS for n in (64, 128))

    rows = csv_rows(tmp_path)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert float(r["time_s"]) > 0 and float(r["peak_mb"]) > float(r["forward_mb"]) > 0
        assert r["heads"] == "1"  # neither ssm mixer uses heads
    summary = json.loads((tmp_path / "mixers_scaling.json").read_text())
    assert summary["command"] == "pytest" and summary["date"]
    assert summary["machine"]["cpu"] and summary["machine"]["torch"]
    assert len(summary["points"]) == 4
    table = (tmp_path / "mixers_scaling.md").read_text()
    assert "| s4d | ssm |" in table and "| mamba | ssm |" in table and "pytest" in table
    assert (tmp_path / "mixers_scaling.png").read_bytes()[:4] == b"\x89PNG"

    # a rerun measures nothing and keeps every point exactly once
    counter.calls.clear()
    bench.run_sweep(config(tmp_path), progress=False, echo=lambda s: None)
    assert counter.calls == [] and csv_rows(tmp_path) == rows


def test_rerun_over_a_longer_grid_measures_only_the_new_points(tmp_path, monkeypatch):
    counter = Counting(fake_point())
    monkeypatch.setattr(bench, "run_point", counter)
    bench.run_sweep(config(tmp_path), progress=False, echo=lambda s: None)
    counter.calls.clear()
    bench.run_sweep(config(tmp_path, max_log2_len=8), progress=False, echo=lambda s: None)
    assert sorted(counter.calls) == [("mamba", 256), ("s4d", 256)]
    keys = [(r["mixer"], r["length"]) for r in csv_rows(tmp_path)]
    assert len(keys) == len(set(keys)) == 6


def test_interrupted_sweep_keeps_its_points_and_force_replaces_without_duplicates(tmp_path, monkeypatch):
    measured = []

    def interrupt_on_third(cfg, mixer, length, timeout_s):
        if len(measured) == 2:
            raise KeyboardInterrupt
        measured.append((mixer, length))
        return fake_point()(cfg, mixer, length, timeout_s)

    monkeypatch.setattr(bench, "run_point", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        bench.run_sweep(config(tmp_path), progress=False, echo=lambda s: None)
    assert len(csv_rows(tmp_path)) == 2  # saved as they finished
    assert (tmp_path / "mixers_scaling.json").exists()  # reports written on the way out

    counter = Counting(fake_point())
    monkeypatch.setattr(bench, "run_point", counter)
    bench.run_sweep(config(tmp_path), progress=False, echo=lambda s: None)
    assert len(counter.calls) == 2 and not set(counter.calls) & set(measured)
    assert len(csv_rows(tmp_path)) == 4

    counter.calls.clear()
    bench.run_sweep(config(tmp_path, force=True), progress=False, echo=lambda s: None)
    assert len(counter.calls) == 4 and len(csv_rows(tmp_path)) == 4


def test_points_predicted_over_budget_are_skipped(tmp_path, monkeypatch, capsys):
    counter = Counting(fake_point(seconds_per_position=0.1))  # 6.4 s at L=64, 12.8 s at 128
    monkeypatch.setattr(bench, "run_point", counter)
    bench.run_sweep(config(tmp_path, mixers=("s4d",), max_log2_len=9, budget_s=20.0),
                    progress=False, echo=lambda s: None)
    # s4d is O(L log L): at 256 the prediction is 12.8 s * (256 * 8) / (128 * 7) = 29 s > 20 s
    assert counter.calls == [("s4d", 64), ("s4d", 128)]
    out = capsys.readouterr().out
    assert "L=2^8  skipped: predicted 29 s > budget 20 s" in out
    assert "L=2^9  skipped: predicted" in out
    summary = json.loads((tmp_path / "mixers_scaling.json").read_text())
    assert [s["length"] for s in summary["skipped_in_last_run"]] == [256, 512]


@pytest.mark.parametrize("complexity,ratio", [("O(L)", 2.0), ("O(L^2)", 4.0), ("O(L log L)", 2 * 11 / 10),
                                              ("O(L k)", 2.0), ("O(L sqrt L)", 2 ** 1.5)])
def test_growth_follows_the_complexity(complexity, ratio):
    f = bench.growth(complexity)
    assert f(2048) / f(1024) == pytest.approx(ratio)


def test_prediction_takes_the_faster_of_model_and_observed_growth():
    # observed: x4 per doubling, model O(L): x2 -> the observed growth wins
    assert bench.predict_time([(64, 1.0), (128, 4.0)], 256, "O(L)") == pytest.approx(16.0)
    # observed: x1 (overhead-bound), model O(L^2): x4 -> the model wins
    assert bench.predict_time([(64, 1.0), (128, 1.0)], 256, "O(L^2)") == pytest.approx(4.0)
    assert bench.predict_time([], 256, "O(L)") is None


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_log2_len"):
        config(tmp_path, min_log2_len=8, max_log2_len=7)
    with pytest.raises(ValueError, match="dtype"):
        config(tmp_path, dtype="float16x")
    with pytest.raises(ValueError, match="valid names"):
        bench.run_sweep(config(tmp_path, mixers=("nope",)), progress=False, echo=lambda s: None)


@pytest.mark.parametrize("outcome,status,note", [
    (dict(returncode=-9, stdout="", stderr=""), "error", "killed by signal 9"),
    (dict(returncode=0, stdout='{"error": "ValueError: x is too long"}\n', stderr=""), "error", "too long"),
    (dict(returncode=1, stdout="", stderr="Traceback...\nRuntimeError: boom"), "error", "RuntimeError: boom"),
    ("timeout", "timeout", "killed after 5 s"),
])
def test_failed_points_are_recorded_and_stop_the_mixer(tmp_path, monkeypatch, outcome, status, note):
    import subprocess

    def fake_run(args, **kw):
        if outcome == "timeout":
            raise subprocess.TimeoutExpired(args, kw["timeout"])
        return subprocess.CompletedProcess(args, **outcome)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    row = bench.run_point(config(tmp_path), "s4d", 64, timeout_s=5)
    assert row["status"] == status and note in row["note"]

    bench.run_sweep(config(tmp_path, mixers=("s4d",)), progress=False, echo=lambda s: None)
    rows = csv_rows(tmp_path)
    assert [(r["length"], r["status"]) for r in rows] == [("64", status)]  # 128 not attempted
    summary = json.loads((tmp_path / "mixers_scaling.json").read_text())
    assert summary["skipped_in_last_run"][0]["reason"] == f"a shorter point: {status}"
