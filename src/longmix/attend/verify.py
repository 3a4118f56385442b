"""Checking the job's output: which rows, against what, and how close is close enough.

Rows (:func:`sample_rows`): the first and last row, both sides of every shard boundary and of
every zigzag chunk edge (where a distributed strategy hands work from one rank or step to the
next, and where an off-by-one would show), and ``check_rows`` seeded random rows.

Reference (:func:`reference_rows`): exact attention in float64, row by row, streaming over the
regenerated K/V chunks, so memory stays O(CHUNK) at any L.

Tolerance (:func:`tolerance`): a row-wise relative L2 error bound from the dtype and L. The output
and the probabilities are rounded to the run's dtype (relative error u each) and sums over up to
L keys accumulate in float32 (float64 for fp64), whose error grows like sqrt(L) for random terms:

    tol = 2 u(dtype) + 4 sqrt(L) u(accumulator)

bf16 at L = 2^20: 0.0080; fp32: 2.4e-4; fp64: ~4e-13. What a fault does to the longest row
(:func:`fault_sizes`): dropping one block of 256 keys out of L moves it by about sqrt(256 / L)
(0.016 at 2^20, for random keys); a 1% error in the output's scale moves it by 0.01. Both exceed
the tolerance for every dtype up to L = 2^20 (the test suite injects both and sees FAIL).
"""
from __future__ import annotations

import math

import torch

from longmix.dtypes import unit_roundoff

from .workload import CHUNK, AttendConfig, rows_of, seed_of

#: Keys in the block whose loss the check must detect (a typical kernel tile).
FAULT_BLOCK = 256


def tolerance(dtype: str, seq_len: int) -> float:
    """Largest row-wise relative error accepted for a correct run (see the module docstring)."""
    accumulator = "fp64" if dtype == "fp64" else "fp32"
    return 2 * unit_roundoff(dtype) + 4 * math.sqrt(seq_len) * unit_roundoff(accumulator)


def fault_sizes(seq_len: int) -> dict:
    """Expected relative error of the longest row under the two faults the check must catch."""
    return {"dropped_block": math.sqrt(min(FAULT_BLOCK, seq_len) / seq_len) if seq_len > FAULT_BLOCK
            else 1.0, "scale_1pct": 0.01}


def structural_rows(seq_len: int, world: int) -> set[int]:
    """First and last row, and both sides of every shard boundary of both layouts over ``world``
    ranks (the zigzag layout's boundaries are its 2P chunk edges)."""
    from longmix.parallel.layout import LAYOUTS, all_segments

    rows = {0, seq_len - 1}
    for layout in LAYOUTS:
        for member in all_segments(seq_len, world, layout):
            for start, length in member:
                if length:
                    rows.update({start, start + length - 1})
    return {t for t in rows if 0 <= t < seq_len}


def sample_rows(cfg: AttendConfig, world: int) -> list[int]:
    """The rows to verify (sorted, distinct); none when ``check_rows`` is 0."""
    if cfg.check_rows == 0:
        return []
    chosen = structural_rows(cfg.seq_len, world)
    target = min(cfg.seq_len, len(chosen) + cfg.check_rows)
    gen = torch.Generator().manual_seed(seed_of(cfg.seed, "rows", 0))
    while len(chosen) < target:
        chosen.add(int(torch.randint(cfg.seq_len, (1,), generator=gen)))
    return sorted(chosen)


