"""Choosing a strategy: a small cost model of compute, bandwidth and latency per rank.

For P ranks, sequence length L, H query heads, Hk K/V heads, head_dim d, batch B and element size
e bytes, one forward pass costs (per rank):

* compute: 4*B*L*K*H*d / P flops, K the keys each query sees (L; about L/2 when causal; the window
  when windowed). All strategies split this evenly, except a causal ring over the
  ``"contiguous"`` layout: the last rank attends to everything before it and sets the pace,
  (2P-1)/P times the average (``"zigzag"`` balances it).
* shuffle: two all-to-alls, not overlapped with compute. Sent per rank: q and out
  (P-1)/P * B*L*H*d/P each, k and v (P-1)/P * B*L*Hk*d/P each (or (P-1) * B*L*d/P each when
  Hk < P: one K/V head to every other rank): ~4*B*L*H*d/P elements for multi-head attention.
  Latency: 2(P-1) messages.
* ring: P-1 steps; each sends this rank's current K/V block, 2*B*(L/P)*Hk*d elements, while it
  computes on the previous one, so a step costs max(compute, transfer + latency).
  In all ~2*B*L*Hk*d elements per rank, independent of P. With a window only the halo travels:
  the window-1 rows of K/V on each side of each piece (left only when causal), 2*B*Hk*d
  elements a row, in one all-to-all before the compute: P-1 messages, a volume independent of L.
* hybrid(u): shuffle inside groups of u ranks (heads/u heads each), ring across the P/u groups.

Rates default to rough constants per device (:data:`DEFAULT_RATES`); :func:`measure_rates` times a
all-to-all and a matmul on the actual group. The model ranks strategies; it does not promise
wall-clock time (kernel efficiency, memory traffic and the backward pass are not modelled).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longmix.checks import check_int

from ..halo import halo_rows_sent
from ..layout import LAYOUTS, all_segments
from .validate import head_split_error


@dataclass(frozen=True)
class Rates:
    """Machine rates the cost model uses: per-rank link bandwidth, per-rank flops, message latency."""

    bandwidth_bytes_per_s: float
    flops_per_s: float
    latency_s: float


#: Rough defaults. CPU: gloo over loopback TCP (~1 GB/s); ~100 GFLOP/s per rank, the CPU flash
#: op's rate seen with one thread per rank on the 2-core AVX-512/AMX reference box (README).
#: CUDA: NCCL over NVLink/PCIe (~50 GB/s), ~100 TFLOP/s half-precision.
DEFAULT_RATES = {
    "cpu": Rates(bandwidth_bytes_per_s=1e9, flops_per_s=1e11, latency_s=1e-4),
    "cuda": Rates(bandwidth_bytes_per_s=5e10, flops_per_s=1e14, latency_s=2e-5),
}


@dataclass(frozen=True)
class StrategyCost:
    """The model's prediction for one strategy (``feasible=False``: ``note`` says why not)."""

    strategy: str
    hybrid_size: int | None
    feasible: bool
    predicted_time_s: float
    compute_s: float
    comm_s: float
    bytes_per_rank: int  # bytes sent per rank in the forward pass
    note: str
    #: a hybrid grid with u = 1 (the ring) or u = P (the shuffle): runnable when hybrid is asked
    #: for by name on a world size with no proper divisor, never chosen by auto over the original
    degenerate: bool = False


@dataclass(frozen=True)
class Plan:
    """The chosen strategy with the reason, its predicted forward time and bytes sent per rank."""

    strategy: str
    hybrid_size: int | None
    reason: str
    predicted_time_s: float
    bytes_per_rank: int
    options: tuple[StrategyCost, ...]  # every strategy considered, feasible or not

    def option(self, strategy: str) -> StrategyCost:
        return next(o for o in self.options if o.strategy == strategy)

    def describe(self) -> str:
        """A small table of all options, then the choice and reason."""
        lines = [f"{'strategy':<12}{'time (s)':>12}{'compute':>12}{'comm':>12}{'MB/rank':>10}  note"]
        for o in self.options:
            name = o.strategy + (f"(u={o.hybrid_size})" if o.hybrid_size else "")
            if o.feasible:
                lines.append(f"{name:<12}{o.predicted_time_s:>12.3g}{o.compute_s:>12.3g}"
                             f"{o.comm_s:>12.3g}{o.bytes_per_rank / 1e6:>10.3g}  {o.note}")
            else:
                lines.append(f"{name:<12}{'-':>12}{'-':>12}{'-':>12}{'-':>10}  {o.note}")
        lines.append(f"chosen: {self.strategy}: {self.reason}")
        return "\n".join(lines)


def _keys_per_query(seq_len: int, causal: bool, window: int | None) -> float:
    if window is not None:
        return min(window if causal else 2 * window - 1, seq_len)
    return (seq_len + 1) / 2 if causal else seq_len


