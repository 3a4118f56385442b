"""Training-step time of mamba next to s4d: forward + backward of the same language model.

    python benchmarks/mamba_step.py                       # C = 512, dim 64, depth 2, batch 16
    python benchmarks/mamba_step.py --lengths 256 512 --repeats 5

Both mixers sit in the same model (``longmix.models``, "lm" head, byte vocabulary) with the same
width, depth and batch, so the ratio mamba / s4d is the cost of the selective scan relative to an
FFT convolution. Each step is a forward pass, a cross-entropy loss and a backward pass; the
median of ``--repeats`` timed steps after ``--warmup`` untimed ones is reported. Writes
``mamba_step.{json,md}`` to ``--out-dir`` with the machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.models import ModelConfig, build_model
from longmix.provenance import provenance, utc_now

VOCAB = 256


def step_seconds(mixer: str, length: int, dim: int, depth: int, batch: int, warmup: int,
                 repeats: int, mixer_options: dict | None = None, seed: int = 0) -> list[float]:
    """Wall-clock seconds of ``repeats`` forward+backward steps of an LM with ``mixer``."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(vocab_size=VOCAB, mixer=mixer, head="lm", dim=dim, depth=depth,
                                    mixer_options=mixer_options or {}))
    tokens = torch.randint(VOCAB, (batch, length + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        logits = model(inputs)
        F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512])
    parser.add_argument("--mixers", nargs="+", default=["mamba", "s4d"])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="mamba's scan chunk (default: the mixer's own default)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/mamba_step.py"] + (sys.argv[1:] if argv is None else argv))

    rows = []
    for length in args.lengths:
        for mixer in args.mixers:
            options = {"chunk_size": args.chunk_size} if mixer == "mamba" and args.chunk_size else {}
            times = step_seconds(mixer, length, args.dim, args.depth, args.batch, args.warmup, args.repeats,
                                 options)
            rows.append({"mixer": mixer, "length": length, "median_s": statistics.median(times),
                         "times_s": times})
            print(f"{mixer:>8} C={length:<6} median {rows[-1]['median_s'] * 1e3:8.1f} ms  "
                  f"(steps: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms)", flush=True)

    setting = {k: getattr(args, k) for k in ("dim", "depth", "batch", "warmup", "repeats", "chunk_size")}
    setting["torch_threads"] = torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):  # cores this process may run on (taskset), not the machine's
        setting["usable_cores"] = len(os.sched_getaffinity(0))
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": setting, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "mamba_step.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / "mamba_step.md", _markdown(record, args.mixers))
    return 0


def _markdown(record: dict, mixers: list[str]) -> str:
    by = {(r["mixer"], r["length"]): r["median_s"] for r in record["rows"]}
    lengths = sorted({r["length"] for r in record["rows"]})
    ratio = len(mixers) == 2
    head = ["C"] + [f"{m} (ms)" for m in mixers] + ([f"{mixers[0]} / {mixers[1]}"] if ratio else [])
    lines = ["# Training step: forward + backward of an LM, median seconds per step", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), "
             f"diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: {', '.join(f'{k} {v}' for k, v in record['setting'].items())}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for length in lengths:
        cells = [str(length)] + [f"{by[(m, length)] * 1e3:.1f}" for m in mixers]
        if ratio:
            cells.append(f"{by[(mixers[0], length)] / by[(mixers[1], length)]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
