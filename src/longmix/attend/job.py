"""The `longmix attend` job on each rank (a dtype already chosen), and the local launcher.

On each rank: plan with the measured rates -> generate the rank's shard -> attention, timed,
with a progress bar over the useful flops done -> verify sampled rows against float64 -> one
report. The steps before (checks, calibration, the dtype, the memory check) are
:func:`longmix.attend.main.run_job`'s, for both launchers.
"""
from __future__ import annotations

import dataclasses
import os
import time

import torch
import torch.distributed as dist

from longmix.machine import current_rss_bytes, describe, peak_rss_bytes

from . import calibrate as cal_mod
from .config import AttendConfig
from .progress import Progress, WorkCounter
from .report import theoretical_bytes_sent
from .resources import predicted_bytes_per_rank
from .verify import verdict, verify_local_rows
from .workload import build_shard


# ---------------------------------------------------------------------------------------------
# Planning from the calibration.

def plan_for(cfg: AttendConfig, world: int, calibration: dict | None):
    """The planner's choice and prediction for ``cfg`` on ``world`` ranks, at measured rates."""
    from longmix.parallel import plan

    rates = {}
    if calibration:
        rates = dict(flops_per_s=calibration["rates"].get(cfg.dtype),
                     bandwidth_bytes_per_s=calibration["bandwidth_bytes_per_s"],
                     latency_s=calibration["latency_s"])
    return plan(seq_len=cfg.seq_len, heads=cfg.heads, kv_heads=cfg.kv_heads,
                head_dim=cfg.head_dim, world_size=world, dtype=cfg.torch_dtype,
                causal=cfg.causal, layout=cfg.layout, batch=cfg.batch, **rates)


def resolve_strategy(cfg: AttendConfig, world: int, chosen) -> tuple[str, int | None]:
    """(strategy, hybrid_size) the job runs: auto follows the calibrated plan; one process runs
    the local op."""
    if world == 1:
        return "local", None
    if cfg.strategy == "auto":
        return chosen.strategy, chosen.hybrid_size
    if cfg.strategy == "hybrid":
        return "hybrid", cfg.hybrid_size or chosen.option("hybrid").hybrid_size
    return cfg.strategy, None


def possible_strategies(cfg: AttendConfig, world: int) -> tuple[str, ...]:
    """The strategies the job may run: the one asked for, or under "auto" every feasible one
    (the calibrated plan picks among them later)."""
    if world == 1:
        return ("local",)
    if cfg.strategy != "auto":
        return (cfg.strategy,)
    if cfg.dtype == "auto":  # feasibility does not depend on the dtype
        cfg = dataclasses.replace(cfg, dtype="fp32")
    options = plan_for(cfg, world, None).options
    return tuple(o.strategy for o in options if o.feasible and not o.degenerate)


def strategy_error(cfg: AttendConfig, world: int) -> str | None:
    """Why ``cfg.strategy`` cannot run on ``world`` ranks (None when it can), before spawning any."""
    if world == 1 or cfg.strategy == "auto":
        return None
    from longmix.parallel.attn.validate import head_split_error

    if cfg.strategy == "hybrid" and cfg.hybrid_size is not None:
        if world % cfg.hybrid_size:
            return f"--hybrid-size {cfg.hybrid_size} must divide the world size {world}"
        why = head_split_error(cfg.heads, cfg.kv_heads, cfg.hybrid_size)
        return None if why is None else f"hybrid with groups of {cfg.hybrid_size}: {why}"
    if cfg.dtype == "auto":  # feasibility does not depend on the dtype
        cfg = dataclasses.replace(cfg, dtype="fp32")
    option = plan_for(cfg, world, None).option(cfg.strategy)
    if option.feasible:
        return None
    return (f"{cfg.strategy} cannot run heads={cfg.heads}, kv_heads={cfg.kv_heads} on {world} "
            f"ranks: {option.note.removeprefix('infeasible: ')}")


# ---------------------------------------------------------------------------------------------
# The job on one rank.

def attend_rank(group, cfg: AttendConfig, progress: bool = True, calibration: dict | None = None,
                dtype_reason: str = "") -> dict:
    """Generate this rank's shard, run longmix.parallel.attention, verify sampled rows.

    Collective: every rank of ``group`` must call it. Returns the same full report on every rank
    (per-rank figures are all-gathered), so rank 0 of a torchrun job can print it.
    """
    from longmix.parallel import attention
    from longmix.parallel.layout import segments
    from longmix.parallel.stats import CommStats
    from longmix.ops.attention import attention_flops

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    baseline_rss = current_rss_bytes()
    chosen = plan_for(cfg, world, calibration)
    strategy, hybrid_size = resolve_strategy(cfg, world, chosen)
    total = attention_flops(cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim, cfg.causal)
    bar = Progress(progress and rank == 0, total / world / 1e9)
    segs = segments(cfg.seq_len, world, rank, cfg.layout)
    timings = {}
    counter = WorkCounter()
    try:
        with bar.phase("generate"):
            t0 = time.perf_counter()
            q, k, v = (build_shard(cfg, name, segs) for name in ("q", "k", "v"))
            timings["generate_s"] = time.perf_counter() - t0

        stats = CommStats()
        dist.barrier(group)
        with bar.phase("attention", counter):
            t0 = time.perf_counter()
            run_as = "auto" if strategy == "local" else strategy
            out = attention(q, k, v, causal=cfg.causal, group=group, strategy=run_as,
                            layout=cfg.layout, stats=stats, hybrid_size=hybrid_size)
            own_s = time.perf_counter() - t0
            dist.barrier(group)  # elapsed = until the slowest rank is done
            timings["attend_s"] = time.perf_counter() - t0
            timings["attend_own_s"] = own_s
        del q, k, v

        with bar.phase("verify"):
            t0 = time.perf_counter()
            check = verify_local_rows(cfg, world, segs, out)
            timings["verify_s"] = time.perf_counter() - t0
    finally:
        bar.close()

    mine = {"rank": rank, "local_len": sum(n for _, n in segs), "segments": segs,
            "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
            "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline_rss,
            "threads": torch.get_num_threads(), "work_flops": counter.flops, **timings, **check}
    per_rank = [None] * world
    dist.all_gather_object(per_rank, mine, group=group)
    return summarize(cfg, world, per_rank, chosen, strategy, hybrid_size, calibration,
                     dtype_reason)


