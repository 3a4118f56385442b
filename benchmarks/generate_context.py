"""Long-context generation: prefill time, decode rate, peak memory and cache bytes per rank.

    python benchmarks/generate_context.py                       # L = 2^12, 2^14, 2^16; 1 and 2 ranks
    python benchmarks/generate_context.py --lengths 4096 --procs 1 2 4 --mixers mamba

A language model with RANDOM weights (seeded; the figures do not depend on what it learned) and
the byte vocabulary of the ``text`` task generates ``--new-tokens`` tokens greedily after an
L-token prompt with :func:`longmix.generate.generate`, the prompt split over P local ranks
(``run_local``, gloo; each rank gets cores / P threads, so P = 1 uses every core: the comparison
is at the same cores). Per (mixer, L, P): the prefill seconds (the slowest rank's), decode tokens
per second (the slowest rank's), each rank's peak resident memory during the call (reset just
before it, after a short warm-up call; also less the resident memory before the call, which
holds torch itself) and cache bytes, with the bytes the formula ``expected_cache_bytes`` predicts.
Writes ``generate_context[_<tag>].{json,md}`` to ``--out-dir`` with the machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line

VOCAB = 257  # the text task's bytes + pad


def build(mixer: str, dim: int, depth: int, heads: int):
    from longmix.models import build_model

    torch.manual_seed(0)
    return build_model(vocab_size=VOCAB, mixer=mixer, head="lm", dim=dim, depth=depth,
                       heads=heads).eval()


def rank_worker(group, mixer, length, new_tokens, dim, depth, heads, layout) -> dict:
    import torch.distributed as dist

    from longmix import machine
    from longmix.generate import GenerationStats, expected_cache_bytes, generate

    model = build(mixer, dim, depth, heads)
    prompt = torch.randint(1, VOCAB, (1, length), generator=torch.Generator().manual_seed(1))
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    # warm-up on a short prompt: first calls compile (numba scans) and allocate lazily
    generate(model, prompt[:, :min(length, 64)], 3, group=group, layout=layout)
    machine.reset_peak_rss()
    base = machine.current_rss_bytes()
    stats = GenerationStats()
    tokens = generate(model, prompt, new_tokens, group=group, layout=layout, stats=stats)
    return dict(rank=rank, tokens=tokens[0].tolist(), prefill_s=stats.prefill_seconds,
                decode_tokens_per_s=stats.decode_tokens_per_second, cache_bytes=stats.cache_bytes,
                expected_cache_bytes=expected_cache_bytes(model, length, new_tokens, world, rank, layout),
                peak_rss_bytes=machine.peak_rss_bytes(), rss_before_bytes=base, forms=stats.forms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2 ** 12, 2 ** 14, 2 ** 16])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mixers", nargs="+", default=["softmax", "mamba"])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per rank (default: usable cores / P)")
    parser.add_argument("--layout", default="zigzag", choices=["contiguous", "zigzag"])
    parser.add_argument("--tag", default="", help="a suffix of the result files' names")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = command_line("generate_context.py", argv)
    from longmix.parallel.launch import run_local

    rows = []
    for mixer in args.mixers:
        for length in args.lengths:
            tokens_by_p = {}
            for procs in sorted(args.procs):  # P = 1 first: the others compare with it
                ranks = run_local(rank_worker, procs, (mixer, length, args.new_tokens, args.dim,
                                                       args.depth, args.heads, args.layout),
                                  timeout=3600, collective_timeout=1800,
                                  threads_per_rank=args.threads)
                tokens_by_p[procs] = ranks[0]["tokens"]
                row = {"mixer": mixer, "length": length, "procs": procs, "forms": ranks[0]["forms"],
                       "prefill_s": max(r["prefill_s"] for r in ranks),
                       "decode_tokens_per_s": min(r["decode_tokens_per_s"] for r in ranks),
                       "peak_rss_mib": [r["peak_rss_bytes"] / 2 ** 20 for r in ranks],
                       "rss_before_mib": [r["rss_before_bytes"] / 2 ** 20 for r in ranks],
                       "cache_bytes": [r["cache_bytes"] for r in ranks],
                       "expected_cache_bytes": [r["expected_cache_bytes"] for r in ranks],
                       # None: no 1-process run to compare with (not run, or not yet)
                       "same_tokens_as_1_rank": (None if 1 not in tokens_by_p
                                                 else tokens_by_p[1] == ranks[0]["tokens"])}
                rows.append(row)
                print(f"{mixer:>8} L={length:<8} P={procs} prefill {row['prefill_s']:8.2f} s  decode "
                      f"{row['decode_tokens_per_s']:7.1f} tok/s  peak MiB {[round(m) for m in row['peak_rss_mib']]}"
                      f"  cache bytes {row['cache_bytes']}", flush=True)
    setting = {k: getattr(args, k) for k in ("new_tokens", "dim", "depth", "heads", "layout", "threads")}
    setting["weights"] = "random (seed 0), float32, vocabulary 257"
    if hasattr(os, "sched_getaffinity"):
        setting["usable_cores"] = len(os.sched_getaffinity(0))
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "setting": setting, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "generate_context" + (f"_{args.tag}" if args.tag else "")
    atomic_write_text(args.out_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / f"{stem}.md", _markdown(record))
    return 0


def _markdown(record: dict) -> str:
    head = ["mixer", "L", "P", "prefill (s)", "decode (tok/s)", "peak RSS per rank (MiB)",
            "peak - RSS before (MiB)",
            "cache bytes per rank", "= formula", "tokens = 1 rank's"]
    lines = ["# Generation after a long prompt: prefill, decode, memory per rank", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['git_describe']} ({record['git_commit']}), "
             f"diff sha256 {record['git_diff_sha256']}  ",
             f"Setting: {', '.join(f'{k} {v}' for k, v in record['setting'].items())}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["rows"]:
        cells = [r["mixer"], f"{r['length']:,}", str(r["procs"]), f"{r['prefill_s']:.2f}",
                 f"{r['decode_tokens_per_s']:.1f}", ", ".join(f"{m:.0f}" for m in r["peak_rss_mib"]),
                 ", ".join(f"{m - b:.0f}" for m, b in zip(r["peak_rss_mib"], r["rss_before_mib"])),
                 ", ".join(f"{b:,}" for b in r["cache_bytes"]),
                 "yes" if r["cache_bytes"] == r["expected_cache_bytes"] else "NO",
                 {True: "yes", False: "NO", None: "not run"}[r["same_tokens_as_1_rank"]]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
