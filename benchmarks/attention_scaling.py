"""The paper's comparison on this machine: exact attention time vs sequence length.

    python benchmarks/attention_scaling.py                        # the full grid, L = 2^10 .. 2^20
    python benchmarks/attention_scaling.py --max-log2-len 12      # smoke run, under a minute
    python benchmarks/attention_scaling.py --dtype fp32 --max-log2-len 16 --methods longmix,auto,ring,peer

Measures vanilla MHA (scores materialized), longmix on one process, longmix distributed on P = 2
and 4 ranks for each strategy, and ring-attention-pytorch (`pip install -e .[bench]`) with the same
shape. Writes benchmarks/results/attention_scaling_<shape>.{jsonl,png,md}; rerunning resumes.

Defaults (2 heads x head_dim 32, bf16, causal) match `longmix attend`'s. On the 2-core AMX Xeon
this project is developed on, a causal million-token forward takes ~300 s for any process count
(measured at L = 2^16, extrapolated as L^2), so the budgets (400 s per point, 25 min per run) let
the headline series -- longmix on 1 process and auto on 2 -- reach L = 2^20 (they run first over
all L); the others then run L by L until the run's budget stops them. Rerun with a larger
--total-budget-min to fill those in: finished points are kept. ring-attention-pytorch 0.5.20 fails
in bf16 on CPU (its einsum mixes float32 and bf16; the error is recorded), so its time ratios
need an fp32 run, e.g. --dtype fp32 --max-log2-len 16.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from longmix.bench.attention import METHODS, BenchConfig, Shape, format_table, run_benchmark
from longmix.bench.attention import summarize, write_report


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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-log2-len", type=int, default=10)
    p.add_argument("--max-log2-len", type=int, default=20)
    p.add_argument("--procs", type=_csv_ints, default=(2, 4), help="world sizes, e.g. 2,4")
    p.add_argument("--methods", type=_csv_methods, default=METHODS,
                   help=f"subset of {','.join(METHODS)}")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--dtype", choices=("bf16", "fp32", "fp64"), default="bf16")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mem-budget-gb", type=float, default=8.0, help="per process")
    p.add_argument("--time-budget-s", type=float, default=400.0, help="per point (predicted)")
    p.add_argument("--total-budget-min", type=float, default=25.0, help="per run")
    p.add_argument("--min-time-s", type=float, default=1.0,
                   help="repeat a point until this much time is measured (up to 5 calls)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
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
    png, md = write_report(cfg, records)
    print()
    print(format_table(cfg, records, "time"))
    print()
    print("\n".join(summarize(cfg, records)))
    print(f"\nwrote {png} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
