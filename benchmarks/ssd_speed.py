"""CPU speed of mamba2 and gated_deltanet next to mamba and linear: forward + backward of one mixer.

    python benchmarks/ssd_speed.py                         # L = 2^14, dim 64, heads 4, batch 1, causal
    python benchmarks/ssd_speed.py --lengths 4096 16384 --repeats 5
    python benchmarks/ssd_speed.py --threads 1             # one torch thread: ssd_speed_threads1.*

Each mixer is built causal at the same width and heads, with its default options (mamba2 chunks
the sequence in 64s, gated_deltanet by its key head dim: 32s at 16; mamba runs its fused CPU scan; linear its chunked
prefix sums), and one step is out = mixer(x); (out * g).sum().backward() on a fixed x and g. The
mixers are timed in turns (A B C D A B ...) so that load on a shared machine lands on all alike;
the median of ``--repeats`` timed steps after ``--warmup`` untimed rounds is reported, with each
mixer's time over mamba's (side by side in one run: the ratio is the figure to read). Writes
``ssd_speed.{json,md}`` (``ssd_speed_threads<N>.*`` with ``--threads N``) to ``--out-dir`` with the
machine, command, date and commit. On a loaded machine, more than one thread per process makes
every small batched matmul a parallel region that waits for a descheduled thread: the chunked
mixers (many small matmuls) suffer most, so compare at ``--threads 1`` too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from longmix import mixers
from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line


class Step:
    """Forward + backward of one causal mixer on one fixed input."""

    def __init__(self, name: str, length: int, dim: int, heads: int, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        self.mixer = mixers.build(name, dim, heads=heads, causal=True)
        self.x = torch.randn(batch, length, dim, requires_grad=True)
        self.grad = torch.randn(batch, length, dim)

    def seconds(self) -> float:
        start = time.perf_counter()
        (self.mixer(self.x) * self.grad).sum().backward()
        elapsed = time.perf_counter() - start
        self.mixer.zero_grad(set_to_none=True)
        self.x.grad = None
        return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2 ** 14])
    parser.add_argument("--mixers", nargs="+", default=["mamba2", "gated_deltanet", "mamba", "linear"])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = command_line("ssd_speed.py", argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    stem = "ssd_speed" if args.threads is None else f"ssd_speed_threads{args.threads}"
    rows = []
    for length in args.lengths:
        steps = [Step(name, length, args.dim, args.heads, args.batch) for name in args.mixers]
        times = [[] for _ in steps]
        for i in range(args.warmup + args.repeats):
            for step, own in zip(steps, times):
                elapsed = step.seconds()
                if i >= args.warmup:
                    own.append(elapsed)
        for name, own in zip(args.mixers, times):
            rows.append({"mixer": name, "length": length, "median_s": statistics.median(own), "times_s": own})
            print(f"{name:>15} L={length:<7} median {rows[-1]['median_s'] * 1e3:9.1f} ms  "
                  f"(steps: {', '.join(f'{t * 1e3:.1f}' for t in own)} ms)", flush=True)
    setting = {k: getattr(args, k) for k in ("dim", "heads", "batch", "warmup", "repeats")}
    setting["torch_threads"] = torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):
        setting["usable_cores"] = len(os.sched_getaffinity(0))
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": setting, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / f"{stem}.md", _markdown(record, args.mixers))
    return 0


def _markdown(record: dict, names: list[str]) -> str:
    by = {(r["mixer"], r["length"]): r["median_s"] for r in record["rows"]}
    lengths = sorted({r["length"] for r in record["rows"]})
    base = "mamba" if "mamba" in names else None
    head = ["L"] + [f"{m} (ms)" for m in names] + ([f"{m} / mamba" for m in names if m != base] if base else [])
    lines = ["# Forward + backward of one causal mixer on CPU, median seconds per step", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: {', '.join(f'{k} {v}' for k, v in record['setting'].items())}  ",
             "The machine was shared with other jobs: read the ratios (measured in turns), not the times.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for length in lengths:
        cells = [str(length)] + [f"{by[(m, length)] * 1e3:.1f}" for m in names]
        if base:
            cells += [f"{by[(m, length)] / by[(base, length)]:.2f}" for m in names if m != base]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