def reference_rows(cfg: AttendConfig, rows: list[int], source=None) -> torch.Tensor:
    """Exact float64 attention output at global ``rows``: (batch, len(rows), heads, head_dim).

    Streams over K/V chunks with an online softmax, so memory is O(CHUNK), never O(L). Query head
    h reads K/V head h // (heads // kv_heads) (grouped-query attention, as in torch SDPA).
    ``source(name, start, stop)`` gives global rows of q, k or v in float64; by default they are
    regenerated on the CPU (:func:`rows_of`). The GPU job passes its own tensors, widened, so
    the sums run on the device the data lives on.
    """
    if source is None:
        def source(name, start, stop):
            return rows_of(cfg, name, start, stop, torch.float64)
    if not rows:
        return torch.empty(cfg.batch, 0, cfg.heads, cfg.head_dim, dtype=torch.float64)
    q = torch.cat([source("q", t, t + 1) for t in rows], dim=1)
    q = q * cfg.head_dim ** -0.5
    device = q.device
    t_rows = torch.tensor(rows, device=device)
    last_key = max(rows) if cfg.causal else cfg.seq_len - 1
    group = cfg.heads // cfg.kv_heads
    shape = (cfg.batch, cfg.heads, len(rows))
    running_max = torch.full(shape, -math.inf, dtype=torch.float64, device=device)
    denom = torch.zeros(shape, dtype=torch.float64, device=device)
    acc = torch.zeros(*shape, cfg.head_dim, dtype=torch.float64, device=device)
    for lo in range(0, last_key + 1, CHUNK):
        hi = min(lo + CHUNK, cfg.seq_len)
        k = source("k", lo, hi).repeat_interleave(group, dim=2)
        v = source("v", lo, hi).repeat_interleave(group, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k)
        if cfg.causal:
            keys = torch.arange(lo, hi, device=device)
            scores = scores.masked_fill(keys[None, :] > t_rows[:, None], -math.inf)
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        # rows with every key masked so far keep max -inf; shift by 0 there to avoid inf - inf
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        p = torch.exp(scores - shift[..., None])
        correction = torch.exp(running_max - shift)
        denom = denom * correction + p.sum(dim=-1)
        acc = acc * correction[..., None] + torch.einsum("bhij,bjhd->bhid", p, v)
        running_max = new_max
    return (acc / denom[..., None]).permute(0, 2, 1, 3)


def row_errors(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Row-wise relative L2 error, (len(rows),): the worst over batch and heads; inf if not finite."""
    diff = (got.double() - ref).permute(1, 0, 2, 3).flatten(2)      # (rows, batch*heads, d)
    scale = ref.permute(1, 0, 2, 3).flatten(2).norm(dim=-1).clamp_min(1e-300)
    rel = (diff.norm(dim=-1) / scale).amax(dim=-1)
    return torch.where(torch.isfinite(rel), rel, torch.full_like(rel, math.inf))


def verify_local_rows(cfg: AttendConfig, world: int, segs, out: torch.Tensor) -> dict:
    """Compare this rank's sampled output rows (``out`` holds its ``segs``) with the reference."""
    local_index, offset = {}, 0
    wanted = sample_rows(cfg, world)
    for start, length in segs:
        for t in wanted:
            if start <= t < start + length:
                local_index[t] = offset + t - start
        offset += length
    rows = sorted(local_index)
    if not rows:
        return {"rows_checked": [], "row_errors": [], "max_rel_err": 0.0}
    errors = row_errors(out[:, [local_index[t] for t in rows]], reference_rows(cfg, rows))
    return {"rows_checked": rows, "row_errors": errors.tolist(), "max_rel_err": float(errors.max())}


def verdict(cfg: AttendConfig, world: int, per_rank: list[dict]) -> dict:
    """The job's verdict from every rank's checks: PASS, FAIL or "not verified" (nothing checked)."""
    wanted = sample_rows(cfg, world)
    checked = sum(len(r["rows_checked"]) for r in per_rank)
    max_rel = max((r["max_rel_err"] for r in per_rank), default=0.0)
    tol = tolerance(cfg.dtype, cfg.seq_len)
    worst = max(((e, t) for r in per_rank for t, e in zip(r["rows_checked"], r["row_errors"])),
                default=(0.0, None))
    if not wanted:
        status = "not verified"
    elif checked == len(wanted) and max_rel <= tol:  # every sampled row lives on one rank
        status = "PASS"
    else:
        status = "FAIL"
    return {"verdict": status, "passed": status == "PASS", "rows_checked": checked,
            "rows_wanted": len(wanted), "max_rel_err": max_rel, "worst_row": worst[1],
            "tolerance": tol, "fault_sizes": fault_sizes(cfg.seq_len)}
