"""What `longmix attend` prints: the problem, the calibration and choice, predicted vs measured
time, throughput against the machine, memory and traffic per rank, and the verdict."""
from __future__ import annotations

import torch

from longmix.dtypes import DTYPES
from longmix.machine import isa_limits_text


def theoretical_bytes_sent(strategy: str, *, seq_len: int, heads: int, kv_heads: int,
                           head_dim: int, dtype: str, world: int, batch: int = 1,
                           hybrid_size: int | None = None) -> int | None:
    """Bytes one rank should send in one forward call, assuming equal shards.

    * shuffle: all-to-all of q, k, v to head shards and of the output back; each rank keeps 1/P
      of what it holds: 2·(P-1)·(L/P)·d·(H/P + max(HK/P, 1)) elements (= 4·L·H·d/P·(P-1)/P when
      HK = H). Under GQA with HK < P each rank still needs one whole K/V head.
    * ring: the K/V shard travels P-1 hops: (P-1)·(L/P)·2·HK·d elements (about 2·L·HK·d).
    * hybrid with shuffle groups of u: the shuffle formula over u ranks, then a ring over P/u
      groups carrying (u·L/P) rows of max(HK/u, 1) K/V heads.
    """
    B, L, H, HK, d, P = batch, seq_len, heads, kv_heads, head_dim, world
    item = torch.empty((), dtype=DTYPES[dtype]).element_size()
    if P == 1:
        return 0

    def shuffle(parts: int, rows: float) -> float:
        return 2 * (parts - 1) * rows * d * (H / parts + (max(HK / parts, 1) if parts > 1 else 0))

    if strategy == "shuffle":
        elements = shuffle(P, L / P)
    elif strategy == "ring":
        elements = (P - 1) * (L / P) * 2 * HK * d
    elif strategy == "hybrid" and hybrid_size:
        u, g = hybrid_size, P // hybrid_size
        elements = shuffle(u, L / P) + (g - 1) * (u * L / P) * 2 * max(HK / u, 1) * d
    else:
        return None
    return int(B * elements * item)


def size(nbytes) -> str:
    if nbytes is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def _calibration_lines(report: dict) -> list[str]:
    cal = report.get("calibration")
    if not cal:
        return []
    rates = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in cal["rates"].items())
    source = "cached" if cal.get("cached") else f"measured in {cal['seconds']:.1f} s"
    s = cal["shape"]
    if cal.get("bandwidth_bytes_per_s"):
        link = (f"link {cal['bandwidth_bytes_per_s'] / 1e9:.2g} GB/s per rank, latency "
                f"{cal['latency_s'] * 1e6:.0f} us (all-to-all)")
    else:
        link = "no link (one rank)"
    lines = [f"calibration ({source}; {s['queries']:,} x {s['keys']:,} block, "
             f"{cal['threads_per_rank']} thread(s) per rank, slowest of {cal['world_size']} "
             f"rank(s)): useful GFLOP/s per rank {rates}; {link}"]
    lines.append(f"dtype: {report['config']['dtype']} ({report['dtype_reason']})")
    return lines


def format_report(report: dict) -> str:
    """The human summary `longmix attend` prints."""
    if report.get("device") == "cuda":
        from .cuda import format_cuda_report

        return format_cuda_report(report)
    c = report["config"]
    plan = report["plan"]
    machine = report["machine"]
    flags = "/".join(machine.get("cpu_flags") or []) or "no matrix/vector flags"
    limits = isa_limits_text(machine)
    limits = f", math libraries limited by {limits}" if limits else ""
    lines = [
        f"longmix attend: L={c['seq_len']:,} {'causal' if c['causal'] else 'non-causal'}, "
        f"batch {c['batch']}, heads {c['heads']} (kv_heads {c['kv_heads']}) x head_dim "
        f"{c['head_dim']}, {c['dtype']}, layout {c['layout']}",
        f"machine: {machine['cpu']} ({machine['cores']} cores, {flags}){limits}, torch {machine['torch']}",
        f"world size: {report['world_size']} ({report.get('launch', '')})",
        *_calibration_lines(report),
    ]
    hybrid = f" (shuffle groups of {report['hybrid_size']})" if report.get("hybrid_size") else ""
    if c["strategy"] == "auto":
        lines.append(f"plan: {report['strategy']}{hybrid} -- {plan['reason']}")
    else:
        lines.append(f"plan: {report['strategy']}{hybrid} (requested); auto would pick "
                     f"{plan['strategy']} -- {plan['reason']}")
    ranks = report["ranks"]
    gen = max(r["generate_s"] for r in ranks)
    ver = max(r["verify_s"] for r in ranks)
    predicted = plan.get("predicted_time_s")
    measured = report["elapsed_s"]
    timing = f"elapsed: attention {measured:.2f} s measured"
    if predicted:
        timing += f", {predicted:.3g} s predicted ({(measured / predicted - 1) * 100:+.0f}%)"
    lines.append(timing + f"; generate {gen:.2f} s, verify {ver:.2f} s")
    rate = report["gflops_per_s"]
    peak = report.get("calibrated_gflops_per_rank")
    share = (f", {100 * rate / (peak * report['world_size']):.0f}% of the calibrated kernel rate "
             f"x {report['world_size']} rank(s)" if peak and rate else "")
    lines.append(f"throughput: {rate:.1f} GFLOP/s useful ({report['flops']:.3g} flop"
                 f"{', causal counted as half' if c['causal'] else ''}){share}")
    lines.append(f"communication per rank ({report['strategy']}): theory "
                 f"{size(report['theory_bytes_sent_per_rank'])} sent, planner's model "
                 f"{size(plan['bytes_per_rank'])}")
    predicted_mem = report["predicted_bytes_per_rank"]
    peak_mem = max(r["peak_rss_bytes"] for r in ranks)
    lines.append(f"memory per rank: predicted {size(predicted_mem)} peak (an upper estimate), "
                 f"measured {size(peak_mem)} at most ({100 * peak_mem / predicted_mem:.0f}% of "
                 f"the prediction)")
    lines.append("  rank  rows       threads  peak mem (start)      sent         received")
    for r in ranks:
        lines.append(f"  {r['rank']:>4}  {r['local_len']:<9,}  {r['threads']:>7}  "
                     f"{size(r['peak_rss_bytes']):>9} ({size(r['baseline_rss_bytes'])})  "
                     f"{size(r['bytes_sent']):>11}  {size(r['bytes_received']):>11}")
    v = report["verification"]
    if v["verdict"] == "not verified":
        lines.append("verification: not verified (--check-rows 0): no output row was compared")
        return "\n".join(lines)
    faults = v["fault_sizes"]
    lines.append(
        f"verification: {v['rows_checked']} of {v['rows_wanted']} rows (shard boundaries, chunk "
        f"edges, first/last, {c['check_rows']} random) vs float64: max rel err "
        f"{v['max_rel_err']:.3g} at row {v['worst_row']}; tolerance {v['tolerance']:.3g} for "
        f"{c['dtype']} at this L (a dropped {256}-key block moves the last row by "
        f"~{faults['dropped_block']:.3g}, a 1% scale error by {faults['scale_1pct']:g}) "
        f"{v['verdict']}")
    return "\n".join(lines)
