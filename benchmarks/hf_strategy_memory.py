"""Memory per rank of one step of hf_context's Llama, by longmix attention strategy.

    python benchmarks/hf_strategy_memory.py --lengths 16384 32768 --ranks 2 4 --mode prefill

The same model, step and measurement as ``benchmarks/hf_context.py`` (its ``hf_worker``: the
peak resident-set rise of one step on each rank, glibc's mmap threshold fixed), at fixed lengths
instead of a search: transformers on one process, and ``longmix.hf.parallelize(strategy=S)`` on
P ranks for each ``--strategies`` S. Which strategy holds the least memory per rank at a given
length decides how far a fixed memory reaches (docs/hf.md). Writes hf_strategy_memory[_<tag>]
.{json,md} under ``--out-dir`` with machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_context import VOCAB, hf_worker  # noqa: E402  (the model and the step)
from longmix.bench.record import provenance_lines, run_record, write_record  # noqa: E402
from memory_slope import measure  # noqa: E402  (the one memory measurement)


def markdown_text(record: dict) -> str:
    cfg = record["config"]
    lines = [f"# Memory per rank by attention strategy: hf_context's Llama, {cfg['mode']}", "",
             *provenance_lines(record), "",
             f"One {cfg['mode']} step (prefill: a forward without gradients; train: forward, LM "
             f"loss, backward) of a random LlamaForCausalLM (hidden {cfg['hidden']}, "
             f"{cfg['layers']} layers, 4 query / 2 K/V heads, vocabulary {VOCAB}, float32, batch 1), "
             "peak resident-set rise per rank (benchmarks/hf_context.py's worker, glibc's mmap "
             "threshold fixed). The machine was shared with other jobs (memory figures are sound, "
             "times noisy).", "",
             "| run | strategy | P | L (global) | MiB per rank | worst rank MiB | s |", "|" + "---|" * 7]
    for r in record["rows"]:
        mem = ", ".join(f"{b / 2 ** 20:.1f}" for b in r.get("by_rank") or []) or r["status"]
        worst = f"{r['memory_bytes'] / 2 ** 20:.1f}" if r.get("memory_bytes") else "-"
        secs = f"{r['time_s']:.1f}" if r.get("time_s") else "-"
        lines.append(f"| {r['tool']} | {r['strategy']} | {r['world']} | {r['length']:,} | {mem} | "
                     f"{worst} | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[16384, 32768])
    p.add_argument("--ranks", nargs="+", type=int, default=[2, 4])
    p.add_argument("--strategies", nargs="+", default=["shuffle", "ring"],
                   choices=["auto", "shuffle", "ring", "hybrid"])
    p.add_argument("--mode", default="prefill", choices=["prefill", "train"])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--timeout-s", type=float, default=300.0, help="per point")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if min(args.lengths + args.ranks) < 1:
        p.error("--lengths and --ranks must be >= 1")
    stem = "hf_strategy_memory" + (f"_{args.tag}" if args.tag else "")
    record = {**run_record("hf_strategy_memory.py", args, argv), "rows": []}
    spec = {"model": "llama", "mode": args.mode, "hidden": args.hidden, "layers": args.layers,
            "threads": args.threads, "cap_bytes": None}
    runs = [("transformers", "-", 1)] + [("longmix", s, w) for w in args.ranks for s in args.strategies]
    for length in args.lengths:
        for tool, strategy, world in runs:
            point = measure({**spec, "tool": tool, "strategy": strategy, "length": length}, world,
                            args.timeout_s, worker=hf_worker)
            record["rows"].append({"tool": tool, "strategy": strategy, "world": world,
                                   "length": length, **point})
            print(tool, strategy, world, length, point["status"], point.get("by_rank"), flush=True)
            write_record(args.out_dir, stem, record, markdown_text(record))
    print(markdown_text(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
