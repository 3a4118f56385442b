"""How much float32 error the distributed attention adds over one process, by world size P.

    python benchmarks/attention_float32_error.py            # P = 1..4, ~minutes on 2 cores

Runs every float32 case of tests/parallel/test_attention.py (its grid: both layouts, causal or
not, L in {1, P, 37, 2003}, GQA, logits ~1e4; every strategy) on P local ranks, and compares
each output and gradient's relative error against float64 with the error of the same op on one
process. The test "float32 error does not grow with P" bounds the ratio by what this measures.

Writes benchmarks/results/attention_float32_error.{json,md} with the machine, command, date and
commit.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "parallel"))

from longmix.fileio import atomic_write_text  # noqa: E402
from longmix.machine import describe, markdown  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402
from longmix.provenance import provenance, utc_now  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FLOOR = 1e-6  # below this the single-process error is rounding noise; ratios use at least this


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2,3,4")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from helpers import run_configs
    from test_attention import STRATEGY_CASES

    rows = []
    for procs in (int(x) for x in args.procs.split(",")):
        cases = [c for make in STRATEGY_CASES.values() for c in make(procs) if c.dtype == "float32"]
        for r in run_local(run_configs, procs, (cases,), timeout=600, collective_timeout=120)[0]:
            for name, err in r["errors"].items():
                local = r["local_errors"][name]
                rows.append({"procs": procs, "case": r["case"].name, "tensor": name, "error": err,
                             "local_error": local, "ratio": err / max(local, FLOOR)})
    by_p = {}
    for row in rows:
        worst = by_p.setdefault(row["procs"], {"ratio": 0.0, "error": 0.0, "case": ""})
        if row["ratio"] > worst["ratio"]:
            worst.update(ratio=row["ratio"], case=f"{row['case']} {row['tensor']}")
        worst["error"] = max(worst["error"], row["error"])
    command = "python benchmarks/attention_float32_error.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    machine = describe()
    run = {"command": command.strip(), "date": utc_now(), "machine": machine, **provenance(),
           "floor": FLOOR, "rows": rows, "worst": by_p}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "attention_float32_error.json", json.dumps(run, indent=2))
    lines = ["### Float32 error of distributed attention against one process", "",
             f"- Machine: {markdown(machine)}", f"- Command: `{run['command']}`",
             f"- Date: {run['date']}; commit: {run['git_describe']}", "",
             f"Relative error against float64 of out, dq, dk, dv; ratio = distributed / "
             f"one-process error (the latter floored at {FLOOR:g}). Every float32 case of "
             "tests/parallel/test_attention.py.", "",
             "| P | cases x tensors | largest ratio | at | largest error |", "|---|---|---|---|---|"]
    for procs, worst in sorted(by_p.items()):
        n = sum(1 for r in rows if r["procs"] == procs)
        lines.append(f"| {procs} | {n} | {worst['ratio']:.3f} | {worst['case']} | "
                     f"{worst['error']:.3g} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "attention_float32_error.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
