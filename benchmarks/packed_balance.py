"""Load balance of causal attention over packed documents, by layout (a simulation, no timing).

Packs documents with log-normal lengths (median ``--median``, a tail cut at the packed length)
into sequences of ``--packed-len`` tokens, and for each layout of ``longmix.parallel.packed_layout``
counts the causal-attention work (query-key pairs inside documents) and the rows each rank holds,
at each P. Reports max/mean over ranks, averaged over ``--packs`` random packs, and the worst pack.
Writes ``packed_balance.{json,md}`` to ``--out-dir`` with the command, date, commit and machine.

    python benchmarks/packed_balance.py
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.parallel.layout import document_zigzag
from longmix.parallel.packed_layout import (rows_per_rank, sequence_segments, work_cut_segments,
                                            work_per_rank)
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line

LAYOUTS = {
    "zigzag (whole sequence)": lambda b, p: sequence_segments(b, p, "zigzag"),
    "contiguous (whole sequence)": lambda b, p: sequence_segments(b, p, "contiguous"),
    "per-document zigzag": document_zigzag,
    "contiguous cut by work": work_cut_segments,
}


def pack(rng: random.Random, length: int, median: float, sigma: float) -> list[int]:
    """Document bounds [0, ..., length]: log-normal lengths, the last one cut to fit."""
    bounds = [0]
    while bounds[-1] < length:
        doc = max(1, round(rng.lognormvariate(math.log(median), sigma)))
        bounds.append(min(length, bounds[-1] + doc))
    return bounds


def imbalance(values: list[int]) -> float:
    return max(values) / (sum(values) / len(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packed-len", type=int, default=131072)
    parser.add_argument("--median", type=float, default=2048)
    parser.add_argument("--sigma", type=float, default=1.5, help="log-normal shape (tail weight)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--packs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = command_line("packed_balance.py", argv)
    rng = random.Random(args.seed)
    packs = [pack(rng, args.packed_len, args.median, args.sigma) for _ in range(args.packs)]
    docs = [b - a for bounds in packs for a, b in zip(bounds, bounds[1:])]
    rows = []
    for world in args.worlds:
        for name, layout in LAYOUTS.items():
            work, held, pieces = [], [], []
            for bounds in packs:
                segments = layout(bounds, world)
                work.append(imbalance(work_per_rank(bounds, segments)))
                held.append(imbalance(rows_per_rank(segments)))
                pieces.append(max(len(member) for member in segments))
            rows.append({"P": world, "layout": name, "work_mean": statistics.mean(work),
                         "work_worst": max(work), "rows_mean": statistics.mean(held),
                         "rows_worst": max(held), "pieces_mean": statistics.mean(pieces)})
            print(f"P={world} {name:>28}: work max/mean {rows[-1]['work_mean']:.3f} "
                  f"(worst {rows[-1]['work_worst']:.3f}), rows max/mean {rows[-1]['rows_mean']:.3f}",
                  flush=True)
    setting = {k: getattr(args, k) for k in ("packed_len", "median", "sigma", "worlds", "packs", "seed")}
    setting["documents"] = {"count": len(docs), "median": statistics.median(docs), "max": max(docs),
                            "per_pack_mean": len(docs) / len(packs)}
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": setting, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "packed_balance.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / "packed_balance.md", _markdown(record))
    return 0


def _markdown(record: dict) -> str:
    s = record["setting"]
    lines = ["# Causal attention over packed documents: load balance by layout", "",
             f"Simulation (arithmetic, no timing): {s['packs']} packs of {s['packed_len']} tokens, "
             f"log-normal document lengths (median {s['median']:g}, sigma {s['sigma']:g}, cut at the "
             f"packed length): {s['documents']['count']} documents, median "
             f"{s['documents']['median']:g}, longest {s['documents']['max']}. Work = query-key "
             "pairs inside documents (causal). max/mean over ranks, mean over packs (worst pack). "
             "Pieces: the most (start, length) segments one rank holds (kernel calls and "
             "bookkeeping grow with it), mean over packs.", "",
             "| P | layout | work max/mean | rows max/mean | pieces per rank |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['P']} | {r['layout']} | {r['work_mean']:.3f} ({r['work_worst']:.3f}) | "
                     f"{r['rows_mean']:.3f} ({r['rows_worst']:.3f}) | {r['pieces_mean']:.1f} |")
    lines += ["", f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
              f"Commit: {record['git_describe']} ({record['git_commit']})  ", "",
              markdown(record["machine"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