def _shuffle_bytes(rows: float, heads: int, kv_heads: int, head_dim: int, parts: int,
                   batch: int, elem: int) -> float:
    """Bytes one rank sends in the two all-to-alls among ``parts`` ranks, holding ``rows`` rows."""
    if parts == 1:
        return 0.0
    off = (parts - 1) / parts
    qo = 2 * rows * heads * head_dim * off
    kv = 2 * rows * head_dim * (kv_heads * off if kv_heads % parts == 0 else parts - 1)
    return (qo + kv) * batch * elem


def _ring_time(flops_rank: float, block_bytes: float, members: int, rates: Rates,
               imbalance: float) -> tuple[float, float, float]:
    """(time, compute, comm) of a ring of ``members`` with overlapped transfers."""
    step_compute = flops_rank * imbalance / members / rates.flops_per_s
    step_comm = block_bytes / rates.bandwidth_bytes_per_s + rates.latency_s
    if members == 1:
        return step_compute, step_compute, 0.0
    total = step_compute + (members - 1) * max(step_compute, step_comm)
    return total, step_compute * members, step_comm * (members - 1)


def plan(*, seq_len: int, heads: int, kv_heads: int | None = None, head_dim: int, world_size: int,
         dtype: torch.dtype = torch.float32, causal: bool = False,
         bandwidth_bytes_per_s: float | None = None, flops_per_s: float | None = None,
         latency_s: float | None = None, layout: str = "contiguous", batch: int = 1,
         window: int | None = None, device: str = "cpu") -> Plan:
    """Predict the forward time of each strategy and pick the fastest feasible one.

    Deterministic in its arguments, so ranks that pass the same arguments agree on the choice
    (with measured rates, use :func:`measure_rates`, which returns the same rates on all ranks).
    """
    kv_heads = heads if kv_heads is None else kv_heads
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, value in dict(seq_len=seq_len, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                            world_size=world_size, batch=batch).items():
        check_int(name, value)
    if heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    # Checked rather than `x or default`: a 0 must not silently mean the default, nor may a
    # negative rate give negative predicted times.
    for name, value, low in (("bandwidth_bytes_per_s", bandwidth_bytes_per_s, "> 0"),
                             ("flops_per_s", flops_per_s, "> 0"), ("latency_s", latency_s, ">= 0")):
        if value is not None and not (value > 0 or (low == ">= 0" and value == 0)):
            raise ValueError(f"{name} must be None (the device default) or {low}, got {value!r}")
    base = DEFAULT_RATES.get(device, DEFAULT_RATES["cpu"])
    rates = Rates(base.bandwidth_bytes_per_s if bandwidth_bytes_per_s is None else bandwidth_bytes_per_s,
                  base.flops_per_s if flops_per_s is None else flops_per_s,
                  base.latency_s if latency_s is None else latency_s)
    p, elem = world_size, torch.empty((), dtype=dtype).element_size()
    flops_rank = 4 * batch * seq_len * _keys_per_query(seq_len, causal, window) * heads * head_dim / p
    compute_s = flops_rank / rates.flops_per_s

    def imbalance(members: int) -> float:
        return (2 * members - 1) / members if causal and layout == "contiguous" else 1.0

    options = []
    if p == 1:
        options.append(StrategyCost("shuffle", None, True, compute_s, compute_s, 0.0, 0,
                                    "one process: attention runs locally"))
        return Plan("shuffle", None, "a single process runs attention locally; nothing to "
                    "communicate", compute_s, 0, tuple(options))

    why = head_split_error(heads, kv_heads, p)
    sent = _shuffle_bytes(seq_len / p, heads, kv_heads, head_dim, p, batch, elem)
    comm = sent / rates.bandwidth_bytes_per_s + 2 * (p - 1) * rates.latency_s
    note = "" if why is None else f"infeasible: {why}"
    if why is None and kv_heads < p:
        note = f"each K/V head is sent to {p // kv_heads} ranks (kv_heads={kv_heads} < P={p})"
    options.append(StrategyCost("shuffle", None, why is None, compute_s + comm, compute_s, comm,
                                int(sent), note))

    if window is not None:  # only the halo travels; the slowest sender sets the pace
        reach = window - 1
        segs = all_segments(seq_len, p, layout)
        rows = max(halo_rows_sent(segs, r, reach, 0 if causal else reach) for r in range(p))
        sent = rows * 2 * batch * kv_heads * head_dim * elem
        comm = sent / rates.bandwidth_bytes_per_s + (p - 1) * rates.latency_s
        options.append(StrategyCost("ring", None, True, compute_s + comm, compute_s, comm,
                                    int(sent), f"a halo of window-1 = {reach} rows per side"))
    else:
        block = 2 * batch * seq_len / p * kv_heads * head_dim * elem
        t, c, m = _ring_time(flops_rank, block, p, rates, imbalance(p))
        note = "causal contiguous: last rank does ~2x the mean" if imbalance(p) > 1 else ""
        options.append(StrategyCost("ring", None, True, t, c, m, int(block * (p - 1)), note))

    def hybrid_cost(u: int, degenerate: bool = False) -> StrategyCost:
        why_u = head_split_error(heads, kv_heads, u)
        if window is not None or why_u:
            return StrategyCost("hybrid", u, False, float("inf"), 0, 0, 0,
                                f"infeasible: {why_u or 'window is supported by shuffle and ring only'}",
                                degenerate)
        groups = p // u
        a2a = _shuffle_bytes(seq_len / p, heads, kv_heads, head_dim, u, batch, elem)
        a2a_s = a2a / rates.bandwidth_bytes_per_s + 2 * (u - 1) * rates.latency_s
        kv_local = kv_heads // u if kv_heads % u == 0 else 1
        block = 2 * batch * seq_len / groups * kv_local * head_dim * elem
        t, c, m = _ring_time(flops_rank, block, groups, rates, imbalance(groups))
        note = f"shuffle in groups of {u}, ring over {groups} groups"
        if degenerate:
            note = (f"world size {p} has no divisor 1 < u < {p}: the degenerate grid u={u} "
                    f"({'the shuffle' if u == p else 'the ring'})")
        return StrategyCost("hybrid", u, True, t + a2a_s, c, m + a2a_s,
                            int(a2a + block * (groups - 1)), note, degenerate)

    hybrid = [hybrid_cost(u) for u in range(2, p) if p % u == 0]
    if not hybrid:
        # P = 2 or 3 (or prime): the grid can only be 1 x P (u = P, the shuffle, where the heads
        # split) or P x 1 (u = 1, the ring)
        hybrid = [hybrid_cost(p, True)]
        if not hybrid[0].feasible and window is None:
            hybrid = [hybrid_cost(1, True)]
    feasible_h = [o for o in hybrid if o.feasible]
    if feasible_h:
        options.append(min(feasible_h, key=lambda o: o.predicted_time_s))
    else:
        options.append(hybrid[0])

    feasible = [o for o in options if o.feasible and not o.degenerate]  # ring always is
    best = min(feasible, key=lambda o: o.predicted_time_s)
    others = [f"{o.strategy}{f'(u={o.hybrid_size})' if o.hybrid_size else ''} "
              f"{o.predicted_time_s:.3g}s" for o in feasible if o is not best]
    reason = (f"{best.strategy} has the lowest predicted forward time, {best.predicted_time_s:.3g}s "
              f"(compute {best.compute_s:.3g}s, communication {best.comm_s:.3g}s, "
              f"{best.bytes_per_rank / 1e6:.3g} MB sent per rank)")
    if others:
        reason += "; vs " + ", ".join(others)
    ruled_out = [f"{o.strategy}: {o.note.removeprefix('infeasible: ')}" for o in options if not o.feasible]
    if ruled_out:
        reason += "; ruled out " + "; ".join(ruled_out)
    return Plan(best.strategy, best.hybrid_size, reason, best.predicted_time_s,
                best.bytes_per_rank, tuple(options))