def summarize(cfg: AttendConfig, world: int, per_rank: list[dict], chosen, strategy: str,
              hybrid_size: int | None, calibration: dict | None, dtype_reason: str) -> dict:
    from longmix.ops.attention import attention_flops
    from longmix.provenance import provenance, utc_now

    elapsed = max(r["attend_s"] for r in per_rank)
    option = chosen.option(strategy) if strategy in ("shuffle", "ring", "hybrid") else None
    if strategy == "hybrid" and hybrid_size != chosen.option("hybrid").hybrid_size:
        option = None  # a user-given group size the plan did not cost
    flops = attention_flops(cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim, cfg.causal)
    shape = dict(seq_len=cfg.seq_len, heads=cfg.heads, kv_heads=cfg.kv_heads,
                 head_dim=cfg.head_dim, dtype=cfg.dtype, world=world, batch=cfg.batch)
    check = verdict(cfg, world, per_rank)
    rate = (calibration or {}).get("rates", {}).get(cfg.dtype)
    return {
        "config": dataclasses.asdict(cfg),
        "world_size": world,
        "strategy": strategy,
        "hybrid_size": hybrid_size,
        "plan": {"strategy": chosen.strategy, "reason": chosen.reason,
                 "predicted_time_s": (option.predicted_time_s if option else
                                      chosen.predicted_time_s if strategy == "local" else None),
                 "bytes_per_rank": option.bytes_per_rank if option else 0,
                 "rates": "calibrated" if calibration else "planner defaults"},
        "elapsed_s": elapsed,
        "flops": flops,
        "gflops_per_s": flops / elapsed / 1e9 if elapsed > 0 else None,
        "calibrated_gflops_per_rank": rate / 1e9 if rate else None,
        "theory_bytes_sent_per_rank": theoretical_bytes_sent(strategy, hybrid_size=hybrid_size,
                                                             **shape),
        "predicted_bytes_per_rank": predicted_bytes_per_rank(**shape, strategies=(strategy,)),
        "ranks": per_rank,
        "verification": check,
        "passed": check["passed"],
        "calibration": calibration,
        "dtype_reason": dtype_reason,
        "machine": describe(),
        "date": utc_now(),
        **provenance(),
    }


# ---------------------------------------------------------------------------------------------
# Launch: spawn local ranks, or join torchrun's group.

def local_calibration(procs: int, *, heads: int, kv_heads: int, head_dim: int,
                      dtypes: tuple[str, ...], recalibrate: bool = False,
                      timeout: float = 300.0) -> dict:
    """The calibration for ``procs`` local ranks: cached when this machine already measured this
    shape, else measured on freshly spawned ranks (a few seconds) and cached."""
    from longmix.parallel.launch import run_local

    threads = max(1, (os.cpu_count() or 1) // procs)  # what run_local gives each rank
    path = cal_mod.cache_path(describe(), procs=procs, threads_per_rank=threads, heads=heads,
                              kv_heads=kv_heads, head_dim=head_dim)
    cached = None if recalibrate else cal_mod.load_cached(path)
    if cached and all(d in cached["rates"] for d in dtypes):
        return {**cached, "cached": True, "cache_file": str(path)}
    measured = run_local(cal_mod.calibrate_rank, procs, args=(heads, kv_heads, head_dim, dtypes),
                         timeout=timeout, collective_timeout=timeout)[0]
    from longmix.provenance import utc_now

    measured = {**measured, "date": utc_now()}
    cal_mod.store(path, measured)
    return {**measured, "cached": False, "cache_file": str(path)}


def run_local_job(cfg: AttendConfig, procs: int, progress: bool = True,
                  calibration: dict | None = None, dtype_reason: str = "") -> dict:
    """Run the job on ``procs`` spawned gloo ranks on this machine; return rank 0's report."""
    from longmix.parallel.launch import run_local

    reports = run_local(attend_rank, procs, args=(cfg, progress, calibration, dtype_reason),
                        timeout=cfg.timeout, collective_timeout=cfg.timeout)
    report = reports[0]
    report["launch"] = f"{procs} local process(es), gloo"
    return report
