"""Training-step time of mamba next to s4d: forward + backward of the same language model.

    python benchmarks/mamba_step.py                       # C = 512, dim 64, depth 2, batch 16
    python benchmarks/mamba_step.py --lengths 256 512 --repeats 5
    python benchmarks/mamba_step.py --scan-backends cpu torch   # mamba's scan both ways
    python benchmarks/mamba_step.py --score-last 32             # the study's loss: last 32 positions

Both mixers sit in the same model (``longmix.models``, "lm" head, byte vocabulary) with the same
width, depth and batch, so the ratio mamba / s4d is the cost of the selective scan relative to an
FFT convolution. ``--scan-backends`` times mamba once per backend of its selective scan (``cpu``:
the fused numba kernel, ``torch``: the loop of PyTorch ops), so the two ratios to s4d are
measured side by side.

Each step is a forward pass, a cross-entropy loss (over every position, or with ``--score-last N``
over the last N only, as the study trains its language tasks) and a backward pass. The variants'
steps are timed in turns (A B A B ...), so that load on a shared machine slows all of them alike; the
median of ``--repeats`` timed steps after ``--warmup`` untimed rounds is reported. Writes
``mamba_step[_last<N>].{json,md}`` to ``--out-dir`` with the machine, command, date and commit.
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
import torch.nn.functional as F

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.models import ModelConfig, build_model
from longmix.ops.scan import SCAN_BACKENDS
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line

VOCAB = 256


class TrainingStep:
    """A forward + backward step of an LM with ``mixer`` on one fixed batch."""

    def __init__(self, mixer: str, length: int, dim: int, depth: int, batch: int,
                 mixer_options: dict | None = None, seed: int = 0, score_last: int | None = None):
        torch.manual_seed(seed)
        self.scored = slice(None) if score_last is None else slice(-score_last, None)
        self.model = build_model(ModelConfig(vocab_size=VOCAB, mixer=mixer, head="lm", dim=dim, depth=depth,
                                             mixer_options=mixer_options or {}))
        tokens = torch.randint(VOCAB, (batch, length + 1))
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:]

    def seconds(self) -> float:
        start = time.perf_counter()
        logits = self.model(self.inputs)[:, self.scored]
        F.cross_entropy(logits.reshape(-1, VOCAB), self.targets[:, self.scored].reshape(-1)).backward()
        elapsed = time.perf_counter() - start
        self.model.zero_grad(set_to_none=True)
        return elapsed


def interleaved_seconds(steps: list[TrainingStep], warmup: int, repeats: int) -> list[list[float]]:
    """Per step, ``repeats`` timings taken in turns (A B A B ...) after ``warmup`` untimed rounds,
    so that a slow stretch of a shared machine lands on every variant alike, not on one."""
    times = [[] for _ in steps]
    for i in range(warmup + repeats):
        for step, own in zip(steps, times):
            elapsed = step.seconds()
            if i >= warmup:
                own.append(elapsed)
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
    parser.add_argument("--scan-backends", nargs="+", default=["auto"], choices=SCAN_BACKENDS,
                        help="mamba's selective-scan backends, one mamba row each")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="mamba's scan chunk (default: the mixer's own default)")
    parser.add_argument("--score-last", type=int, default=None,
                        help="the loss over the last N positions only (the study's language tasks: 32)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.score_last is not None and not 1 <= args.score_last <= min(args.lengths):
        parser.error(f"--score-last must be in [1, {min(args.lengths)}] (the shortest length), "
                     f"got {args.score_last}")
    command = command_line("mamba_step.py", argv)

    variants = [(mixer, backend) for mixer in args.mixers
                for backend in (args.scan_backends if mixer == "mamba" else [None])]
    labels = [_label(mixer, backend, args.scan_backends) for mixer, backend in variants]
    rows = []
    for length in args.lengths:
        steps = []
        for mixer, backend in variants:
            options = {"chunk_size": args.chunk_size} if mixer == "mamba" and args.chunk_size else {}
            if backend is not None:
                options["scan_backend"] = backend
            steps.append(TrainingStep(mixer, length, args.dim, args.depth, args.batch, options,
                                      score_last=args.score_last))
        for label, times in zip(labels, interleaved_seconds(steps, args.warmup, args.repeats)):
            rows.append({"mixer": label, "length": length, "median_s": statistics.median(times),
                         "times_s": times})
            print(f"{label:>18} C={length:<6} median {rows[-1]['median_s'] * 1e3:8.1f} ms  "
                  f"(steps: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms)", flush=True)

    setting = {k: getattr(args, k) for k in ("dim", "depth", "batch", "warmup", "repeats", "chunk_size",
                                             "scan_backends", "score_last")}
    setting["torch_threads"] = torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):  # cores this process may run on (taskset), not the machine's
        setting["usable_cores"] = len(os.sched_getaffinity(0))
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": setting, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "mamba_step" + ("" if args.score_last is None else f"_last{args.score_last}")  # its own files
    atomic_write_text(args.out_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / f"{stem}.md", _markdown(record, labels))
    return 0


def _label(mixer: str, backend: str | None, backends: list[str]) -> str:
    """"mamba" alone, "mamba (cpu scan)" when several backends are compared."""
    return mixer if backend is None or len(backends) == 1 else f"{mixer} ({backend} scan)"


def _markdown(record: dict, labels: list[str]) -> str:
    """One column per variant and, with s4d among them, each other variant's time over s4d's."""
    by = {(r["mixer"], r["length"]): r["median_s"] for r in record["rows"]}
    lengths = sorted({r["length"] for r in record["rows"]})
    others = [m for m in labels if m != "s4d"] if "s4d" in labels else []
    head = ["C"] + [f"{m} (ms)" for m in labels] + [f"{m} / s4d" for m in others]
    lines = ["# Training step: forward + backward of an LM, median seconds per step", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), "
             f"diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: {', '.join(f'{k} {v}' for k, v in record['setting'].items())}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for length in lengths:
        cells = [str(length)] + [f"{by[(m, length)] * 1e3:.1f}" for m in labels]
        cells += [f"{by[(m, length)] / by[('s4d', length)]:.2f}" for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
