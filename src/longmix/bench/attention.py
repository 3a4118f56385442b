"""Exact attention against the baselines a user would pick: measurement (reporting is in
:mod:`longmix.bench.attention_report`).

Series (each a method on P processes), measured for L = 2^a .. 2^b, causal or not:

* ``sdpa`` (P=1, all cores): ``torch.nn.functional.scaled_dot_product_attention``, PyTorch's own
  fused kernel -- what a user gets without longmix, and the headline baseline;
* ``longmix`` (P=1, all cores): :func:`longmix.ops.attention_with_lse`, the same fused CPU kernel
  plus longmix's causal triangle split (diagonal leaves + full blocks merged on the lse);
* ``vanilla`` (P=1): softmax(QK^T/sqrt(d))V with the L x L scores materialized -- the paper's
  baseline;
* ``auto`` / ``shuffle`` / ``ring`` / ``hybrid`` (P>1): :func:`longmix.parallel.attention` with that
  strategy, cores / P threads per rank, so P ranks use the same cores as one process;
* ``peer`` (P>1): ``ring_attention_pytorch.ring_flash_attn(..., ring_reduce_col=True)``
  (lucidrains' ring-attention-pytorch, optional: ``pip install -e .[bench]``), contiguous shards,
  its default bucket of 1024 rows. Its output is first checked against a float64 reference at a
  small L (:func:`check_peer`); a peer that is wrong is not timed.

Every point runs in freshly spawned processes (:func:`longmix.parallel.launch.run_local`), warm (a
call at a small L first), and its time is the *median* of at least ``min_reps`` calls (each the
slowest rank's, between barriers). Each gets its own peak-memory figure (VmHWM, the whole
process: the torch runtime included, reported beside the figure at start); a crash or a timeout
costs one point only. A point is skipped, and reported as such, when its predicted memory
exceeds ``mem_budget_gb`` or its predicted time exceeds ``time_budget_s`` (predictions
extrapolate the series' previous point: time ~ L^2, memory ~ L for the O(L) methods and ~ L^2 for
vanilla) or the run's total budget would be exceeded. Results are appended to a JSON-lines file
as each point finishes; a rerun skips the points already there (ok, error or infeasible; a
timed-out point is tried again, since a busy machine may have caused it) unless ``force``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from longmix.checks import check_int
from longmix.vocabulary import STRATEGIES
from longmix.dtypes import DTYPES
from longmix.fileio import append_record, read_records
from longmix.machine import current_rss_bytes, peak_rss_bytes
from longmix.ops.attention import attention_flops
from longmix.provenance import provenance, utc_now

SINGLE = ("sdpa", "longmix", "vanilla")  # one-process methods
METHODS = (*SINGLE, *STRATEGIES, "peer")
PAPER_SPEEDUP = "~40x over vanilla MHA on 4 GPUs"


@dataclass(frozen=True)
class Shape:
    """The attention problem shared by every point of a run (all but L and P)."""

    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 32
    dtype: str = "bf16"
    causal: bool = True
    batch: int = 1

    def __post_init__(self):
        # checked here, not first in a spawned rank where it would cost a launch and read worse
        for name in ("heads", "kv_heads", "head_dim", "batch"):
            check_int(name, getattr(self, name))
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def tag(self) -> str:
        mask = "causal" if self.causal else "full"
        return f"{self.dtype}_b{self.batch}h{self.heads}kv{self.kv_heads}d{self.head_dim}_{mask}"

    @property
    def layout(self) -> str:
        # zigzag balances the causal ring; without a mask the layouts cost the same
        return "zigzag" if self.causal else "contiguous"


@dataclass(frozen=True)
class Series:
    method: str
    procs: int

    @property
    def label(self) -> str:
        if self.method == "vanilla":
            return "vanilla MHA"
        if self.method == "longmix":
            return "longmix 1 proc"
        if self.method == "sdpa":
            return "torch sdpa 1 proc"
        if self.method == "peer":
            return f"ring-attention-pytorch P={self.procs}"
        return f"longmix {self.method} P={self.procs}"


def default_series(procs: tuple[int, ...] = (2, 4), methods: tuple[str, ...] = METHODS) -> list[Series]:
    """Series in priority order: when the total budget runs out, the later ones lose points."""
    out = [Series(m, 1) for m in ("sdpa", "longmix", "vanilla") if m in methods]
    for p in procs:
        out += [Series(m, p) for m in (*STRATEGIES, "peer") if m in methods]
    return out


@dataclass
class BenchConfig:
    shape: Shape = field(default_factory=Shape)
    min_log2_len: int = 10
    max_log2_len: int = 20
    procs: tuple[int, ...] = (2, 4)
    methods: tuple[str, ...] = METHODS
    mem_budget_gb: float = 8.0
    time_budget_s: float = 400.0
    total_budget_s: float = 25 * 60.0
    min_time_s: float = 1.0  # repeat a point until this much time is measured (at most max_reps)
    min_reps: int = 3        # the time is the median of at least this many warm calls
    max_reps: int = 5
    out_dir: Path = Path("benchmarks/results")
    force: bool = False
    command: str = ""

    def __post_init__(self):
        if self.min_log2_len < 0 or self.max_log2_len < self.min_log2_len:
            raise ValueError(f"need 0 <= min_log2_len <= max_log2_len, got "
                             f"{self.min_log2_len}, {self.max_log2_len}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods must be among {METHODS}, got {sorted(unknown)}")
        if any(p < 2 for p in self.procs):
            raise ValueError(f"procs are the distributed world sizes (>= 2), got {self.procs}")
        if not 1 <= self.min_reps <= self.max_reps:
            raise ValueError(f"need 1 <= min_reps <= max_reps, got {self.min_reps}, {self.max_reps}")
        self.out_dir = Path(self.out_dir)

    @property
    def lengths(self) -> list[int]:
        return [2**a for a in range(self.min_log2_len, self.max_log2_len + 1)]

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"attention_scaling_{self.shape.tag}.{suffix}"


def point_key(shape: Shape, series: Series, seq_len: int) -> str:
    return f"{shape.tag}|{series.method}|P{series.procs}|L{seq_len}"


# ---------------------------------------------------------------------------------------------
# What runs on each rank of a point.

def vanilla_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V with the (batch, heads, L, L) scores materialized, plain torch.

    q (batch, L, heads, d); k, v (batch, L, kv_heads, d); returns (batch, L, heads, d).
    """
    group = q.shape[2] // k.shape[2]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu_(1)
        scores.masked_fill_(mask, -math.inf)
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)


