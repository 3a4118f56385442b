"""One causal mixer layer's forward at up to 2^20 tokens on one GPU, checked against float64.

    python benchmarks/gpu_forward.py                      # mamba2, gated_deltanet, softmax, mamba on cuda
    python benchmarks/gpu_forward.py --device cpu --dim 16 --heads 2 --max-log2 10   # the logic

For each mixer, L doubles from ``--min-log2`` to ``--max-log2`` (or until the GPU's memory, the
mixer's ``--budget-s`` or ``--step-cap-s`` stops it). Each point is one timed forward after an
untimed one, with no gradient, in ``--dtype``, and reports the time, tokens/s and the peak memory
allocated. The check: the mixers are causal, so the first ``--check-len`` rows of the output at any
L equal the layer's float64 forward over those tokens alone; the relative error of those rows is
recorded at every L. It checks the chunked kernels in this dtype on this device; it cannot see an
error that only rows past ``--check-len`` carry. Random weights and inputs; sizes in the records.
Writes ``gpu_forward.{json,md}`` to ``--out-dir`` with machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from longmix import mixers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train_context import next_point_s, run_searches, sync  # noqa: E402  (one budget rule, one record)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def forward_point(layer, x: torch.Tensor, reference: torch.Tensor, check_len: int) -> dict:
    """Time one forward of ``layer`` on ``x`` and compare its first rows with ``reference``."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        with torch.no_grad():
            layer(x)  # warm-up: kernels chosen and compiled
            sync(device)
            start = time.perf_counter()
            out = layer(x)
            sync(device)
            seconds = time.perf_counter() - start
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    rows = out[:, :check_len].double().cpu()
    err = float((rows - reference).norm() / reference.norm())
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"status": "ok", "forward_s": seconds, "tokens_per_s": x.shape[1] / seconds,
            "peak_bytes": peak, "rel_err_first_rows": err}


def search(name: str, args, device: torch.device, points: list[dict], save) -> None:
    torch.manual_seed(0)
    layer64 = mixers.build(name, dim=args.dim, heads=args.heads, causal=True,
                           max_len=2**args.max_log2).double()
    x_all = torch.randn(1, 2**args.max_log2, args.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = layer64(x_all[:, :args.check_len].double())
    layer = layer64.to(device, DTYPES[args.dtype])
    walls, spent = [], 0.0
    for log2 in range(args.min_log2, args.max_log2 + 1):
        if walls and spent + next_point_s(walls) > args.budget_s:
            points[-1]["stopped_by"] = (f"the next point (~{next_point_s(walls):.0f} s) would pass "
                                        f"the mixer's budget of {args.budget_s:g} s")
            break
        start = time.perf_counter()
        x = x_all[:, :2**log2].to(device, DTYPES[args.dtype])
        point = {"mixer": name, "length": 2**log2,
                 **forward_point(layer, x, reference, args.check_len)}
        del x
        walls.append(time.perf_counter() - start)
        spent += walls[-1]
        points.append(point)
        save()
        print(json.dumps(point), flush=True)
        if point["status"] != "ok":
            point["stopped_by"] = "GPU memory"
            break
        if point["forward_s"] > args.step_cap_s:
            point["stopped_by"] = f"forward over {args.step_cap_s:g} s"
            break
    else:
        points[-1]["stopped_by"] = f"--max-log2 {args.max_log2}"
    save()


def markdown(record: dict) -> str:
    a = record["args"]
    lines = [f"# One causal mixer layer's forward, one process on {record['machine'].get('gpu')}", "",
             f"command: `{record['command']}`  ", f"date: {record['date']}, commit "
             f"{record['git_describe']}  ",
             f"layer: dim {a['dim']}, heads {a['heads']}, {a['dtype']}, batch 1, no gradient, "
             f"random weights and inputs; error: the first {a['check_len']:,} rows against the "
             "layer's float64 forward over those tokens (causality makes them equal)", "",
             "| mixer | L | forward s | tokens/s | peak GiB | rel err, first rows | stopped by |",
             "|---|---|---|---|---|---|---|"]
    for p in record["points"]:
        if p["status"] == "ok":
            peak = f"{p['peak_bytes'] / 2**30:.2f}" if p["peak_bytes"] else "n/a"
            lines.append(f"| {p['mixer']} | {p['length']:,} | {p['forward_s']:.3f} | "
                         f"{p['tokens_per_s']:,.0f} | {peak} | {p['rel_err_first_rows']:.2e} | "
                         f"{p.get('stopped_by', '')} |")
        else:
            lines.append(f"| {p['mixer']} | {p['length']:,} | {p['status']} | | | | "
                         f"{p.get('stopped_by', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", nargs="+", default=["mamba2", "gated_deltanet", "softmax", "mamba"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--min-log2", type=int, default=14)
    parser.add_argument("--max-log2", type=int, default=20)
    parser.add_argument("--check-len", type=int, default=4096)
    parser.add_argument("--step-cap-s", type=float, default=30.0)
    parser.add_argument("--budget-s", type=float, default=math.inf,
                        help="wall-time budget per mixer, its warm-up forwards included")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/gpu"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_forward: no CUDA device visible to torch; use --device cpu to check the logic",
              file=sys.stderr)
        return 3
    if args.check_len > 2**args.min_log2:
        parser.error(f"argument --check-len: at most 2**--min-log2 = {2**args.min_log2}, "
                     f"got {args.check_len}")
    return run_searches("gpu_forward", args, device, search, markdown)


if __name__ == "__main__":
    sys.exit(main())
