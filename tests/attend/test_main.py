"""The main job's steps (`longmix.attend.main.settle`), the same for local ranks and torchrun: the
strategy and memory checks before calibration, the dtype chosen from it, memory checked again at
that dtype, and on torchrun every rank refusing together."""
from __future__ import annotations

import pytest

from longmix.attend import main, resources
from longmix.attend.config import AttendConfig
from longmix.parallel.launch import run_local

# A problem that fits in bf16 but not in fp32 when ``available`` bytes are free on the machine.
CFG = dict(seq_len=2**20, heads=1, head_dim=32, causal=True)
FP32_WINS = {"rates": {"fp32": 100e9, "bf16": 50e9}}  # as on a CPU without AMX


def _need(dtype: str, world: int = 2) -> int:
    # one head on 2 ranks: the ring is the only strategy that can run it
    return resources.predicted_bytes_per_rank(seq_len=CFG["seq_len"], world=world, heads=1,
                                              kv_heads=1, head_dim=32, dtype=dtype,
                                              strategies=("ring",))


def _between_bf16_and_fp32(local_ranks: int = 2) -> int:
    return (_need("bf16") + _need("fp32")) // 2 * local_ranks


def test_memory_is_checked_again_after_calibration_picks_fp32(monkeypatch):
    have = _between_bf16_and_fp32()
    monkeypatch.setattr(resources, "available_bytes", lambda: (have, "MemAvailable"))
    measured = []

    def calibrate(dtypes):
        measured.append(dtypes)
        return FP32_WINS

    with pytest.raises(main.Refused) as err:
        main.settle(AttendConfig(**CFG), 2, 2, calibrate=calibrate)
    assert measured == [("fp32", "bf16")]  # bf16 fitted, so calibration ran; fp32 did not fit
    assert err.value.argument == "--seq-len" and "in fp32" in err.value.reason


def test_settle_resolves_the_dtype_when_it_fits(monkeypatch):
    monkeypatch.setattr(resources, "available_bytes", lambda: (2**50, "MemAvailable"))
    cfg, calibration, why = main.settle(AttendConfig(**CFG), 2, 2, calibrate=lambda d: FP32_WINS)
    assert cfg.dtype == "fp32" and calibration is FP32_WINS and "calibrated" in why
    cfg, _, why = main.settle(AttendConfig(**CFG, dtype="bf16"), 2, 2,
                              calibrate=lambda d: {"rates": {"bf16": 1.0}})
    assert cfg.dtype == "bf16" and why == "requested with --dtype"


def test_what_cannot_fit_even_in_bf16_is_refused_before_calibration(monkeypatch):
    monkeypatch.setattr(resources, "available_bytes", lambda: (_need("bf16") // 2, "cgroup"))

    def calibrate(dtypes):
        raise AssertionError("calibrated a job that cannot fit")

    with pytest.raises(main.Refused, match="in bf16"):
        main.settle(AttendConfig(**CFG), 2, 2, calibrate=calibrate)


def test_an_infeasible_strategy_is_refused_first():
    with pytest.raises(main.Refused) as err:
        main.settle(AttendConfig(**{**CFG, "heads": 3}, strategy="shuffle"), 2, 2,
                    calibrate=lambda d: FP32_WINS)
    assert err.value.argument == "--strategy"


def _settle_on_torchrun_ranks(group, have_on_rank1: int):
    """What each rank of a torchrun job does: settle with refusals agreed over the group. Only
    rank 1 is short of memory (another node, say); both must refuse, with rank 1's reason."""
    import torch.distributed as dist

    from longmix.attend import main as m
    from longmix.attend import resources as res

    rank = dist.get_rank(group)
    res.available_bytes = lambda: ((have_on_rank1 if rank == 1 else 2**50), f"rank {rank}")
    try:
        cfg, _, _ = m.settle(AttendConfig(**CFG), 2, 2, calibrate=lambda d: FP32_WINS,
                             agree=lambda why: m._agree(why, group))
    except m.Refused as err:
        return err.argument, err.reason
    return cfg.dtype


def test_torchrun_ranks_recheck_memory_after_the_dtype_and_refuse_together():
    results = run_local(_settle_on_torchrun_ranks, 2, (_between_bf16_and_fp32(),), timeout=120)
    assert results[0] == results[1], results
    argument, reason = results[0]
    assert argument == "--seq-len" and "in fp32" in reason and "(rank 1)" in reason
    assert run_local(_settle_on_torchrun_ranks, 2, (2**50,), timeout=120) == ["fp32", "fp32"]


def test_the_command_and_the_job_share_one_set_of_defaults():
    import argparse

    from longmix.commands import attend as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([])
    default = AttendConfig()
    for name in ("seq_len", "heads", "head_dim", "causal", "strategy", "dtype", "check_rows",
                 "seed"):
        assert getattr(args, name) == getattr(default, name), name
    assert args.timeout == default.timeout
    assert default.layout == "zigzag" and AttendConfig(causal=False).layout == "contiguous"
    assert default.kv_heads == default.heads
