"""Reporting the attention benchmark: tables, the ratios and what each measures, PNG, markdown.

Every rate is also given as a percentage of the matmul peak of its dtype on the same threads
(``benchmarks/results/matmul_peak.json``, written by ``benchmarks/matmul_peak.py``), the most a
kernel made of matmuls can reach on this machine.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from longmix.bench.attention import (PAPER_SPEEDUP, STRATEGIES, BenchConfig, default_series,
                                     point_text)
from longmix.bench.peak import percent_of_peak
from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown as machine_line
from longmix.plotting import pyplot


def load_peaks(path: Path) -> tuple[dict[tuple[str, int], float], str | None]:
    """({(dtype, threads): GFLOP/s}, where they were measured) from matmul_peak.json, or ({}, None)."""
    try:
        run = json.loads(Path(path).read_text())
        peaks = {(p["dtype"], p["threads"]): p["gflops"] for p in run["peaks"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None
    return peaks, f"{run.get('date')}, {run.get('machine', {}).get('cpu')}"


def _grid(cfg: BenchConfig, records: list[dict]):
    series_list = default_series(cfg.procs, cfg.methods)
    by = {(r["method"], r["procs"], r["seq_len"]): r for r in records}
    return series_list, by


def pct_of_peak(rec: dict, dtype: str, peaks: dict) -> float | None:
    """The point's useful rate as % of the peak of P ranks x (its threads per rank)."""
    threads = rec.get("threads_per_rank")
    if not threads:
        return None
    pct = percent_of_peak(rec["gflops"] / rec["procs"], dtype, threads, peaks)
    return pct


