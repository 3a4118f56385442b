"""``longmix train --plan time`` against the default plan by bytes: the same training run, timed.

    python benchmarks/plan_time_train.py        # 5 mixers, P = 2 and 4, context 16,384, 20 steps

For each (mixer, P), the same ``longmix train`` run (a causal LM on ``mqar_all``, dim 64, depth 2,
4 heads, batch 1, fp32, one thread per rank) with ``--plan bytes`` (the default) and ``--plan
time``, each in its own command, the two alternating first round by round so that drift in the
machine's load falls on both. Reported: the forms each plan chose; the training wall (the
record's ``wall_s``: the steps, one validation and one checkpoint); ``bytes / time``, the ratio
of those walls (> 1: the time plan trains faster); and the calibration's cost, the time plan's
command wall beyond its training wall, less the byte plan's (start-up, test and write-out cost
both alike). Both plans train the same model exactly (``--plan`` is not part of a run's
identity), so their test metrics agree up to float32 rounding. Writes plan_time_train.{json,md} under ``--out-dir`` with
machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from longmix.bench.record import provenance_lines, run_record, write_record

PLANS = ("bytes", "time")


def train_once(mixer: str, world: int, plan: str, args, out: Path) -> dict:
    """One ``longmix train`` command; its record, with the command's wall."""
    command = [sys.executable, "-m", "longmix.cli", "train", "--task", "mqar_all", "--task-param",
               f"length={args.context}", "--mixer", mixer, "--context", str(args.context),
               "--procs", str(world), "--threads", "1", "--steps", str(args.steps),
               "--batch-size", "1", "--dim", "64", "--depth", "2", "--heads", "4",
               "--eval-every", str(args.steps), "--eval-batches", "1",
               "--checkpoint-every", str(args.steps), "--quiet", "--plan", plan, "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=args.timeout_s)
    wall = time.perf_counter() - start
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    return {"forms": record["forms"], "train_s": record["wall_s"], "command_s": wall,
            "test": record["test"], "steps": record["steps"]}


def compare(mixer: str, world: int, args, scratch: Path) -> dict:
    runs = {plan: [] for plan in PLANS}
    for round_ in range(args.rounds):
        order = PLANS if round_ % 2 == 0 else PLANS[::-1]
        for plan in order:
            out = scratch / f"{mixer}-p{world}-{plan}-{round_}"
            runs[plan].append(train_once(mixer, world, plan, args, out))
    train = {plan: statistics.median(r["train_s"] for r in runs[plan]) for plan in PLANS}
    overhead = {plan: statistics.median(r["command_s"] - r["train_s"] for r in runs[plan]) for plan in PLANS}
    return {"mixer": mixer, "world": world, "context": args.context, "steps": args.steps,
            "forms": {plan: runs[plan][0]["forms"] for plan in PLANS},
            "train_s": train, "bytes_over_time": train["bytes"] / train["time"],
            "calibration_s": overhead["time"] - overhead["bytes"],
            "tests_agree": all(_same_metrics(r["test"], runs["bytes"][0]["test"])
                               for plan in PLANS for r in runs[plan]),
            "runs": runs}


def _same_metrics(a: dict, b: dict) -> bool:
    """The same test metrics up to float32 rounding (the forms sum in different orders)."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6) for k in a)


def markdown_text(record: dict) -> str:
    a = record["config"]
    lines = ["# `longmix train --plan time` against the plan by bytes", "",
             *provenance_lines(record), "",
             f"A causal LM on mqar_all (dim 64, depth 2, 4 heads, batch 1, fp32, one thread per rank), "
             f"context {a['context']:,}, {a['steps']} steps; median of {a['rounds']} commands per "
             "plan, alternating. Training wall: the steps, one validation and one checkpoint.", "",
             "| mixer | P | forms by bytes | forms by time | train s, bytes | train s, time | "
             "bytes / time | calibration s | same test metric |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['mixer']} | {r['world']} | {', '.join(r['forms']['bytes'])} | "
                     f"{', '.join(r['forms']['time'])} | {r['train_s']['bytes']:.2f} | "
                     f"{r['train_s']['time']:.2f} | {r['bytes_over_time']:.2f}x | "
                     f"{r['calibration_s']:.1f} | {'yes' if r['tests_agree'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=["linear", "s4d", "mamba", "local", "gated_deltanet"])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--context", type=int, default=16384)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=1200.0)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    record = {**run_record("plan_time_train.py", args, argv), "rows": []}
    with tempfile.TemporaryDirectory(prefix="plan_time_train-") as scratch:
        for world in args.ranks:
            for mixer in args.mixers:
                row = compare(mixer, world, args, Path(scratch))
                record["rows"].append(row)
                print(f"{mixer:15s} P={world} bytes {row['forms']['bytes']} {row['train_s']['bytes']:.2f} s, "
                      f"time {row['forms']['time']} {row['train_s']['time']:.2f} s: "
                      f"{row['bytes_over_time']:.2f}x; calibration {row['calibration_s']:.1f} s", flush=True)
    text = markdown_text(record)
    write_record(args.out_dir, "plan_time_train", record, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
