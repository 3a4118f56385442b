"""The paper's attention scaling benchmark: vanilla MHA vs longmix (1 process, P ranks) vs a peer.

Series (each a method on P processes), measured for L = 2^a .. 2^b:

* ``vanilla`` (P=1): softmax(QK^T/sqrt(d))V in plain torch, the L x L scores materialized -- the
  paper's baseline;
* ``longmix`` (P=1): :func:`longmix.ops.attention_with_lse`, the single-process exact op;
* ``auto`` / ``shuffle`` / ``ring`` / ``hybrid`` (P>1): :func:`longmix.dist.attention` with that
  strategy (infeasible head splits are recorded as such, never run);
* ``peer`` (P>1): ``ring_attention_pytorch.ring_flash_attn(..., ring_reduce_col=True)``
  (lucidrains' ring-attention-pytorch, the CPU-capable ring attention a user would otherwise
  pick), contiguous shards of equal length, its default bucket of 1024 rows.

Every point runs in freshly spawned processes (:func:`longmix.dist.launch.run_local`), so each
gets its own peak-memory figure (VmHWM, the whole process: the torch runtime included, reported
beside the figure at start) and a crash or a timeout costs one point only. A point is skipped,
and reported as such, when its predicted memory exceeds ``mem_budget_gb`` or its predicted time
exceeds ``time_budget_s`` (predictions extrapolate the series' previous point: time ~ L^2,
memory ~ L for the O(L) methods and ~ L^2 for vanilla) or when the run's total time budget
would be exceeded. Results are appended to a JSON-lines file as each point finishes; a rerun
skips the points already there (ok, error or infeasible; a timed-out point is tried again, since
a busy machine may have caused it) unless ``force``.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from longmix.bench.attend import DTYPES  # one name -> dtype table for the job and the benchmark
from longmix.bench.machine import current_rss_bytes, describe, markdown as machine_line
from longmix.bench.machine import peak_rss_bytes
from longmix.fileio import atomic_write_text

STRATEGIES = ("auto", "shuffle", "ring", "hybrid")
METHODS = ("vanilla", "longmix", *STRATEGIES, "peer")
PAPER_SPEEDUP = "~40x over vanilla MHA on 4 GPUs"


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool) -> float:
    """2 flops per multiply-add of QK^T and PV: 4·B·H·L²·d; a causal mask halves it."""
    full = 4.0 * batch * heads * seq_len**2 * head_dim
    return full / 2 if causal else full


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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
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
        if self.method == "peer":
            return f"ring-attention-pytorch P={self.procs}"
        return f"longmix {self.method} P={self.procs}"


def default_series(procs: tuple[int, ...] = (2, 4), methods: tuple[str, ...] = METHODS) -> list[Series]:
    """Series in priority order: when the total budget runs out, the later ones lose points."""
    out = [Series(m, 1) for m in ("longmix", "vanilla") if m in methods]
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


def _method_fn(method: str, shape: Shape, group):
    """A callable (q, k, v) -> out for one method on this rank."""
    if method == "vanilla":
        return lambda q, k, v: vanilla_attention(q, k, v, shape.causal)
    if method == "longmix":
        from longmix.ops import attention_with_lse

        return lambda q, k, v: attention_with_lse(q, k, v, causal=shape.causal)[0]
    if method == "peer":
        from ring_attention_pytorch import ring_flash_attn

        return lambda q, k, v: ring_flash_attn(q, k, v, causal=shape.causal, ring_reduce_col=True,
                                               bucket_size=min(1024, q.shape[1]))
    from longmix.dist import attention

    return lambda q, k, v: attention(q, k, v, causal=shape.causal, group=group, strategy=method,
                                     layout=shape.layout)


def _local_inputs(shape: Shape, method: str, seq_len: int, world: int, rank: int, seed: int):
    from longmix.dist.layout import local_length

    layout = shape.layout if method in STRATEGIES else "contiguous"
    n = local_length(seq_len, world, rank, layout)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    dt = DTYPES[shape.dtype]
    make = lambda h: torch.randn(shape.batch, n, h, shape.head_dim, generator=gen).to(dt)  # noqa: E731
    return make(shape.heads), make(shape.kv_heads), make(shape.kv_heads)


def measure_rank(group, shape: Shape, method: str, seq_len: int, min_time_s: float,
                 max_reps: int) -> dict:
    """Run one point on this rank: warm up at a small length, then time calls at ``seq_len``.

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
        while not times or (sum(times) < min_time_s and len(times) < max_reps):
            dist.barrier(group)
            t0 = time.perf_counter()
            out = fn(q, k, v)
            dist.barrier(group)
            times.append(time.perf_counter() - t0)
            del out
    return {"times": times, "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline}


# ---------------------------------------------------------------------------------------------
# Predictions and the run loop.

def _feasibility(shape: Shape, series: Series, seq_len: int) -> tuple[bool, str, str | None]:
    """(feasible, note, strategy auto resolves to) for a longmix strategy; trivially ok otherwise."""
    if series.method not in STRATEGIES:
        return True, "", None
    from longmix.dist import plan

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
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict) and "key" in rec:
                results[rec["key"]] = rec
    return results


