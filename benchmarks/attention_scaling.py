"""Exact attention against the baselines a user would pick, side by side in one run.

    python benchmarks/matmul_peak.py                              # first: the % of peak yardstick
    python benchmarks/attention_scaling.py                        # the full grid, L = 2^10 .. 2^20
    python benchmarks/attention_scaling.py --max-log2-len 12 --total-budget-min 2   # smoke run
    python benchmarks/attention_scaling.py --dtype bf16 --methods sdpa,longmix,vanilla,auto

Series: torch's `scaled_dot_product_attention` on one process (the headline baseline: what a user
has without longmix), longmix's local op on one process, vanilla MHA with materialized scores (the
paper's baseline), longmix distributed on P ranks per strategy with cores / P threads each (the
same cores as one process), and ring-attention-pytorch (`pip install -e .[bench]`; its output is
checked against float64 first, and it is skipped cleanly when not installed). Times are medians of
>= 3 warm calls. Writes benchmarks/results/attention_scaling_<shape>.{jsonl,png,md} with machine,
command, date and commit, and prints the tables and each ratio with what it measures; rerunning
resumes (finished points are kept; --force remeasures).

Defaults (1 head x head_dim 32, causal, fp32) match `longmix attend`'s shape; fp32 because the
peer fails in bf16 on CPU. Budgets: --time-budget-s per point (predicted from the previous L as
L^2), --mem-budget-gb per process, --total-budget-min per run.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from longmix.bench.attention import METHODS, BenchConfig, Shape, run_benchmark
from longmix.bench.attention_report import format_table, load_peaks, summarize, write_report
from longmix.dtypes import ALIASES, NAMES, dtype_name

RESULTS = Path(__file__).parent / "results"


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _csv_methods(text: str) -> tuple[str, ...]:
    methods = tuple(x for x in text.split(",") if x)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {METHODS}")
    return methods


def _dtype(text: str) -> str:
    try:
        return dtype_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-log2-len", type=int, default=10)
    p.add_argument("--max-log2-len", type=int, default=20)
    p.add_argument("--procs", type=_csv_ints, default=(2, 4), help="world sizes, e.g. 2,4")
    p.add_argument("--methods", type=_csv_methods, default=METHODS,
                   help=f"subset of {','.join(METHODS)}")
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--dtype", type=_dtype, default="fp32",
                   help=f"one of {', '.join(NAMES)} (or {', '.join(ALIASES)})")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mem-budget-gb", type=float, default=8.0, help="per process")
    p.add_argument("--time-budget-s", type=float, default=400.0, help="per point (predicted)")
    p.add_argument("--total-budget-min", type=float, default=25.0, help="per run")
    p.add_argument("--min-time-s", type=float, default=1.0,
                   help="repeat a point until this much time is measured (3 to 5 calls)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--force", action="store_true", help="remeasure points already recorded")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    shape = Shape(heads=args.heads, kv_heads=args.kv_heads or args.heads, head_dim=args.head_dim,
                  dtype=args.dtype, causal=args.causal)
    command = "python benchmarks/attention_scaling.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    cfg = BenchConfig(shape=shape, min_log2_len=args.min_log2_len, max_log2_len=args.max_log2_len,
                      procs=args.procs, methods=args.methods, mem_budget_gb=args.mem_budget_gb,
                      time_budget_s=args.time_budget_s, total_budget_s=60 * args.total_budget_min,
                      min_time_s=args.min_time_s, out_dir=args.out, force=args.force,
                      command=command.strip())
    print(f"attention scaling, shape {shape.tag}; results -> {cfg.path('jsonl')}", flush=True)
    records = run_benchmark(cfg, log=lambda line: print(line, flush=True))
    png, md = write_report(cfg, records, args.out / "matmul_peak.json")
    peaks, _ = load_peaks(args.out / "matmul_peak.json")
    print()
    print(format_table(cfg, records, "time"))
    print()
    print(format_table(cfg, records, "gflops", peaks))
    print()
    print("\n".join(summarize(cfg, records)))
    print(f"\nwrote {png} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
