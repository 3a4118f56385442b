"""`longmix attend`'s memory per rank: the predicted peak against the measured one.

    python benchmarks/attend_memory.py                # L = 2^17, 2^18; ~10 min on 2 cores
    python benchmarks/attend_memory.py --seq-lens 65536 --dtypes fp32

Each run is the main job (`longmix.attend.run_job`) on local ranks, at each L, dtype and shape
(1 x 32 and 2 x 32 heads x head_dim, so that both the ring and the shuffle run), causal. Each
rank reports its peak resident set (VmHWM) and its resident set before the job's tensors
(the torch runtime); the table holds both against the prediction
(:func:`longmix.attend.resources.predicted_bytes_per_rank`), whose refusal of jobs that cannot
fit rests on it being an upper bound.

Writes benchmarks/results/attend_memory.{json,md} with the machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from longmix.attend import AttendConfig, run_job
from longmix.attend.resources import RUNTIME_BYTES
from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now

RESULTS = Path(__file__).parent / "results"
SHAPES = {"1x32": (1, 1, 32), "2x32": (2, 2, 32)}  # heads, kv_heads, head_dim


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", default="131072,262144", help="comma-separated L")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def measure(seq_len: int, dtype: str, shape: str, procs: int) -> dict:
    heads, kv_heads, head_dim = SHAPES[shape]
    cfg = AttendConfig(seq_len=seq_len, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                       dtype=dtype, timeout=1800.0)
    report = run_job(cfg, procs=procs, progress=False)
    predicted = report["predicted_bytes_per_rank"]
    ranks = [{"rank": r["rank"], "peak_rss_bytes": r["peak_rss_bytes"],
              "baseline_rss_bytes": r["baseline_rss_bytes"], "threads": r["threads"]}
             for r in report["ranks"]]
    worst = max(r["peak_rss_bytes"] for r in ranks)
    # of the allowance above each rank's start, the share the job used
    used = max((r["peak_rss_bytes"] - r["baseline_rss_bytes"]) / (predicted - r["baseline_rss_bytes"])
               for r in ranks)
    return {"seq_len": seq_len, "dtype": dtype, "shape": shape, "heads": heads,
            "kv_heads": kv_heads, "head_dim": head_dim, "procs": procs,
            "strategy": report["strategy"], "predicted_bytes": predicted,
            "measured_peak_bytes": worst, "peak_over_predicted": worst / predicted,
            "growth_over_allowance": used,
            "passed": report["passed"], "ranks": ranks}


def table(records: list[dict]) -> str:
    mib = 2**20
    lines = ["| L | dtype | heads x d | strategy | predicted MiB | measured peak MiB (per rank) "
             "| start MiB | peak / predicted | growth / allowance above start |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        peaks = " / ".join(f"{x['peak_rss_bytes'] / mib:.1f}" for x in r["ranks"])
        start = " / ".join(f"{x['baseline_rss_bytes'] / mib:.1f}" for x in r["ranks"])
        lines.append(f"| {r['seq_len']:,} | {r['dtype']} | {r['heads']} x {r['head_dim']} | "
                     f"{r['strategy']} | {r['predicted_bytes'] / mib:.1f} | {peaks} | {start} | "
                     f"{r['peak_over_predicted']:.3f} | {r['growth_over_allowance']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    records = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            for seq_len in (int(x) for x in args.seq_lens.split(",")):
                records.append(measure(seq_len, dtype, shape, args.procs))
                print(table(records[-1:]).splitlines()[-1], flush=True)
    command = "python benchmarks/attend_memory.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = describe()
    run = {"command": command.strip(), "date": utc_now(), "machine": machine, **provenance(),
           "runtime_bytes": RUNTIME_BYTES, "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "attend_memory.json", json.dumps(run, indent=2))
    text = table(records)
    worst = max(r["peak_over_predicted"] for r in records)
    md = ["### `longmix attend`: memory per rank, predicted and measured", "",
          f"- Machine: {markdown(machine)} (shared with other work while measured)",
          f"- Command: `{run['command']}`",
          f"- Date: {run['date']}; commit: {run['git_describe']}", "",
          f"Peak resident set per rank (VmHWM) against the prediction; \"start\" is the resident "
          f"set before the job's tensors; growth / allowance is (peak - start) / (predicted - "
          f"start). Largest peak / predicted: {worst:.3f}.", "", text, ""]
    atomic_write_text(args.out / "attend_memory.md", "\n".join(md))
    print(f"\nlargest peak / predicted: {worst:.3f}\nwrote {args.out / 'attend_memory.json'}, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