def measure_rates(group=None, *, bytes_per_peer: int = 4 << 20, matmul_size: int = 512,
                  repeats: int = 5) -> Rates:
    """Time an all-to-all of ``bytes_per_peer`` to every peer, a tiny one, and a matmul on
    ``group``; every rank gets the same (slowest) rates.

    Collective: all ranks of the group must call it. Each figure is the median of ``repeats``
    timed calls (one machine's hiccup does not set it), and the slowest rank's is used (all-reduce
    MAX), so a plan built from them is identical on every rank. The latency is the tiny
    exchange's time per message; the bandwidth, the bytes each rank sends over the large
    exchange's time beyond the tiny one's. Where that difference is lost in noise (the tiny
    exchange takes more than half as long as the large one), the large exchange's whole time is
    charged to the transfer: the bandwidth is then a lower bound, never a division by ~0. On one
    rank there is no link; ``bandwidth_bytes_per_s`` is then ``inf`` and ``latency_s`` 0.
    """
    group = dist.group.WORLD if group is None else group
    p = dist.get_world_size(group)
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend(group) == "nccl" else torch.device("cpu"))

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    a = torch.randn(matmul_size, matmul_size, device=device)
    t_mm = timed(lambda: a @ a)
    if p == 1:
        return Rates(bandwidth_bytes_per_s=math.inf, flops_per_s=2 * matmul_size ** 3 / t_mm,
                     latency_s=0.0)
    n = bytes_per_peer // 4
    big, big_out = torch.zeros(n * p, device=device), torch.empty(n * p, device=device)
    tiny, tiny_out = torch.zeros(p, device=device), torch.empty(p, device=device)
    t_big = timed(lambda: dist.all_to_all_single(big_out, big, group=group))
    t_tiny = timed(lambda: dist.all_to_all_single(tiny_out, tiny, group=group))
    times = torch.tensor([t_mm, t_big, t_tiny], dtype=torch.float64, device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
    t_mm, t_big, t_tiny = times.tolist()
    messages = p - 1
    transfer = t_big - t_tiny if t_big > 2 * t_tiny else t_big
    return Rates(bandwidth_bytes_per_s=n * 4 * messages / transfer,
                 flops_per_s=2 * matmul_size ** 3 / t_mm, latency_s=t_tiny / messages)
