"""The time cost of a fixed glibc mmap threshold (``longmix.machine.return_freed_memory``): one
process's LM training step with glibc's own malloc and with the threshold fixed, side by side.

    python benchmarks/malloc_cost.py --mixers hyena mamba --length 16384 --rounds 2

Each (mixer, setting) runs in a fresh interpreter, the settings alternating round by round so
that a shared machine's load falls on both alike: the model of ``benchmarks/memory_slope.py``
(dim 64, depth 2, 4 heads, vocab 256, fp32, batch 1), one warm-up step, then the median of
``--steps`` steps (forward, loss, backward), one torch thread. ``fixed+hugetlb`` also sets
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35: transparent huge pages for malloc's
mappings, fewer page faults). Writes malloc_cost.{json,md} under ``--out-dir`` with machine,
command, date and commit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {"default": {}, "fixed": {}, "fixed+hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}

_STEP = """
import sys, time, torch
from longmix.machine import return_freed_memory
from longmix.models.model import build_model
from longmix.train.loss import scored_targets, training_loss_sum
setting, mixer, length, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if setting != "default":
    assert return_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model(vocab_size=256, mixer=mixer, head="lm", dim=64, depth=2, heads=4)
tokens = torch.randint(0, 256, (1, length + 1))
x, y = tokens[:, :-1], scored_targets(tokens[:, 1:], "lm", pad_id=-1)
times = []
for _ in range(steps + 1):
    start = time.perf_counter()
    total, _ = training_loss_sum(model, x, y, "lm")
    (total / length).backward()
    times.append(time.perf_counter() - start)
print(min(times[1:]), sorted(times[1:])[len(times[1:]) // 2])
"""


def step_seconds(setting: str, mixer: str, length: int, steps: int) -> float:
    """The median step time of one fresh interpreter."""
    env = {**os.environ, **SETTINGS[setting], "OMP_NUM_THREADS": "1"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", _STEP, setting, mixer, str(length), str(steps)],
                         env=env, capture_output=True, text=True, check=True, timeout=1800).stdout
    return float(out.split()[1])


def main(argv=None) -> int:
    from longmix.bench.record import run_record, write_record
    from longmix.machine import markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=["hyena", "mamba"])
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    rows = []
    for mixer in args.mixers:
        seconds = {s: [] for s in args.settings}
        for _ in range(args.rounds):
            for setting in args.settings:
                seconds[setting].append(step_seconds(setting, mixer, args.length, args.steps))
        base = statistics.median(seconds[args.settings[0]])
        for setting in args.settings:
            median = statistics.median(seconds[setting])
            rows.append({"mixer": mixer, "setting": setting, "length": args.length,
                         "seconds": seconds[setting], "median_s": median, "vs_first": median / base})
            print(f"{mixer:8s} {setting:14s} {median:.3f} s/step ({median / base:.2f}x)", flush=True)
    run = {**run_record("malloc_cost.py", args, argv), "rows": rows}
    lines = ["# Step time with glibc's mmap threshold fixed (longmix.machine.return_freed_memory)", "",
             f"- {run['date']}, commit {run['provenance']['git_describe']}: `{run['command']}`; "
             f"{markdown(run['machine'])}", "",
             f"One process, L = {args.length}, one torch thread; median over {args.rounds} fresh "
             f"interpreters per setting (alternating) of each one's median of {args.steps} steps. "
             "The machine was shared with other jobs: compare settings within a mixer only.", "",
             f"| mixer | setting | s / step | vs {args.settings[0]} | each interpreter (s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mixer']} | {r['setting']} | {r['median_s']:.3f} | {r['vs_first']:.2f}x | "
                     + ", ".join(f"{s:.3f}" for s in r["seconds"]) + " |")
    write_record(args.out_dir, "malloc_cost", run, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
