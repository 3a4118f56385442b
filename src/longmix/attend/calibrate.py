"""A few seconds of measurement on the machine the job runs on: kernel rates per dtype, link rates.

    cal = calibrate_rank(group, heads=1, kv_heads=1, head_dim=32)   # collective, every rank
    choose_dtype("auto", cal["rates"])                    # ("bf16", why) only where it is faster

Each rank times the local attention kernel (the one every strategy calls) on a rectangular block
like a ring step's -- 4,096 queries against 16,384 keys, non-causal, the median of 5 calls, on
this rank's thread count, all ranks at once so they contend for memory and cores as in the job --
in fp32 and in bf16, and
:func:`longmix.parallel.measure_rates` times a 4 MiB-per-peer and a tiny all-to-all between the
ranks (the link's bandwidth and latency; none on one rank). The slowest rank's figures are kept,
so all ranks agree. The planner turns them into a predicted time for the job.

Results are cached per machine (CPU model and flags, cores, torch version) and problem shape
under the user cache directory (``$LONGMIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/longmix``, else
``~/.cache/longmix``), written atomically, for a day; ``--recalibrate`` measures again.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from longmix.dtypes import DTYPES

CAL_QUERIES, CAL_KEYS, CAL_REPEATS = 4096, 16384, 5
#: bf16 must beat fp32 by this factor to be chosen: it costs accuracy, so a tie goes to fp32.
BF16_MARGIN = 1.1
#: A cached calibration older than this is measured again: the same machine's rates drift
#: (other work, thermal limits, a changed BIOS setting), and a few seconds are cheap.
CACHE_MAX_AGE_S = 24 * 3600


def calibrate_rank(group, heads: int, kv_heads: int, head_dim: int,
                   dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Measure useful attention flop rates per dtype and the link's rates; collective on ``group``."""
    import torch.distributed as dist

    from longmix.parallel import measure_rates
    from longmix.ops import attention_forward
    from longmix.ops.attention import attention_flops

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    rates = []
    for name in dtypes:
        dt = DTYPES[name]
        q = torch.randn(1, CAL_QUERIES, heads, head_dim, generator=gen).to(dt)
        k, v = (torch.randn(1, CAL_KEYS, kv_heads, head_dim, generator=gen).to(dt) for _ in "kv")
        attention_forward(q, k, v)  # warm-up: first-call set-up is not the job's rate
        times = []
        for _ in range(CAL_REPEATS):
            t0 = time.perf_counter()
            attention_forward(q, k, v)
            times.append(time.perf_counter() - t0)
        # the median, not the best: the job runs for minutes and meets the machine's usual
        # contention, not its best moment
        typical = statistics.median(times)
        # useful flops of a Lq x Lk block: the square formula scaled to the rectangle
        flops = attention_flops(1, heads, CAL_QUERIES, head_dim, False) * CAL_KEYS / CAL_QUERIES
        rates.append(flops / typical)
    mine = torch.tensor(rates, dtype=torch.float64)
    dist.all_reduce(mine, op=dist.ReduceOp.MIN, group=group)  # the slowest rank sets the pace
    world = dist.get_world_size(group)
    link = measure_rates(group) if world > 1 else None  # one rank has no link to measure
    return {"rates": dict(zip(dtypes, mine.tolist())),
            "bandwidth_bytes_per_s": link.bandwidth_bytes_per_s if link else None,
            "latency_s": link.latency_s if link else None,
            "threads_per_rank": torch.get_num_threads(), "world_size": world,
            "shape": {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                      "queries": CAL_QUERIES, "keys": CAL_KEYS},
            "seconds": time.perf_counter() - start}


def choose_dtype(requested: str, rates: dict) -> tuple[str, str]:
    """(dtype, why): the requested one, or for "auto" bf16 where its measured rate beats fp32's
    by :data:`BF16_MARGIN`, else fp32."""
    if requested != "auto":
        return requested, "requested with --dtype"
    if "bf16" in rates and rates["bf16"] > BF16_MARGIN * rates.get("fp32", 0.0):
        name = "bf16"
    else:
        name = "fp32"
    other = "fp32" if name == "bf16" else "bf16"
    if other not in rates:
        return name, "the only dtype calibrated"
    return name, (f"calibrated: {name} {rates[name] / 1e9:.0f} vs {other} {rates[other] / 1e9:.0f} "
                  f"GFLOP/s per rank; bf16 is chosen only when >= {BF16_MARGIN:g}x fp32")


def cache_dir() -> Path:
    if os.environ.get("LONGMIX_CACHE_DIR"):
        return Path(os.environ["LONGMIX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "longmix"


def cache_path(machine: dict, *, procs: int, threads_per_rank: int, heads: int, kv_heads: int,
               head_dim: int) -> Path:
    """Where the calibration of this machine, torch version and problem shape is kept."""
    key = {"cpu": machine.get("cpu"), "flags": machine.get("cpu_flags"),
           "cores": machine.get("cores"), "torch": machine.get("torch"), "procs": procs,
           "isa_limits": machine.get("isa_limits"),
           "threads": threads_per_rank, "heads": heads, "kv_heads": kv_heads,
           "head_dim": head_dim, "queries": CAL_QUERIES, "keys": CAL_KEYS,
           "link": "median all-to-all, 4 MiB per peer"}  # older caches measured it otherwise
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return cache_dir() / f"calibration-{digest}.json"


def load_cached(path: Path, max_age_s: float = CACHE_MAX_AGE_S) -> dict | None:
    """The cached calibration, or None when missing, unreadable or older than ``max_age_s``
    (then it is measured again)."""
    try:
        if time.time() - path.stat().st_mtime > max_age_s:
            return None
        cal = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cal if isinstance(cal, dict) and isinstance(cal.get("rates"), dict) else None


def store(path: Path, cal: dict) -> None:
    """Write the calibration atomically; a cache that cannot be written is only a lost speed-up."""
    from longmix.fileio import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cal, indent=2))
    except OSError:
        pass