def format_table(cfg: BenchConfig, records: list[dict], metric: str = "time",
                 peaks: dict | None = None) -> str:
    """Markdown table: one row per L, one column per series (time, GFLOP/s, % of peak or memory)."""
    series_list, by = _grid(cfg, records)
    header = "| L | " + " | ".join(s.label for s in series_list) + " |"
    lines = [header, "|" + "---|" * (len(series_list) + 1)]
    for L in cfg.lengths:
        cells = []
        for s in series_list:
            rec = by.get((s.method, s.procs, L))
            if metric == "time" or rec is None or rec["status"] != "ok":
                cells.append(point_text(rec))
            elif metric == "gflops":
                pct = pct_of_peak(rec, cfg.shape.dtype, peaks or {})
                cells.append(f"{rec['gflops']:.1f}" + (f" ({pct:.0f}%)" if pct is not None else ""))
            else:
                cells.append(f"{rec['peak_rss_bytes'] / 2**30:.2f} "
                             f"({rec['baseline_rss_bytes'] / 2**30:.2f})")
        lines.append(f"| 2^{int(math.log2(L))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_line(by, lengths, num: tuple[str, int], den: tuple[str, int], what: str) -> str | None:
    """'what: 2^a x.xx, 2^b y.yy' -- time(num) / time(den) at every L where both ran."""
    parts = []
    for L in lengths:
        a, b = by.get((*num, L)), by.get((*den, L))
        if a and b and a["status"] == b["status"] == "ok":
            parts.append(f"2^{int(math.log2(L))} {a['time_s'] / b['time_s']:.2f}x")
    return f"  - {what}: " + ", ".join(parts) if parts else None


def summarize(cfg: BenchConfig, records: list[dict]) -> list[str]:
    """Largest L per series, then each ratio with what it measures (> 1: the second is faster)."""
    series_list, by = _grid(cfg, records)
    lines = [f"- Largest L within budget ({cfg.mem_budget_gb:g} GiB per process, "
             f"{cfg.time_budget_s:g} s per point):"]
    for s in series_list:
        ok = [L for L in cfg.lengths if by.get((s.method, s.procs, L), {}).get("status") == "ok"]
        failed = [r for r in records if (r["method"], r["procs"]) == (s.method, s.procs)
                  and r["status"] in ("error", "timeout", "invalid")]
        note = ""
        if failed:
            r = failed[0]
            note = (f" ({r['status']} at L=2^{int(math.log2(r['seq_len']))}: "
                    f"{r.get('error') or r.get('reason')})")
        lines.append(f"  - {s.label}: " + (f"2^{int(math.log2(max(ok)))} = {max(ok):,}" if ok
                                           else "none") + note)
    L = cfg.lengths
    ratios = [
        _ratio_line(by, L, ("sdpa", 1), ("longmix", 1),
                    "torch sdpa time / longmix 1-process time (same fused CPU kernel, same cores; "
                    "measures what longmix's causal triangle split adds)"),
        _ratio_line(by, L, ("vanilla", 1), ("sdpa", 1),
                    "vanilla MHA time / torch sdpa time (measures PyTorch's fused O(L)-memory "
                    f"kernel against materialized scores, not longmix; the paper reports "
                    f"{PAPER_SPEEDUP})"),
    ]
    for p in cfg.procs:
        for m in STRATEGIES:
            ratios.append(_ratio_line(
                by, L, (m, p), ("sdpa", 1),
                f"longmix {m} on P={p} time / torch sdpa on 1 process (the same cores: "
                f"{p} ranks x cores/{p} threads; measures the cost of distributing on one "
                f"machine, what P buys is memory per rank and, across machines, compute)"))
        for m in STRATEGIES:
            ratios.append(_ratio_line(
                by, L, ("peer", p), (m, p),
                f"ring-attention-pytorch time / longmix {m} time on P={p} (both distributed, "
                f"same shards; the peer is pure-PyTorch einsum blocks that also compute the "
                f"masked half on CPU)"))
    ratios = [r for r in ratios if r]
    if ratios:
        lines.append("- Time ratios (> 1: the second is faster):")
        lines += ratios
    return lines


def write_plot(cfg: BenchConfig, records: list[dict], path: Path) -> None:
    plt = pyplot()

    series_list, by = _grid(cfg, records)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for s in series_list:
        pts = [(L, by[(s.method, s.procs, L)]["time_s"]) for L in cfg.lengths
               if by.get((s.method, s.procs, L), {}).get("status") == "ok"]
        if pts:
            style = "--" if s.method in ("vanilla", "peer", "sdpa") else "-"
            ax.plot(*zip(*pts), style, marker="o", markersize=3, label=s.label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward time (s), median of warm calls")
    sh = cfg.shape
    ax.set_title(f"exact attention, {sh.dtype}, {'causal' if sh.causal else 'full'}, "
                 f"heads {sh.heads} (kv {sh.kv_heads}) x d {sh.head_dim}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg: BenchConfig, records: list[dict], peaks_file: Path | None = None) -> tuple[Path, Path]:
    """Write the PNG and the markdown (machine, command, date, commit, tables, ratios); return paths."""
    from longmix.provenance import provenance, utc_now

    png, md = cfg.path("png"), cfg.path("md")
    write_plot(cfg, records, png)
    peaks, peaks_from = load_peaks(peaks_file or cfg.out_dir / "matmul_peak.json")
    sh = cfg.shape
    code = provenance()
    text = [
        f"### Exact attention scaling: {sh.dtype}, {'causal' if sh.causal else 'non-causal'}, "
        f"batch {sh.batch}, heads {sh.heads} (kv_heads {sh.kv_heads}) x head_dim {sh.head_dim}",
        "",
        f"- Machine: {machine_line(describe())}",
        f"- Command: `{cfg.command}`" if cfg.command else "- Command: (library call)",
        f"- Written {utc_now()}, code {code.get('git_describe')}",
        f"- Budgets: {cfg.mem_budget_gb:g} GiB per process, {cfg.time_budget_s:g} s per point, "
        f"{cfg.total_budget_s / 60:g} min per run; a time is the median of {cfg.min_reps} to "
        f"{cfg.max_reps} warm forward calls (until {cfg.min_time_s:g} s), the slowest rank's; "
        f"one-process methods use every core, P ranks use cores // P threads each (P above the "
        f"core count oversubscribes).",
        f"- Matmul peaks: {peaks_from}" if peaks else
        "- Matmul peaks: not measured yet (run benchmarks/matmul_peak.py), so no % of peak",
        "",
        f"![time vs L]({png.name})",
        "",
        "Forward time (cells: `time budget` / `mem budget` = skipped as predicted over budget, "
        "`n/a` = strategy infeasible for these heads on P ranks):",
        "",
        format_table(cfg, records, "time"),
        "",
        "Useful GFLOP/s (causal counted as half), and in brackets % of the matmul peak of "
        f"{sh.dtype} on the same threads (x P for P ranks):",
        "",
        format_table(cfg, records, "gflops", peaks),
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