def _expand(q, k, v):
    group = q.shape[2] // k.shape[2]
    return q, k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)


def _method_fn(method: str, shape: Shape, group):
    """A callable (q, k, v) -> out for one method on this rank."""
    if method == "vanilla":
        return lambda q, k, v: vanilla_attention(q, k, v, shape.causal)
    if method == "sdpa":
        sdpa = torch.nn.functional.scaled_dot_product_attention
        # (B, L, H, d) -> (B, H, L, d) views, as the function wants; GQA expanded like the others
        return lambda q, k, v: sdpa(*(x.transpose(1, 2) for x in _expand(q, k, v)),
                                    is_causal=shape.causal).transpose(1, 2)
    if method == "longmix":
        from longmix.ops import attention_with_lse

        return lambda q, k, v: attention_with_lse(q, k, v, causal=shape.causal)[0]
    if method == "peer":
        from ring_attention_pytorch import ring_flash_attn

        return lambda q, k, v: ring_flash_attn(q, k, v, causal=shape.causal, ring_reduce_col=True,
                                               bucket_size=min(1024, q.shape[1]))
    from longmix.parallel import attention

    return lambda q, k, v: attention(q, k, v, causal=shape.causal, group=group, strategy=method,
                                     layout=shape.layout)


def _local_inputs(shape: Shape, method: str, seq_len: int, world: int, rank: int, seed: int):
    from longmix.parallel.layout import local_length

    layout = shape.layout if method in STRATEGIES else "contiguous"
    n = local_length(seq_len, world, rank, layout)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    dt = DTYPES[shape.dtype]
    make = lambda h: torch.randn(shape.batch, n, h, shape.head_dim, generator=gen).to(dt)  # noqa: E731
    return make(shape.heads), make(shape.kv_heads), make(shape.kv_heads)


