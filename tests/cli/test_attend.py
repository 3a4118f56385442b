"""`longmix attend`: the job end to end on 1 and 2 local ranks, its float64 reference, a check
that fails when it should, bad flags and exit statuses."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from longmix.attend import verify, workload
from longmix.attend.workload import AttendConfig
from longmix.cli import main
from longmix.parallel.layout import segments


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Calibrations go to a folder of this module's (shared by its tests, so each shape is
    measured once), never to the user's cache."""
    folder = tmp_path_factory.mktemp("calibration-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LONGMIX_CACHE_DIR", str(folder))
        yield folder


def materialized(cfg: AttendConfig) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V over the whole regenerated sequence, scores materialized, float64."""
    q, k, v = (workload.rows_of(cfg, name, 0, cfg.seq_len, torch.float64) for name in "qkv")
    group = cfg.heads // cfg.kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(cfg.head_dim)
    if cfg.causal:
        scores = scores.masked_fill(torch.ones(cfg.seq_len, cfg.seq_len).triu(1).bool(), -math.inf)
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal", [True, False])
def test_streamed_reference_matches_materialized_attention(causal, monkeypatch):
    monkeypatch.setattr(workload, "CHUNK", 64)  # small chunks: several chunk boundaries at small L
    monkeypatch.setattr(verify, "CHUNK", 64)
    # streams over 4 chunks (the last partial), GQA, a batch of 2
    cfg = AttendConfig(seq_len=3 * 64 + 37, heads=4, kv_heads=2, head_dim=8, causal=causal,
                       dtype="fp32", check_rows=8, batch=2)
    rows = verify.sample_rows(cfg, world=2)
    expected = materialized(cfg)[:, rows]
    torch.testing.assert_close(verify.reference_rows(cfg, rows), expected, rtol=1e-12, atol=1e-12)


def test_sampled_rows_cover_every_boundary_edge_and_end():
    cfg = AttendConfig(seq_len=1000, check_rows=5)
    for world in (2, 3, 4):
        rows = set(verify.sample_rows(cfg, world))
        assert {0, 999} <= rows
        for layout in ("zigzag", "contiguous"):
            for rank in range(world):
                for start, n in segments(1000, world, rank, layout):
                    assert {start, start + n - 1} <= rows, (world, layout, start, n)
        assert len(rows) == len(verify.structural_rows(1000, world)) + 5  # and 5 random ones
    assert verify.sample_rows(AttendConfig(seq_len=1000, check_rows=0), 2) == []


def test_shards_regenerate_the_same_sequence(monkeypatch):
    monkeypatch.setattr(workload, "CHUNK", 64)
    cfg = AttendConfig(seq_len=2 * 64 + 5, heads=2, kv_heads=1, head_dim=4, dtype="bf16")
    full = workload.rows_of(cfg, "k", 0, cfg.seq_len)
    assert full.dtype == torch.bfloat16 and full.shape == (1, cfg.seq_len, 1, 4)
    for rank in range(3):
        segs = segments(cfg.seq_len, 3, rank, "zigzag")
        expected = torch.cat([full[:, s:s + n] for s, n in segs], dim=1)
        assert torch.equal(workload.build_shard(cfg, "k", segs), expected)


def test_tolerance_is_tight_enough_to_catch_both_faults_at_a_million_tokens():
    L = 2**20
    for dtype in ("bf16", "fp32", "fp64"):
        tol = verify.tolerance(dtype, L)
        assert tol < verify.fault_sizes(L)["dropped_block"] / 1.5
        assert tol < verify.fault_sizes(L)["scale_1pct"]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_check_fails_on_a_dropped_key_block_and_on_a_scale_error(dtype):
    """The kernel's output passes; the same output with one 256-key block dropped from the last
    row, or scaled by 1.01, fails."""
    L = 4096
    cfg = AttendConfig(seq_len=L, heads=1, kv_heads=1, head_dim=32, dtype=dtype, check_rows=4)
    from longmix.ops import attention_with_lse

    q, k, v = (workload.rows_of(cfg, name, 0, L) for name in "qkv")
    out = attention_with_lse(q, k, v, causal=True)[0]
    segs = [(0, L)]

    def check(o):
        return verify.verdict(cfg, 1, [verify.verify_local_rows(cfg, 1, segs, o)])

    assert check(out)["verdict"] == "PASS", check(out)
    # the last row without keys [L-512, L-256): attention over the other keys only
    keep = torch.ones(L, dtype=torch.bool)
    keep[L - 512:L - 256] = False
    dropped = out.clone()
    dropped[:, -1:] = attention_with_lse(q[:, -1:].double(), k[:, keep].double(),
                                         v[:, keep].double())[0].to(out.dtype)
    assert check(dropped)["verdict"] == "FAIL"
    assert check(out * 1.01)["verdict"] == "FAIL"


def test_verification_flags_a_wrong_row():
    cfg = AttendConfig(seq_len=64, heads=2, kv_heads=2, head_dim=4, dtype="fp64", check_rows=64)
    segs = segments(cfg.seq_len, 2, 1, "zigzag")
    out = torch.cat([materialized(cfg)[:, s:s + n] for s, n in segs], dim=1)
    good = verify.verify_local_rows(cfg, 2, segs, out)
    assert len(good["rows_checked"]) == 32 and good["max_rel_err"] < 1e-12
    out[:, 3] = out[:, 4]  # one misplaced row
    assert verify.verify_local_rows(cfg, 2, segs, out)["max_rel_err"] > 1e-2


@pytest.mark.parametrize("argv, world, strategy", [
    (["--procs", "1", "--seq-len", "333", "--heads", "2", "--head-dim", "16", "--dtype", "fp64",
      "--no-causal"], 1, "local"),
    (["--procs", "2", "--seq-len", "1001", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
      "--dtype", "float32", "--strategy", "ring"], 2, "ring"),
    (["--procs", "2", "--seq-len", "512", "--heads", "2", "--head-dim", "32", "--strategy",
      "shuffle"], 2, "shuffle"),  # the default dtype: chosen by calibration
    (["--procs", "2", "--seq-len", "300", "--heads", "2", "--dtype", "fp64", "--strategy",
      "hybrid"], 2, "hybrid"),  # P = 2: the degenerate grid
])
def test_attend_runs_and_passes(tmp_path, capsys, argv, world, strategy):
    report_file = tmp_path / "report.json"
    assert main(["attend", *argv, "--no-progress", "--json", str(report_file)]) == 0
    printed = capsys.readouterr().out
    for field in (f"world size: {world}", f"plan: {strategy}", "GFLOP/s", "peak mem",
                  "calibration", "of the prediction", "communication per rank", "PASS"):
        assert field in printed, printed
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["world_size"] == world and report["strategy"] == strategy
    assert report["verification"]["rows_checked"] == report["verification"]["rows_wanted"] > 16
    assert report["verification"]["max_rel_err"] <= report["verification"]["tolerance"]
    assert report["calibration"]["rates"] and report["machine"]["cpu"]
    link = report["calibration"]["bandwidth_bytes_per_s"]
    if world > 1:  # measured between the ranks: loopback gloo moves far less than 1 TB/s
        assert 0 < link < 1e12 and "GB/s per rank" in printed
    else:
        assert link is None and "no link (one rank)" in printed
    # the code version, flat as in every other record (train, study, bench)
    assert {"git_describe", "git_commit", "git_dirty", "git_diff_sha256"} <= report.keys()
    assert "code" not in report
    # the progress bar's work units: the kernels counted all the useful work, once
    done = sum(rank["work_flops"] for rank in report["ranks"])
    assert done == pytest.approx(report["flops"], rel=0.02)
    for rank in report["ranks"]:
        assert rank["peak_rss_bytes"] >= rank["baseline_rss_bytes"] > 0
        # the refusal of jobs too large rests on this: the prediction is an upper estimate
        assert rank["peak_rss_bytes"] <= report["predicted_bytes_per_rank"], (
            rank["peak_rss_bytes"] / 2**20, rank["baseline_rss_bytes"] / 2**20,
            report["predicted_bytes_per_rank"] / 2**20)
        if world > 1:  # what the engine counted vs the formula (shards differ by <= 1 row)
            theory = report["theory_bytes_sent_per_rank"]
            assert rank["bytes_sent"] == pytest.approx(theory, rel=0.02)


def test_check_rows_zero_is_not_verified_and_never_pass(capsys):
    assert main(["attend", "--procs", "1", "--seq-len", "64", "--dtype", "fp32",
                 "--check-rows", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "not verified" in out and "PASS" not in out


def test_the_parser_is_built_without_torch():
    """The choices come from the torch-free vocabulary, so `longmix attend --help` stays fast."""
    code = ("import argparse, sys; from longmix.commands import attend; "
            "attend.add_arguments(argparse.ArgumentParser()); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("argv, flag", [
    (["--seq-len", "0"], "--seq-len"),
    (["--procs", "0"], "--procs"),
    (["--heads", "4", "--kv-heads", "3"], "--kv-heads"),
    (["--strategy", "tree"], "--strategy"),
    (["--dtype", "fp16"], "--dtype"),
    (["--head-dim", "x"], "--head-dim"),
    (["--procs", "2", "--heads", "3", "--kv-heads", "3", "--strategy", "shuffle"], "--strategy"),
    (["--procs", "4", "--heads", "3", "--strategy", "hybrid", "--hybrid-size", "2"], "--strategy"),
    (["--procs", "2", "--hybrid-size", "2"], "--hybrid-size"),
    (["--json", "/nonexistent-folder/report.json"], "--json"),
    (["--seq-len", "17179869184"], "--seq-len"),  # would need terabytes per rank
])
def test_bad_flags_name_the_flag_and_exit_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        main(["attend", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    if flag == "--seq-len" and "17179869184" in argv:
        assert "GiB per rank" in err and "available" in err


def test_a_failing_rank_exits_3(monkeypatch, capsys):
    from longmix.attend import job

    def broken(*args, **kwargs):
        from longmix.parallel.launch import RankFailure

        raise RankFailure(1, "rank 1 died with exit code -9")

    monkeypatch.setattr(job, "run_local_job", broken)
    assert main(["attend", "--procs", "1", "--seq-len", "64", "--dtype", "fp32",
                 "--no-progress"]) == 3
    assert "rank 1 died" in capsys.readouterr().err


def test_calibration_is_measured_once_then_reused_from_the_cache(tmp_path, monkeypatch):
    from longmix.attend import calibrate
    from longmix.attend.job import local_calibration

    monkeypatch.setenv("LONGMIX_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache
    first = local_calibration(1, heads=1, kv_heads=1, head_dim=8, dtypes=("fp32",))
    assert not first["cached"] and first["rates"]["fp32"] > 0
    assert first["cache_file"].startswith(str(tmp_path / "cache"))
    again = local_calibration(1, heads=1, kv_heads=1, head_dim=8, dtypes=("fp32",))
    assert again["cached"] and again["rates"] == first["rates"]
    assert not local_calibration(1, heads=1, kv_heads=1, head_dim=8, dtypes=("fp32",),
                                 recalibrate=True)["cached"]
    other = local_calibration(1, heads=1, kv_heads=1, head_dim=16, dtypes=("fp32",))
    assert not other["cached"] and other["cache_file"] != first["cache_file"]
    import os

    os.utime(first["cache_file"], (0, 0))  # a calibration from long ago is measured again
    assert not local_calibration(1, heads=1, kv_heads=1, head_dim=8, dtypes=("fp32",))["cached"]
    assert not list((tmp_path / "cache").glob("*.tmp"))  # written atomically, nothing left over
    assert calibrate.choose_dtype("auto", {"fp32": 100e9, "bf16": 105e9})[0] == "fp32"  # not worth it
    assert calibrate.choose_dtype("auto", {"fp32": 100e9, "bf16": 200e9})[0] == "bf16"


def test_memory_prediction_refuses_what_cannot_fit(monkeypatch):
    from longmix.attend import resources

    kw = dict(seq_len=2**20, world=2, local_ranks=2, heads=1, kv_heads=1, head_dim=32, dtype="fp32")
    monkeypatch.setattr(resources, "available_bytes", lambda: (64 * 2**30, "MemAvailable"))
    assert resources.memory_error(**kw) is None
    monkeypatch.setattr(resources, "available_bytes", lambda: (300 * 2**20, "cgroup limit"))
    why = resources.memory_error(**kw)
    assert "GiB per rank x 2 rank(s)" in why and "cgroup limit" in why


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (forkserver, ranks), from /proc."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _attend_process(*argv):
    import os
    import subprocess
    import sys

    env = dict(os.environ)  # LONGMIX_CACHE_DIR: this module's cache
    return subprocess.Popen([sys.executable, "-m", "longmix.cli", "attend", "--no-progress",
                             "--dtype", "fp32", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="reads /proc")
def test_sigterm_stops_attend_and_every_rank():
    import os
    import signal
    import time

    proc = _attend_process("--seq-len", "1048576", "--check-rows", "0")
    try:
        deadline = time.monotonic() + 60
        while len(_descendants(proc.pid)) < 3:  # the forkserver and two ranks
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        below = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
        assert "stopped by SIGTERM" in err
        deadline = time.monotonic() + 5
        while [p for p in below if _running(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in below if _running(p)]
        assert not left, f"processes left after SIGTERM: {left}; stderr: {err}"
    finally:
        proc.kill()


def test_runtime_failure_exits_3_without_leaked_semaphores():
    proc = _attend_process("--seq-len", "262144", "--timeout", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "timed out" in err and "leaked semaphore" not in err
