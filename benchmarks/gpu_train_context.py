"""The longest context whose LM training step fits on one GPU, one process (part of gpu.sh).

    python benchmarks/gpu_train_context.py                     # softmax, mamba2, mamba LMs on cuda
    python benchmarks/gpu_train_context.py --device cpu --dim 16 --max-log2 10   # the logic, on CPU

For each mixer, the context doubles from ``--min-log2`` until a step (forward, cross entropy over
every position, backward, AdamW) runs out of GPU memory, takes longer than ``--step-cap-s``,
reaches ``--max-log2``, or the next point (its two steps, extrapolated from the last two points'
growth) would pass the mixer's ``--budget-s``; the record says which limit stopped it. The
budget lets every mixer have its turn inside a short GPU lease. Each point reports the step time
(after one untimed step) and the peak memory allocated. Random weights and tokens; sizes in the
records. Writes ``gpu_train_context.{json,md}`` to ``--out-dir`` with machine, command, date, commit.
"""
from __future__ import annotations

import argparse
import math
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longmix.fileio import atomic_write_text
from longmix.machine import describe
from longmix.models import ModelConfig, build_model
from longmix.provenance import provenance, utc_now

VOCAB = 256


def sync(device: torch.device) -> None:
    """Wait for the device, so that a timer reads the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_point(mixer: str, length: int, args, device: torch.device) -> dict:
    """One training step at ``length``: its time and peak memory, or why it failed."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=VOCAB, mixer=mixer, head="lm", dim=args.dim,
                                    depth=args.depth, heads=args.heads)).to(device, args.dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(VOCAB, (1, length + 1), device=device)

    def step():
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        step()  # warm-up: kernels chosen, optimizer state allocated
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        seconds = time.perf_counter() - start
    except torch.OutOfMemoryError:
        return {"mixer": mixer, "length": length, "status": "out of memory"}
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"mixer": mixer, "length": length, "status": "ok", "step_s": seconds,
            "tokens_per_s": length / seconds, "peak_bytes": peak}


def next_point_s(walls: list[float]) -> float:
    """The wall time the next doubling should take: the last point's, times the growth of the
    last two (between 2x, linear cost, and 4x, quadratic; 4x when there is one point)."""
    growth = 4.0 if len(walls) < 2 else min(4.0, max(2.0, walls[-1] / walls[-2]))
    return walls[-1] * growth


def search(mixer: str, args, device: torch.device, points: list[dict], save) -> None:
    """Double the context for ``mixer``, appending to ``points`` and saving after each one (a
    timeout of the whole script keeps what was measured)."""
    first, walls, spent = len(points), [], 0.0
    for log2 in range(args.min_log2, args.max_log2 + 1):
        if walls and spent + next_point_s(walls) > args.budget_s:
            points[-1]["stopped_by"] = (f"the next point (~{next_point_s(walls):.0f} s) would pass "
                                        f"the mixer's budget of {args.budget_s:g} s")
            break
        start = time.perf_counter()
        point = step_point(mixer, 2**log2, args, device)
        walls.append(time.perf_counter() - start)
        spent += walls[-1]
        points.append(point)
        save()
        print(json.dumps(point), flush=True)
        if point["status"] != "ok":
            break
        if point["step_s"] > args.step_cap_s:
            point["stopped_by"] = f"step time over {args.step_cap_s:g} s"
            break
    else:
        points[-1]["stopped_by"] = f"--max-log2 {args.max_log2}"
    if points[-1]["status"] != "ok" and len(points) > first:
        points[-1]["stopped_by"] = "GPU memory"
    save()


def markdown(record: dict) -> str:
    a = record["args"]
    lines = [f"# LM training step at growing context, one process on {record['machine'].get('gpu')}",
             "", f"command: `{record['command']}`  ", f"date: {record['date']}, commit "
             f"{record['git_describe']}  ",
             f"model: dim {a['dim']}, depth {a['depth']}, heads {a['heads']}, {a['dtype']}, batch 1, "
             f"vocab {VOCAB}, random weights and tokens", "",
             "| mixer | L | step s | tokens/s | peak GiB | stopped by |", "|---|---|---|---|---|---|"]
    for p in record["points"]:
        if p["status"] == "ok":
            peak = f"{p['peak_bytes'] / 2**30:.2f}" if p["peak_bytes"] else "n/a"
            lines.append(f"| {p['mixer']} | {p['length']:,} | {p['step_s']:.3f} | "
                         f"{p['tokens_per_s']:,.0f} | {peak} | {p.get('stopped_by', '')} |")
        else:
            lines.append(f"| {p['mixer']} | {p['length']:,} | {p['status']} | | | {p.get('stopped_by', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", nargs="+", default=["softmax", "mamba2", "mamba"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--min-log2", type=int, default=12)
    parser.add_argument("--max-log2", type=int, default=20)
    parser.add_argument("--step-cap-s", type=float, default=20.0)
    parser.add_argument("--budget-s", type=float, default=math.inf,
                        help="wall-time budget per mixer, warm-up steps and model builds included")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/gpu"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_train_context: no CUDA device visible to torch; use --device cpu to check the "
              "logic", file=sys.stderr)
        return 3
    args.dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    return run_searches("gpu_train_context", args, device, search, markdown)


def run_searches(stem: str, args, device: torch.device, search, markdown) -> int:
    """``search(mixer, args, device, points, save)`` for each of ``args.mixers``, the record
    (points, arguments, command, machine, date, commit) saved as ``stem.{json,md}`` in
    ``args.out_dir`` after every point; prints the table. Shared with ``gpu_forward.py``."""
    points: list[dict] = []
    record = {"points": points, "args": {**vars(args), "dtype": str(args.dtype), "out_dir": str(args.out_dir)},
              "command": shlex.join(["python", *sys.argv]), "machine": describe(str(device)),
              "date": utc_now(), **provenance()}
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def save():
        atomic_write_text(args.out_dir / f"{stem}.json", json.dumps(record, indent=2))
        atomic_write_text(args.out_dir / f"{stem}.md", markdown(record))

    for mixer in args.mixers:
        search(mixer, args, device, points, save)
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