def _record(path: Path, rec: dict) -> None:
    """Append one point as one JSON line (a single write, so a crash loses at most that line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(rec) + "\n"
    with path.open("ab+") as f:
        # A torn last line (no newline) would swallow this record into an unparsable line:
        # start a fresh line instead.
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())


def run_point(cfg: BenchConfig, series: Series, seq_len: int, timeout_s: float) -> dict:
    """Measure one point in fresh processes; returns the record (status ok / error / timeout)."""
    from longmix.dist.launch import RankFailure, run_local

    shape = cfg.shape
    rec = {"seq_len": seq_len, "method": series.method, "procs": series.procs,
           "label": series.label, "shape": asdict(shape)}
    start = time.perf_counter()
    try:
        per_rank = run_local(measure_rank, series.procs,
                             args=(shape, series.method, seq_len, cfg.min_time_s, cfg.max_reps),
                             timeout=timeout_s, collective_timeout=timeout_s)
    except RankFailure as exc:
        text = str(exc)
        status = "timeout" if "timed out" in text.splitlines()[0] else "error"
        # the last line of the traceback says what went wrong
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
        rec.update(status=status, error=last[:300], wall_s=time.perf_counter() - start)
        return rec
    times = per_rank[0]["times"]
    best = min(times)
    rec.update(status="ok", time_s=best, reps=len(times), times=times,
               gflops=attention_flops(shape.batch, shape.heads, seq_len, shape.head_dim,
                                      shape.causal) / best / 1e9,
               peak_rss_bytes=max(r["peak_rss_bytes"] for r in per_rank),
               baseline_rss_bytes=max(r["baseline_rss_bytes"] for r in per_rank),
               wall_s=time.perf_counter() - start)
    return rec


def run_order(series_list: list[Series], lengths: list[int]) -> list[tuple[Series, int]]:
    """The headline series -- longmix on 1 process and ``auto`` on the smallest P -- over every L
    first, so their largest points are measured even when the run's total budget cuts the rest;
    then the others, L by L (each series' lengths stay ascending, which the predictions need)."""
    headline = [s for s in series_list if s.method == "longmix"]
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
    table = []
    run_start = time.perf_counter()
    for series, seq_len in run_order(series_list, cfg.lengths):
        key = point_key(cfg.shape, series, seq_len)
        base = {"key": key, "seq_len": seq_len, "method": series.method, "procs": series.procs,
                "label": series.label, "shape": asdict(cfg.shape)}
        if key in done and done[key]["status"] in ("ok", "error", "invalid"):
            rec = done[key]
            log(f"  {series.label:<32} L={seq_len:<8} recorded earlier: {_cell(rec)}")
        elif series in stopped:
            rec = {**base, **stopped[series]}
        else:
            rec = _plan_and_run(cfg, series, seq_len, base, last_ok.get(series), run_start, log)
            if rec["status"] in ("ok", "error", "timeout", "invalid"):
                _record(path, {**rec, "date": _now()})
        if rec["status"] == "ok":
            last_ok[series] = rec
        elif series not in stopped:
            stopped[series] = _later(rec)
        table.append(rec)
    return table


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
    log(f"  {series.label:<32} L={seq_len:<8} {_cell(rec)}"
        + (f"  [{rec['gflops']:.1f} GFLOP/s, peak {rec['peak_rss_bytes'] / 2**30:.2f} GiB]"
           if rec["status"] == "ok" else ""))
    return rec


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------------------------------------
# Reporting: table, summary, PNG, markdown.

def _cell(rec: dict | None) -> str:
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


def _grid(cfg: BenchConfig, records: list[dict]):
    series_list = default_series(cfg.procs, cfg.methods)
    by = {(r["method"], r["procs"], r["seq_len"]): r for r in records}
    return series_list, by


def format_table(cfg: BenchConfig, records: list[dict], metric: str = "time") -> str:
    """Markdown table: one row per L, one column per series (time, GFLOP/s or peak memory)."""
    series_list, by = _grid(cfg, records)
    header = "| L | " + " | ".join(s.label for s in series_list) + " |"
    lines = [header, "|" + "---|" * (len(series_list) + 1)]
    for L in cfg.lengths:
        cells = []
        for s in series_list:
            rec = by.get((s.method, s.procs, L))
            if metric == "time" or rec is None or rec["status"] != "ok":
                cells.append(_cell(rec))
            elif metric == "gflops":
                cells.append(f"{rec['gflops']:.1f}")
            else:
                cells.append(f"{rec['peak_rss_bytes'] / 2**30:.2f} "
                             f"({rec['baseline_rss_bytes'] / 2**30:.2f})")
        lines.append(f"| 2^{int(math.log2(L))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(cfg: BenchConfig, records: list[dict]) -> list[str]:
    """Largest L per series, speedup over vanilla, the ratio to the peer, skips and errors."""
    series_list, by = _grid(cfg, records)
    lines = [f"- Largest L within budget ({cfg.mem_budget_gb:g} GiB per process, "
             f"{cfg.time_budget_s:g} s per point):"]
    for s in series_list:
        ok = [L for L in cfg.lengths if by.get((s.method, s.procs, L), {}).get("status") == "ok"]
        note = ""
        failed = [r for r in records if (r["method"], r["procs"]) == (s.method, s.procs)
                  and r["status"] in ("error", "timeout", "invalid")]
        if failed:
            r = failed[0]
            note = f" ({r['status']} at L=2^{int(math.log2(r['seq_len']))}: " \
                   f"{r.get('error') or r.get('reason')})"
        lines.append(f"  - {s.label}: " + (f"2^{int(math.log2(max(ok)))} = {max(ok):,}" if ok
                                           else "none") + note)
    vanilla = [L for L in cfg.lengths if by.get(("vanilla", 1, L), {}).get("status") == "ok"]
    if vanilla:
        L = max(vanilla)
        t_v = by[("vanilla", 1, L)]["time_s"]
        parts = []
        for s in series_list:
            rec = by.get((s.method, s.procs, L))
            if s.method != "vanilla" and rec and rec["status"] == "ok":
                parts.append(f"{s.label} {t_v / rec['time_s']:.2f}x")
        lines.append(f"- Speedup over vanilla MHA at its largest L (2^{int(math.log2(L))}, "
                     f"{t_v:.3g} s): " + (", ".join(parts) or "no other method measured there")
                     + f". The paper reports {PAPER_SPEEDUP}.")
    peer_lines = []
    for p in cfg.procs:
        for L in cfg.lengths:
            peer = by.get(("peer", p, L))
            if not peer or peer["status"] != "ok":
                continue
            ratios = [f"{m} {peer['time_s'] / by[(m, p, L)]['time_s']:.2f}x"
                      for m in STRATEGIES if by.get((m, p, L), {}).get("status") == "ok"]
            if ratios:
                peer_lines.append(f"  - P={p}, L=2^{int(math.log2(L))}: " + ", ".join(ratios))
    if peer_lines:
        lines.append("- ring-attention-pytorch time / longmix time (same P, L, shape; >1 means "
                     "longmix is faster):")
        lines += peer_lines
    return lines


def write_plot(cfg: BenchConfig, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series_list, by = _grid(cfg, records)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for s in series_list:
        pts = [(L, by[(s.method, s.procs, L)]["time_s"]) for L in cfg.lengths
               if by.get((s.method, s.procs, L), {}).get("status") == "ok"]
        if pts:
            style = "--" if s.method in ("vanilla", "peer") else "-"
            ax.plot(*zip(*pts), style, marker="o", markersize=3, label=s.label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward time (s)")
    sh = cfg.shape
    ax.set_title(f"exact attention, {sh.dtype}, {'causal' if sh.causal else 'full'}, "
                 f"heads {sh.heads} (kv {sh.kv_heads}) x d {sh.head_dim}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg: BenchConfig, records: list[dict]) -> tuple[Path, Path]:
    """Write the PNG and the markdown (machine, command, date, tables, summary); return paths."""
    png, md = cfg.path("png"), cfg.path("md")
    write_plot(cfg, records, png)
    sh = cfg.shape
    text = [
        f"### Exact attention scaling: {sh.dtype}, {'causal' if sh.causal else 'non-causal'}, "
        f"batch {sh.batch}, heads {sh.heads} (kv_heads {sh.kv_heads}) x head_dim {sh.head_dim}",
        "",
        f"- Machine: {machine_line(describe())}",
        f"- Command: `{cfg.command}`" if cfg.command else "- Command: (library call)",
        f"- Budgets: {cfg.mem_budget_gb:g} GiB per process, {cfg.time_budget_s:g} s per point, "
        f"{cfg.total_budget_s / 60:g} min per run; times are the best of up to {cfg.max_reps} "
        f"forward calls (at least one, until {cfg.min_time_s:g} s), the slowest rank's; each "
        f"process runs max(1, cores // P) threads (P=4 on fewer than 4 cores oversubscribes).",
        "",
        f"![time vs L]({png.name})",
        "",
        "Forward time (cells: `time budget` / `mem budget` = skipped as predicted over budget, "
        "`n/a` = strategy infeasible for these heads on P ranks):",
        "",
        format_table(cfg, records, "time"),
        "",
        "GFLOP/s (causal counted as half):",
        "",
        format_table(cfg, records, "gflops"),
        "",
        "Peak resident memory per process, GiB (at start, i.e. the torch runtime):",
        "",
        format_table(cfg, records, "memory"),
        "",
        *summarize(cfg, records),
        "",
    ]
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, "\n".join(text))
    return png, md