def measure_rank(group, shape: Shape, method: str, seq_len: int, min_time_s: float,
                 max_reps: int, min_reps: int = 3) -> dict:
    """Run one point on this rank: warm up at a small length, then time calls at ``seq_len``:
    at least ``min_reps``, more (up to ``max_reps``) until ``min_time_s`` is measured.

    Each timed call is fenced by barriers, so a time is the slowest rank's.
    """
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    fn = _method_fn(method, shape, group)
    baseline = current_rss_bytes()
    # warm-up: loads kernels and opens the gloo connections; equal shards for the peer
    warm_len = min(seq_len, 256 * world)
    with torch.no_grad():
        fn(*_local_inputs(shape, method, warm_len, world, rank, seed=1))
    q, k, v = _local_inputs(shape, method, seq_len, world, rank, seed=0)
    times = []
    with torch.no_grad():
        while len(times) < min_reps or (sum(times) < min_time_s and len(times) < max_reps):
            dist.barrier(group)
            t0 = time.perf_counter()
            out = fn(q, k, v)
            dist.barrier(group)
            times.append(time.perf_counter() - t0)
            del out
    return {"times": times, "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline,
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# Predictions and the run loop.

PEER_CHECK_LEN = 512
PEER_TOLERANCE = 1e-4  # row-wise relative error allowed at the check's fp32 (longmix's is ~1e-6)


def peer_check_rank(group, shape: Shape, seq_len: int) -> float:
    """On every rank: the peer on contiguous fp32 shards of one random problem; rank 0 gets the
    worst row-wise relative error of the gathered output against float64 vanilla attention."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape.batch, seq_len, h, shape.head_dim, generator=gen)
               for h in (shape.heads, shape.kv_heads, shape.kv_heads))
    n = seq_len // world
    mine = slice(rank * n, (rank + 1) * n)
    fp32 = Shape(**{**asdict(shape), "dtype": "fp32"})
    with torch.no_grad():
        out = _method_fn("peer", fp32, group)(q[:, mine], k[:, mine], v[:, mine]).contiguous()
    parts = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(parts, out, group=group)
    got = torch.cat(parts, dim=1).double()
    ref = vanilla_attention(q.double(), k.double(), v.double(), shape.causal)
    err = (got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-300)
    return float(err.max()) if torch.isfinite(err).all() else math.inf


def check_peer(shape: Shape, procs: int, timeout_s: float = 120.0) -> dict:
    """Is the peer's output right (vs float64, fp32, L = :data:`PEER_CHECK_LEN`) on ``procs``
    ranks? {"status": "ok" | "wrong" | "error" | "missing", ...}; only an "ok" peer is timed."""
    from longmix.parallel.launch import RankFailure, run_local

    try:
        import ring_attention_pytorch  # noqa: F401
    except ImportError:
        return {"status": "missing", "reason": "ring-attention-pytorch is not installed "
                                               "(pip install -e .[bench])"}
    length = PEER_CHECK_LEN - PEER_CHECK_LEN % procs
    try:
        err = run_local(peer_check_rank, procs, args=(shape, length), timeout=timeout_s,
                        collective_timeout=timeout_s)[0]
    except RankFailure as exc:
        return {"status": "error", "reason": f"the check at L={length} failed: {exc.summary()}"}
    status = "ok" if err <= PEER_TOLERANCE else "wrong"
    return {"status": status, "max_rel_err": err, "seq_len": length,
            "reason": f"max rel err {err:.3g} vs float64 at L={length} (fp32; allowed "
                      f"{PEER_TOLERANCE:g})"}


def _feasibility(shape: Shape, series: Series, seq_len: int) -> tuple[bool, str, str | None]:
    """(feasible, note, strategy auto resolves to) for a longmix strategy; trivially ok otherwise."""
    if series.method not in STRATEGIES:
        return True, "", None
    from longmix.parallel import plan

    chosen = plan(seq_len=seq_len, heads=shape.heads, kv_heads=shape.kv_heads,
                  head_dim=shape.head_dim, world_size=series.procs, dtype=DTYPES[shape.dtype],
                  causal=shape.causal, layout=shape.layout, batch=shape.batch)
    if series.method == "auto":
        used = chosen.strategy + (f"(u={chosen.hybrid_size})" if chosen.hybrid_size else "")
        return True, "", used
    option = chosen.option(series.method)
    return option.feasible, option.note.removeprefix("infeasible: "), None


def _predict(shape: Shape, series: Series, seq_len: int, previous: dict | None) -> tuple[float | None, float]:
    """(predicted seconds or None when unknown, predicted peak bytes per process)."""
    item = torch.empty((), dtype=DTYPES[shape.dtype]).element_size()
    mem = 0.0
    if series.method == "vanilla":  # scores + softmax output per head, plus the bool mask
        mem = shape.batch * seq_len**2 * (2 * shape.heads * item + (1 if shape.causal else 0))
    if previous is None:
        return None, mem
    ratio = seq_len / previous["seq_len"]
    t = previous["time_s"] * ratio**2
    own = previous["peak_rss_bytes"] - previous["baseline_rss_bytes"]
    scaled = previous["baseline_rss_bytes"] + own * (ratio**2 if series.method == "vanilla" else ratio)
    return t, max(mem, scaled)


def load_results(path: Path) -> dict[str, dict]:
    """Recorded points by key (later lines win).

    A line that is not valid JSON (a run killed in the middle of writing it) is ignored, so that
    point is simply measured again instead of the whole results file becoming unreadable.
    """
    results = {}
    for rec in read_records(path):
        if "key" in rec:
            results[rec["key"]] = rec
    return results


def run_point(cfg: BenchConfig, series: Series, seq_len: int, timeout_s: float) -> dict:
    """Measure one point in fresh processes; returns the record (status ok / error / timeout)."""
    from longmix.parallel.launch import RankFailure, run_local

    shape = cfg.shape
    rec = {"seq_len": seq_len, "method": series.method, "procs": series.procs,
           "label": series.label, "shape": asdict(shape)}
    start = time.perf_counter()
    try:
        per_rank = run_local(measure_rank, series.procs,
                             args=(shape, series.method, seq_len, cfg.min_time_s, cfg.max_reps,
                                   cfg.min_reps),
                             timeout=timeout_s, collective_timeout=timeout_s)
    except RankFailure as exc:
        error = exc.summary()
        status = "timeout" if error.startswith("timed out") else "error"
        rec.update(status=status, error=error, wall_s=time.perf_counter() - start)
        return rec
    times = per_rank[0]["times"]
    median = statistics.median(times)
    rec.update(status="ok", time_s=median, reps=len(times), times=times,
               threads_per_rank=per_rank[0]["threads"],
               gflops=attention_flops(shape.batch, shape.heads, seq_len, shape.head_dim,
                                      shape.causal) / median / 1e9,
               peak_rss_bytes=max(r["peak_rss_bytes"] for r in per_rank),
               baseline_rss_bytes=max(r["baseline_rss_bytes"] for r in per_rank),
               wall_s=time.perf_counter() - start)
    return rec


def run_order(series_list: list[Series], lengths: list[int]) -> list[tuple[Series, int]]:
    """The headline series -- sdpa and longmix on 1 process, ``auto`` on the smallest P -- over
    every L first, so their largest points are measured even when the run's total budget cuts
    the rest; then the others, L by L (each series' lengths stay ascending, which the predictions
    need)."""
    headline = [s for s in series_list if s.method in ("sdpa", "longmix")]
    dist_auto = [s for s in series_list if s.method == "auto"]
    headline += dist_auto[:1]
    rest = [s for s in series_list if s not in headline]
    return ([(s, L) for s in headline for L in lengths]
            + [(s, L) for L in lengths for s in rest])


def run_benchmark(cfg: BenchConfig, log=print) -> list[dict]:
    """Run (or resume) the grid; append each point to the results file; return this run's table."""
    path = cfg.path("jsonl")
    done = {} if cfg.force else load_results(path)
    series_list = default_series(cfg.procs, cfg.methods)
    last_ok: dict[Series, dict] = {}
    stopped: dict[Series, dict] = {}  # series that will not run larger L: status and reason
    for series in series_list:
        if series.method == "peer":
            check = check_peer(cfg.shape, series.procs)
            log(f"  {series.label:<32} output check: {check['status']}: {check['reason']}")
            if check["status"] != "ok":
                stopped[series] = {"status": "invalid" if check["status"] == "missing"
                                   else "error", "reason": f"peer check: {check['reason']}",
                                   "error": f"peer check: {check['reason']}"}
    table = []
    run_start = time.perf_counter()
    for series, seq_len in run_order(series_list, cfg.lengths):
        key = point_key(cfg.shape, series, seq_len)
        base = {"key": key, "seq_len": seq_len, "method": series.method, "procs": series.procs,
                "label": series.label, "shape": asdict(cfg.shape)}
        if key in done and done[key]["status"] in ("ok", "error", "invalid"):
            rec = done[key]
            log(f"  {series.label:<32} L={seq_len:<8} recorded earlier: {point_text(rec)}")
        elif series in stopped:
            rec = {**base, **stopped[series]}
        else:
            rec = _plan_and_run(cfg, series, seq_len, base, last_ok.get(series), run_start, log)
            if rec["status"] in ("ok", "error", "timeout", "invalid"):
                append_record(path, {**rec, "date": utc_now(), **provenance()})
        if rec["status"] == "ok":
            last_ok[series] = rec
        elif series not in stopped:
            stopped[series] = _later(rec)
        table.append(rec)
    return table


def point_text(rec: dict | None) -> str:
    """A point in a few words: its time, or why it has none (budget, error, n/a)."""
    if rec is None:
        return "-"
    status = rec["status"]
    if status == "ok":
        t = rec["time_s"]
        return f"{t:.3g} s" if t < 100 else f"{t:.0f} s"
    if status == "skipped":
        reason = rec.get("reason", "")
        if "smaller L" in reason and "budget" not in reason:
            return "-"  # the series failed earlier
        if "GiB" in reason:
            return "mem budget"
        return "run budget" if "total budget" in reason else "time budget"
    return {"invalid": "n/a", "error": "error", "timeout": "timeout"}.get(status, status)


def _later(rec: dict) -> dict:
    """What the larger L of a series become once a point did not succeed."""
    if rec["status"] == "invalid":
        return {"status": "invalid", "reason": rec.get("reason", "infeasible")}
    if rec["status"] in ("error", "timeout"):
        return {"status": "skipped", "reason": f"{rec['status']} at a smaller L"}
    return {"status": "skipped", "reason": rec.get("reason", "over budget at a smaller L")}


def _plan_and_run(cfg, series, seq_len, base, previous, run_start, log) -> dict:
    feasible, note, used = _feasibility(cfg.shape, series, seq_len)
    if not feasible:
        log(f"  {series.label:<32} L={seq_len:<8} infeasible: {note}")
        return {**base, "status": "invalid", "reason": note}
    t_pred, mem_pred = _predict(cfg.shape, series, seq_len, previous)
    if mem_pred > cfg.mem_budget_gb * 2**30:
        reason = f"predicted {mem_pred / 2**30:.1f} GiB > {cfg.mem_budget_gb:g} GiB budget"
    elif t_pred is not None and t_pred > cfg.time_budget_s:
        reason = f"predicted {t_pred:.0f} s > {cfg.time_budget_s:g} s budget"
    elif t_pred is not None and time.perf_counter() - run_start + t_pred > cfg.total_budget_s:
        reason = (f"predicted {t_pred:.0f} s would pass the run's total budget of "
                  f"{cfg.total_budget_s / 60:g} min")
    else:
        reason = None
    if reason:
        log(f"  {series.label:<32} L={seq_len:<8} skipped: {reason}")
        return {**base, "status": "skipped", "reason": reason}
    # generous kill timeout: start-up, warm-up and a prediction that was off by 2x
    timeout = 60 + 2 * max(t_pred or 0, cfg.time_budget_s)
    rec = {**base, **run_point(cfg, series, seq_len, timeout)}
    if used:
        rec["strategy_used"] = used
    log(f"  {series.label:<32} L={seq_len:<8} {point_text(rec)}"
        + (f"  [{rec['gflops']:.1f} GFLOP/s, peak {rec['peak_rss_bytes'] / 2**30:.2f} GiB]"
           if rec["status"] == "ok" else ""))
    return rec


