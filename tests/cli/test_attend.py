"""`longmix attend`: the job end to end on 1 and 2 local ranks, its float64 reference, bad flags."""
from __future__ import annotations

import json
import math

import pytest
import torch

from longmix.bench import attend as job
from longmix.cli import main
from longmix.dist.layout import segments


def materialized(cfg: job.AttendConfig) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V over the whole regenerated sequence, scores materialized, float64."""
    q, k, v = (job.rows_of(cfg, name, 0, cfg.seq_len, torch.float64) for name in "qkv")
    group = cfg.heads // cfg.kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(cfg.head_dim)
    if cfg.causal:
        scores = scores.masked_fill(torch.ones(cfg.seq_len, cfg.seq_len).triu(1).bool(), -math.inf)
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal", [True, False])
def test_streamed_reference_matches_materialized_attention(causal, monkeypatch):
    monkeypatch.setattr(job, "CHUNK", 64)  # small chunks: several chunk boundaries at small L
    # streams over 4 chunks (the last partial), GQA, a batch of 2
    cfg = job.AttendConfig(seq_len=3 * 64 + 37, heads=4, kv_heads=2, head_dim=8, causal=causal,
                           dtype="fp32", check_rows=8, batch=2)
    rows = job.sample_rows(cfg)
    assert rows[0] == 0 and rows[-1] == cfg.seq_len - 1 and len(set(rows)) == 8
    expected = materialized(cfg)[:, rows]
    torch.testing.assert_close(job.reference_rows(cfg, rows), expected, rtol=1e-12, atol=1e-12)


def test_shards_regenerate_the_same_sequence(monkeypatch):
    monkeypatch.setattr(job, "CHUNK", 64)
    cfg = job.AttendConfig(seq_len=2 * 64 + 5, heads=2, kv_heads=1, head_dim=4, dtype="bf16")
    full = job.rows_of(cfg, "k", 0, cfg.seq_len)
    assert full.dtype == torch.bfloat16 and full.shape == (1, cfg.seq_len, 1, 4)
    for rank in range(3):
        segs = segments(cfg.seq_len, 3, rank, "zigzag")
        expected = torch.cat([full[:, s:s + n] for s, n in segs], dim=1)
        assert torch.equal(job.build_shard(cfg, "k", segs), expected)


def test_verification_flags_a_wrong_row():
    cfg = job.AttendConfig(seq_len=64, heads=2, kv_heads=2, head_dim=4, dtype="fp64", check_rows=64)
    segs = segments(cfg.seq_len, 2, 1, "zigzag")
    out = torch.cat([materialized(cfg)[:, s:s + n] for s, n in segs], dim=1)
    good = job._verify_local_rows(cfg, segs, out)
    assert len(good["rows_checked"]) == 32 and good["max_rel_err"] < 1e-12
    out[:, 3] = out[:, 4]  # one misplaced row
    assert job._verify_local_rows(cfg, segs, out)["max_rel_err"] > 1e-2


@pytest.mark.parametrize("argv, world, strategy", [
    (["--procs", "1", "--seq-len", "333", "--heads", "2", "--head-dim", "16", "--dtype", "fp64",
      "--no-causal"], 1, "local"),
    (["--procs", "2", "--seq-len", "1001", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
      "--dtype", "fp32", "--strategy", "ring"], 2, "ring"),
    (["--procs", "2", "--seq-len", "512", "--heads", "2", "--head-dim", "32", "--strategy",
      "shuffle"], 2, "shuffle"),  # the default dtype, bf16
])
def test_attend_runs_and_passes(tmp_path, capsys, argv, world, strategy):
    report_file = tmp_path / "report.json"
    assert main(["attend", *argv, "--no-progress", "--json", str(report_file)]) == 0
    printed = capsys.readouterr().out
    for field in (f"world size: {world}", f"plan: {strategy}", "GFLOP/s", "peak mem",
                  "communication per rank", "PASS"):
        assert field in printed, printed
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["world_size"] == world and report["strategy"] == strategy
    assert report["rows_checked"] == 16
    assert report["max_rel_err"] <= job.TOLERANCE[report["config"]["dtype"]]
    for rank in report["ranks"]:
        assert rank["peak_rss_bytes"] >= rank["baseline_rss_bytes"] > 0
        if world > 1:  # what the engine counted vs the formula (shards differ by <= 1 row)
            theory = report["theory_bytes_sent_per_rank"]
            assert rank["bytes_sent"] == pytest.approx(theory, rel=0.02)


def test_parser_choices_match_the_library():
    """commands/attend.py copies these to keep `longmix --help` free of torch; they must agree."""
    import longmix.dist as ld
    from longmix.commands import attend as command

    assert command.STRATEGIES == ld.STRATEGIES and command.LAYOUTS == ld.LAYOUTS
    assert set(command.DTYPES) == set(job.DTYPES)


@pytest.mark.parametrize("argv, flag", [
    (["--seq-len", "0"], "--seq-len"),
    (["--procs", "0"], "--procs"),
    (["--heads", "4", "--kv-heads", "3"], "--kv-heads"),
    (["--strategy", "tree"], "--strategy"),
    (["--dtype", "fp16"], "--dtype"),
    (["--head-dim", "x"], "--head-dim"),
    (["--procs", "2", "--heads", "3", "--kv-heads", "3", "--strategy", "shuffle"], "--strategy"),
    (["--procs", "2", "--strategy", "hybrid"], "--strategy"),
])
def test_bad_flags_name_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        main(["attend", *argv])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
