"""The machine's matmul peaks, fp32 and bf16, in one run, and the attention kernel against them.

    python benchmarks/matmul_peak.py                    # peaks, then attention at L = 32,768
    python benchmarks/matmul_peak.py --budget-s 10 --attention-len 4096     # a quicker look

Part 1: the best rate of square matmuls per dtype on 1 thread and on all cores -- the yardstick.
Part 2: the local attention forward (torch's fused `scaled_dot_product_attention` as a user calls
it, and longmix's op: the same kernel with the causal triangle split into full blocks) at one L,
1 x 32, 1 x 64 and 2 x 32 heads x head_dim, causal or not, each as useful GFLOP/s (causal counted
as half) and % of the matmul peak of its dtype on the same threads.
Part 3: the ceiling the softmax puts on that percentage. Every score costs 4·d useful flops in
the two matmuls and at least one exp, which run on the same cores; the exp's measured cost per
score (and that of torch's whole softmax: max, exp, sum, scale) on 1 thread bounds the % of peak
any exact kernel can reach at head_dim d: 4d/peak / (4d/peak + exp time). A model, not a
measurement of a kernel; it says which goals no kernel built on these cores can meet.

Writes benchmarks/results/matmul_peak.{json,md,png} with the machine, command, date and commit.
attention_scaling.py reads the JSON to print "% of the dtype's peak".
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from longmix.bench.peak import (KERNELS, SIZES, attention_ceiling, attention_rate, measure_peaks,
                                peaks_by, softmax_ns_per_score)
from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.plotting import pyplot
from longmix.provenance import provenance, utc_now

RESULTS = Path(__file__).parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    p.add_argument("--threads", default=",".join(map(str, sorted({1, cores}))),
                   help="comma-separated thread counts (default: 1 and all cores)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="square matmul sizes")
    p.add_argument("--budget-s", type=float, default=30.0,
                   help="matmul part: stop adding sizes past this many seconds")
    p.add_argument("--attention-len", type=int, default=32768,
                   help="L of the attention part (0: skip it)")
    p.add_argument("--attention-budget-s", type=float, default=300.0,
                   help="attention part: points past this many seconds are skipped")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def table(records: list[dict]) -> str:
    lines = ["| dtype | threads | " + " | ".join(f"n={r}" for r in sorted({r['size'] for r in records}))
             + " | peak GFLOP/s |", "|---|---|" + "---|" * (len({r['size'] for r in records}) + 1)]
    peaks = peaks_by(records)
    for (dtype, threads), peak in sorted(peaks.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for n in sorted({r["size"] for r in records}):
            rec = next((r for r in records if (r["dtype"], r["threads"], r["size"]) ==
                        (dtype, threads, n)), None)
            cells.append(f"{rec['gflops']:.0f}" if rec and rec["status"] == "ok" else "-")
        lines.append(f"| {dtype} | {threads} | " + " | ".join(cells) + f" | {peak:.0f} |")
    return "\n".join(lines)


SHAPES = ((1, 32), (1, 64), (2, 32), (1, 128))  # heads x head_dim: the table, and d = 128


def measure_attention(threads, seq_len: int, budget_s: float) -> list[dict]:
    import time

    out, start = [], time.perf_counter()
    for t in threads:
        for heads, d in SHAPES:
            for dtype in ("fp32", "bf16"):
                for causal in (False, True):
                    for kernel in KERNELS:
                        rec = {"kernel": kernel, "threads": t, "heads": heads, "head_dim": d,
                               "dtype": dtype, "causal": causal, "seq_len": seq_len}
                        if time.perf_counter() - start > budget_s:
                            out.append({**rec, "status": "skipped", "reason": "budget"})
                            continue
                        rate = attention_rate(kernel, dtype, t, seq_len, heads, d, causal)
                        out.append({**rec, "status": "ok", "gflops": rate})
    return out


def attention_table(records: list[dict], peaks: dict) -> str:
    lines = ["| threads | heads x d | kernel | fp32 non-causal | fp32 causal | bf16 non-causal | "
             "bf16 causal |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["threads"], r["heads"], r["head_dim"], r["kernel"]) for r in records})
    for t, h, d, kernel in keys:
        cells = []
        for dtype in ("fp32", "bf16"):
            for causal in (False, True):
                r = next((r for r in records if (r["threads"], r["heads"], r["head_dim"],
                          r["kernel"], r["dtype"], r["causal"]) == (t, h, d, kernel, dtype, causal)),
                         None)
                if r is None or r["status"] != "ok":
                    cells.append("-")
                    continue
                peak = peaks.get((dtype, t))
                cells.append(f"{r['gflops']:.0f}" + (f" ({100 * r['gflops'] / peak:.0f}%)"
                                                      if peak else ""))
        lines.append(f"| {t} | {h} x {d} | {kernel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CEILING_HEAD_DIMS = (32, 64, 128)


def ceiling_table(vector_ns: dict, peaks: dict, attention: list[dict]) -> str:
    lines = ["| dtype | head_dim | ceiling: exp only | ceiling: torch softmax | longmix measured, 1 thread |",
             "|---|---|---|---|---|"]
    for dtype in ("fp32", "bf16"):
        peak = peaks.get((dtype, 1))
        if not peak:
            continue
        for d in CEILING_HEAD_DIMS:
            rates = [r["gflops"] for r in attention if r["status"] == "ok" and r["kernel"] == "longmix"
                     and (r["dtype"], r["threads"], r["head_dim"]) == (dtype, 1, d)]
            measured = f"{100 * max(rates) / peak:.0f}%" if rates else "-"
            lines.append(f"| {dtype} | {d} | {attention_ceiling(peak, d, vector_ns['exp']):.0f}% | "
                         f"{attention_ceiling(peak, d, vector_ns['softmax']):.0f}% | {measured} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype in sorted({r["dtype"] for r in records}):
        for threads in sorted({r["threads"] for r in records}):
            pts = [(r["size"], r["gflops"]) for r in records if r["status"] == "ok"
                   and (r["dtype"], r["threads"]) == (dtype, threads)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{dtype}, {threads} thread(s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("matrix size n (n x n @ n x n)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("matmul rate per dtype")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = tuple(int(x) for x in args.threads.split(",") if x)
    sizes = tuple(int(x) for x in args.sizes.split(",") if x)
    records = measure_peaks(threads, sizes=sizes, budget_s=args.budget_s)
    attention = (measure_attention(threads, args.attention_len, args.attention_budget_s)
                 if args.attention_len > 0 else [])
    vector_ns = softmax_ns_per_score(threads=1)
    peaks = peaks_by(records)
    command = "python benchmarks/matmul_peak.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = describe()
    run = {"command": command.strip(), "date": utc_now(), "machine": machine,
           **provenance(), "records": records, "attention": attention, "vector_ns_per_score": vector_ns,
           "peaks": [{"dtype": d, "threads": t, "gflops": g}
                     for (d, t), g in sorted(peaks.items())]}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "matmul_peak.json", json.dumps(run, indent=2))
    text = table(records)
    if attention:
        text += (f"\n\nLocal attention forward at L = {args.attention_len:,}: useful GFLOP/s "
                 f"(causal counted as half) and % of the matmul peak of its dtype on the same "
                 f"threads; median of 3 warm calls\n\n" + attention_table(attention, peaks))
    text += (f"\n\nThe softmax's ceiling on attention's % of peak (1 thread): each score costs "
             f"4·head_dim flops at the matmul peak plus {vector_ns['exp']:.3f} ns of exp (measured; "
             f"{vector_ns['softmax']:.3f} ns for torch's whole softmax) on the same core. A kernel "
             f"above the exp-only ceiling would have to skip exponentials.\n\n"
             + ceiling_table(vector_ns, peaks, attention))
    md = [f"### Matmul peaks", "", f"- Machine: {markdown(machine)}", f"- Command: `{run['command']}`",
          f"- Date: {run['date']}; commit: {run['git_describe']}", "", text, "",
          "![matmul rates](matmul_peak.png)", ""]
    atomic_write_text(args.out / "matmul_peak.md", "\n".join(md))
    plot(records, args.out / "matmul_peak.png")
    print(text)
    print(f"\nwrote {args.out / 'matmul_peak.json'}, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
