"""The machine's matmul peak per dtype: the yardstick every attention rate is reported against.

    peaks = measure_peaks(threads=(1, 2), dtypes=("fp32", "bf16"), budget_s=20)
    peaks[("bf16", 2)]      # best GFLOP/s of a square bf16 matmul on 2 threads

Attention is two matmuls per block (QK^T, PV) plus a softmax, so a dense matmul of the same dtype
on the same threads is the most it can reach; "% of peak" says how much of the machine a kernel
uses. Each (dtype, threads) point runs square matmuls of a few sizes and keeps the best rate,
which is what a peak is; fp32 and bf16 run in the same process, back to back, so they see the
same machine state.
"""
from __future__ import annotations

import time

import torch

from longmix.dtypes import DTYPES

SIZES = (1024, 2048, 4096)


def matmul_rate(dtype: str, size: int, threads: int, min_time_s: float = 0.3) -> float:
    """Best GFLOP/s (2·n³ flops per call) of an n x n matmul in ``dtype`` on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=gen).to(DTYPES[dtype]) for _ in "ab")
        a @ b  # warm-up: packing buffers, first-touch
        best, spent = float("inf"), 0.0
        while spent < min_time_s or best == float("inf"):
            t0 = time.perf_counter()
            a @ b
            t = time.perf_counter() - t0
            best, spent = min(best, t), spent + t
        return 2 * size**3 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def measure_peaks(threads: tuple[int, ...], dtypes: tuple[str, ...] = ("fp32", "bf16"),
                  sizes: tuple[int, ...] = SIZES, budget_s: float = 30.0) -> list[dict]:
    """One record per (dtype, threads, size): GFLOP/s; sizes that would pass the budget are
    skipped (the time per size is predicted from the previous one, x8 per doubling)."""
    records, start = [], time.perf_counter()
    for t in threads:
        for name in dtypes:
            last = None
            for n in sizes:
                predicted = 0.3 + (8 * last if last else 0.0)
                if last is not None and time.perf_counter() - start + predicted > budget_s:
                    records.append({"dtype": name, "threads": t, "size": n, "status": "skipped",
                                    "reason": "budget"})
                    continue
                t0 = time.perf_counter()
                rate = matmul_rate(name, n, t)
                last = 2 * n**3 / rate / 1e9
                records.append({"dtype": name, "threads": t, "size": n, "status": "ok",
                                "gflops": rate, "wall_s": time.perf_counter() - t0})
    return records


def peaks_by(records: list[dict]) -> dict[tuple[str, int], float]:
    """{(dtype, threads): best GFLOP/s over sizes}."""
    best: dict[tuple[str, int], float] = {}
    for r in records:
        if r.get("status") == "ok":
            key = (r["dtype"], r["threads"])
            best[key] = max(best.get(key, 0.0), r["gflops"])
    return best


def percent_of_peak(gflops: float, dtype: str, threads: int,
                    peaks: dict[tuple[str, int], float]) -> float | None:
    """``gflops`` as % of the matmul peak of ``dtype`` on ``threads`` (None when not measured)."""
    peak = peaks.get((dtype, threads))
    return 100 * gflops / peak if peak else None


KERNELS = ("torch sdpa", "longmix")


def attention_rate(kernel: str, dtype: str, threads: int, seq_len: int, heads: int,
                   head_dim: int, causal: bool, reps: int = 3) -> float:
    """Useful GFLOP/s (causal counted as half) of one local attention forward, median of ``reps``
    warm calls: ``"torch sdpa"`` is PyTorch's fused kernel as a user calls it, ``"longmix"`` is
    :func:`longmix.ops.attention_with_lse` (the same kernel, causal triangle split on >1 thread)."""
    import statistics

    from longmix.ops import attention_with_lse
    from longmix.ops.attention import attention_flops

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, seq_len, heads, head_dim, generator=gen).to(DTYPES[dtype])
                   for _ in "qkv")
        if kernel == "torch sdpa":
            sdpa = torch.nn.functional.scaled_dot_product_attention
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            call = lambda: sdpa(qt, kt, vt, is_causal=causal)  # noqa: E731
        elif kernel == "longmix":
            call = lambda: attention_with_lse(q, k, v, causal=causal)  # noqa: E731
        else:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        with torch.no_grad():
            call()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
        return attention_flops(1, heads, seq_len, head_dim, causal) / statistics.median(times) / 1e9
    finally:
        torch.set_num_threads(previous)


# -- the ceiling the softmax puts on attention ------------------------------------------------
def softmax_ns_per_score(threads: int = 1, rows: int = 256, cols: int = 512, reps: int = 200) -> dict:
    """Nanoseconds per score of the vector work attention adds to its matmuls, on a
    cache-resident (rows x cols) fp32 tile (a flash kernel's block): ``exp`` alone (the least any
    exact kernel does) and ``softmax`` (max, exp, sum and scale, as torch's fused op does them).
    Best of 7 rounds of ``reps`` calls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
        out = torch.empty_like(x)
        calls = {"exp": lambda: torch.exp(x, out=out), "softmax": lambda: torch.softmax(x, -1)}
        result = {}
        for name, call in calls.items():
            for _ in range(reps // 4):  # warm-up
                call()
            best = float("inf")
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(reps):
                    call()
                best = min(best, (time.perf_counter() - t0) / reps)
            result[name] = best / (rows * cols) * 1e9
        return result
    finally:
        torch.set_num_threads(previous)


def attention_ceiling(peak_gflops: float, head_dim: int, vector_ns: float) -> float:
    """The highest % of ``peak_gflops`` an attention kernel can reach when each score costs
    ``4 * head_dim`` useful flops at the matmul peak plus ``vector_ns`` of vector work that the
    same cores do (so it cannot overlap with the matmuls)."""
    matmul_ns = 4 * head_dim / peak_gflops  # GFLOP/s = flops per ns
    return 100 * matmul_ns / (matmul_ns + vector_ns)
