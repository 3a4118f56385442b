"""The longest prompt that prefills and generates in a fixed memory per process, on P ranks.

    python benchmarks/generate_max_prompt.py --mixers mamba --memory-mib 256 --start 16384 --resolution 32 --tag mamba
    python benchmarks/generate_max_prompt.py --mixers softmax --memory-mib 64 --resolution 16 --tag softmax

For each mixer and each P (``--ranks``): the model of ``benchmarks/generate_context.py`` (random
weights, fp32, dim 64, depth 2, 4 heads, vocabulary 257) generates ``--new-tokens`` tokens after
an L-token prompt with :func:`longmix.generate.generate`, split over P local ranks (zigzag,
``--threads`` torch threads per rank). The prompt *fits* when every rank's peak memory rise
during the call (prompt included: every rank holds all of it) is at most ``--memory-mib``:
measured as ``benchmarks/max_context.py`` measures a training step (``memory_slope.peak_rise``:
VmHWM reset after a short warm-up call, its rise over the resident set before), and searched the
same way (``max_context.longest_fitting``: L = ``--start`` x P doubled while it fits, then
bisection to 1/``--resolution`` of the last interval, in multiples of ``--multiple``). A rank
whose rise passes the cap is ended there by a watchdog (the point does not fit; it need not run
to its end). The ranks run with glibc's mmap threshold fixed (``--mmap-threshold``, 128 KiB,
set by ``longmix.machine.return_freed_memory`` as `longmix train --return-freed-memory` does): with glibc's default, a threshold that moves with the allocations seen, the same call's
peak RSS varied by +-30% from run to run (freed tensors kept on the heap or not); fixed, every
large tensor is mapped and unmapped, and the peak follows the live tensors (mamba: 257 MiB at
65,536 tokens, 193 at 49,152, 64 at 16,384, the same on repeats). Each point runs at most ``--point-cap-s`` seconds and each search ``--cap-s``; the
row says what stopped it: memory (the answer), time, or a failure.
Writes generate_max_prompt[_<tag>].{json,md} under ``--out-dir`` with machine, command, date and
commit, after every search.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from max_context import add_gains, longest_fitting  # noqa: E402  (the one search)
from longmix.bench.record import provenance_lines, run_record, write_record  # noqa: E402
from memory_slope import measure, peak_rise  # noqa: E402  (the one memory measurement)


def generate_worker(group, spec: dict) -> dict:
    """One generate call after a ``spec["length"]``-token prompt: this rank's peak memory rise."""
    import torch
    import torch.distributed as dist

    from generate_context import VOCAB, build
    from longmix.generate import generate

    from longmix.machine import return_freed_memory

    if spec["mmap_threshold"]:
        return_freed_memory(spec["mmap_threshold"])
    model = build(spec["mixer"], spec["dim"], spec["depth"], spec["heads"])
    # first calls compile (numba scans) and allocate lazily: not per token
    generate(model, torch.randint(1, VOCAB, (1, 64)), 3, group=group, layout=spec["layout"])

    def call():
        prompt = torch.randint(1, VOCAB, (1, spec["length"]), generator=torch.Generator().manual_seed(1))
        generate(model, prompt, spec["new_tokens"], group=group, layout=spec["layout"])

    memory, seconds = peak_rise(call, spec["cap_bytes"])
    return {"rank": dist.get_rank(group), "memory_bytes": memory, "time_s": seconds}


def search_row(mixer: str, world: int, args) -> dict:
    spec = {"mixer": mixer, "dim": args.dim, "depth": args.depth, "heads": args.heads,
            "layout": args.layout, "new_tokens": args.new_tokens, "threads": args.threads,
            "cap_bytes": args.memory_mib * 2 ** 20, "mmap_threshold": args.mmap_threshold}
    found = longest_fitting(
        lambda length, timeout: measure({**spec, "length": length}, world, timeout, worker=generate_worker),
        args.start * world, args.multiple, args.resolution, spec["cap_bytes"], args.cap_s, args.point_cap_s)
    return {"mixer": mixer, "world": world, "checkpoint": False, **found}


def markdown_text(record: dict) -> str:
    cfg, memory_mib = record["config"], record["config"]["memory_mib"]
    lines = [f"# Longest prompt that prefills and generates in {memory_mib} MiB per process", "",
             *provenance_lines(record), "",
             f"A prompt fits when every rank's peak memory rise during one `generate` call (the prompt, "
             f"the prefill, the cache, {cfg['new_tokens']} new tokens; random weights, fp32, dim "
             f"{cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}, layout {cfg['layout']}, "
             f"{cfg['threads']} thread(s) per rank) is at most {memory_mib} MiB. A point over the cap "
             "is ended there by a watchdog. glibc's mmap threshold in the ranks: "
             f"{cfg['mmap_threshold'] or 'default (moving)'}. Time caps: "
             f"{cfg['point_cap_s']:.0f} s per point, {cfg['cap_s']:.0f} s per search. The machine "
             "was shared with other jobs (timings are noisy; memory figures are sound).", "",
             f"| mixer | P | longest prompt in {memory_mib} MiB / process | vs 1 process "
             "(goal: 1.8x at 2, 3.4x at 4) | stopped by | points (length: MiB of the worst rank, "
             "or over) | seconds of the last fit |", "|" + "---|" * 7]
    for r in record["rows"]:
        pts = ", ".join(f"{p['length']:,}: " + (f"{p['memory_bytes'] / 2 ** 20:.0f}" if p["status"] == "ok"
                                                 else p["status"]) for p in r["points"])
        fit = [p["time_s"] for p in r["points"] if p["length"] == r["max_context"] and p["status"] == "ok"]
        gain = f"{r['vs_one_process']:.2f}x" if "vs_one_process" in r else "-"
        lines.append(f"| {r['mixer']} | {r['world']} | {r['max_context'] or '-':,} | {gain} | "
                     f"{r['stopped_by']} | {pts} | {f'{fit[0]:.1f}' if fit else '-'} |"
                     if r["max_context"] else
                     f"| {r['mixer']} | {r['world']} | - | - | {r['stopped_by']} | {pts} | - |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=["mamba", "softmax"])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--memory-mib", type=int, default=128, help="the memory per process")
    p.add_argument("--start", type=int, default=4096, help="the first prompt length tried, per rank")
    p.add_argument("--multiple", type=int, default=1024, help="lengths are multiples of this")
    p.add_argument("--resolution", type=int, default=8,
                   help="bisect to 1/resolution of the last doubling's interval")
    p.add_argument("--cap-s", type=float, default=300.0, help="time cap per search")
    p.add_argument("--point-cap-s", type=float, default=150.0, help="time cap per point")
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layout", default="zigzag", choices=["contiguous", "zigzag"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--mmap-threshold", type=int, default=128 * 1024,
                   help="glibc's mmap threshold for the ranks, bytes (0: glibc's moving default)")
    p.add_argument("--tag", default="", help="a suffix of the result files' names")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    for name in ("memory_mib", "start", "multiple", "resolution", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stem = "generate_max_prompt" + (f"_{args.tag}" if args.tag else "")
    record = {**run_record("generate_max_prompt.py", args, argv), "rows": []}
    for mixer in args.mixers:
        for world in args.ranks:
            row = search_row(mixer, world, args)
            record["rows"].append(row)
            add_gains(record["rows"])
            print(f"{mixer:8s} P={world}: {row['max_context']} (stopped by {row['stopped_by']}, "
                  f"{len(row['points'])} points: {[(p['length'], p['status']) for p in row['points']]})",
                  flush=True)
            write_record(args.out_dir, stem, record, markdown_text(record))
    print(markdown_text(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
