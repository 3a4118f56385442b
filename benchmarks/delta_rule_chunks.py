"""Which chunk size makes the chunked gated delta rule fastest on CPU: forward + backward of the op.

    python benchmarks/delta_rule_chunks.py                 # key dims 16, 64, 128; chunks 16..128
    python benchmarks/delta_rule_chunks.py --length 4096 --chunks 32 64

Within a chunk the WY/UT form costs O(chunk^2 (K + V)) per chunk (the decay mask, the UT
system and its triangular solve), across chunks one (K, K) @ (K, V) step per chunk: the best
chunk grows with the head dims. For each key dim K (V = K, heads = --width / K), the op
``gated_delta_rule`` runs out = f(q, k, v, g, beta); (out * w).sum().backward() at each chunk size,
in turns (A B C ... A B C) so that load on a shared machine lands on all alike; the median of
``--repeats`` steps after one untimed round, and each time over the best one at that K. One torch
thread. Writes ``delta_rule_chunks.{json,md}`` to ``--out-dir`` with machine, command, date, commit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.ops.delta_rule import gated_delta_rule
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line


def inputs(length: int, heads: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = (F.normalize(torch.randn(1, length, heads, dim, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(1, length, heads, dim, generator=g)
    gate = -torch.rand(1, length, heads, generator=g)
    beta = torch.rand(1, length, heads, generator=g)
    args = [t.requires_grad_() for t in (q, k, v, gate, beta)]
    return args, torch.randn(1, length, heads, dim, generator=g)


def step_seconds(args, weight, chunk_size: int) -> float:
    start = time.perf_counter()
    (gated_delta_rule(*args, chunk_size=chunk_size) * weight).sum().backward()
    elapsed = time.perf_counter() - start
    for t in args:
        t.grad = None
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2 ** 13)
    parser.add_argument("--key-dims", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--width", type=int, default=256, help="heads x key dim (at least one head)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = command_line("delta_rule_chunks.py", argv)
    torch.set_num_threads(1)
    rows = []
    for dim in args.key_dims:
        heads = max(1, args.width // dim)
        tensors, weight = inputs(args.length, heads, dim)
        times = {c: [] for c in args.chunks}
        for i in range(1 + args.repeats):
            for c in args.chunks:
                elapsed = step_seconds(tensors, weight, c)
                if i:
                    times[c].append(elapsed)
        best = min(statistics.median(t) for t in times.values())
        for c, own in times.items():
            rows.append({"key_dim": dim, "heads": heads, "chunk_size": c, "median_s": statistics.median(own),
                         "vs_best": statistics.median(own) / best, "times_s": own})
            print(f"K=V={dim:<4} heads {heads:<3} chunk {c:<4} median {rows[-1]['median_s'] * 1e3:8.1f} ms "
                  f"({rows[-1]['vs_best']:.2f} x best)", flush=True)
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": {"length": args.length, "width": args.width, "repeats": args.repeats, "torch_threads": 1,
                          "dtype": "float32"}, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "delta_rule_chunks.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / "delta_rule_chunks.md", _markdown(record, args.chunks))
    return 0


def _markdown(record: dict, chunks: list[int]) -> str:
    by = {(r["key_dim"], r["chunk_size"]): r for r in record["rows"]}
    dims = sorted({r["key_dim"] for r in record["rows"]})
    head = ["K = V", "heads"] + [f"chunk {c} (ms)" for c in chunks] + ["best chunk"]
    lines = ["# gated_delta_rule forward + backward on CPU by chunk size, median ms per step", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: {', '.join(f'{k} {v}' for k, v in record['setting'].items())}  ",
             "The machine was shared with other jobs: read the times within a row (measured in turns), "
             "not across runs.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dim in dims:
        cells = [by[(dim, c)] for c in chunks]
        best = min(cells, key=lambda r: r["median_s"])
        lines.append("| " + " | ".join([str(dim), str(cells[0]["heads"])]
                                       + [f"{r['median_s'] * 1e3:.1f} ({r['vs_best']:.2f}x)" for r in cells]
                                       + [str(best["chunk_size"])]) + " |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
