"""The longest context whose LM training step fits in a fixed memory per process, on P ranks.

    python benchmarks/max_context.py --mixers mamba s4d --memory-mib 256 --cap-s 600

For each mixer, each P (``--ranks``, default 1 2 4) and with and without activation
checkpointing: the training step of ``benchmarks/memory_slope.py`` (a causal LM, dim 64, depth 2,
4 heads, fp32, batch 1; forward, loss, backward; each point a fresh launch of P ranks, in the
planned form of each layer unless ``--form``; glibc's mmap threshold fixed, as ``longmix train
--return-freed-memory`` does) at context L *fits* when every rank's peak memory
rise during the step (VmHWM reset before it, over the resident set before it: activations,
gradients and workspace, not weights or the interpreter) is at most ``--memory-mib``. The memory
is enforced by measurement, not by a hard limit: a step that would not fit still runs to the end.

Search: L = ``--start`` x P, doubled while it fits; then bisection between the last fit and the
first miss down to 1/``--resolution`` of that interval's start (default 1/8), in multiples of
``--multiple`` tokens. Each search stops at the first of: its answer found, its time cap
(``--cap-s`` per mixer, shared evenly by its searches), or a failure; the row says which limit
stopped it, and its answer is the longest L measured to fit. Writes max_context[_<tag>].{json,md}
under ``--out-dir`` with machine, command, date and commit, after every search.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_slope import measure  # noqa: E402  (the one measured training step)

DEFAULT_MIXERS = ["mamba", "s4d", "hyena", "softmax"]


def search(spec: dict, world: int, args, cap_s: float) -> dict:
    """Doubling then bisection of the context on ``world`` ranks; the points measured."""
    return longest_fitting(lambda length, timeout: measure({**spec, "length": length}, world, timeout),
                           args.start * world, args.multiple, args.resolution,
                           args.memory_mib * 2 ** 20, cap_s)


def longest_fitting(measure_at, start: int, multiple: int, resolution: int, limit_bytes: float,
                    cap_s: float, point_cap_s: float | None = None) -> dict:
    """The longest length whose point fits in ``limit_bytes``: ``start``, doubled while it fits,
    then bisection between the last fit and the first miss down to 1/``resolution`` of that
    interval, in multiples of ``multiple``. ``measure_at(length, timeout)`` returns a point of
    :func:`memory_slope.measure` (status "ok" with memory_bytes, "over the cap", or a failure).
    Stops at the answer ("memory"), at ``cap_s`` seconds or a point that ran past
    ``point_cap_s`` ("time"), or at a failure; returns {"stopped_by", "max_context" (the
    longest length measured to fit), "points"}."""
    deadline = time.monotonic() + cap_s
    points = []
    timed_out = []

    def fits(length: int) -> bool | None:
        remaining = deadline - time.monotonic()
        if remaining < 5:
            return None
        point = measure_at(length, remaining if point_cap_s is None else min(remaining, point_cap_s))
        points.append({"length": length, **{k: point.get(k) for k in
                                            ("status", "memory_bytes", "time_s", "error")}})
        if point["status"] == "over the cap":
            return False
        if point["status"] == "timed out":
            timed_out.append(length)
        if point["status"] != "ok":
            return None
        return point["memory_bytes"] <= limit_bytes

    def result(stopped_by: str, best: int | None) -> dict:
        return {"stopped_by": stopped_by, "max_context": best, "points": points}

    def stopped() -> str:
        if timed_out and point_cap_s is not None and time.monotonic() < deadline - 5:
            return f"time (a point over {point_cap_s:.0f} s)"
        return "time" if timed_out or time.monotonic() >= deadline - 5 else "failure"

    best, length = None, start
    while True:
        ok = fits(length)
        if ok is None:
            return result(stopped(), best)
        if not ok:
            break
        best, length = length, 2 * length
    if best is None:
        return result("memory (the start does not fit)", None)
    lo, hi = best, length
    step = max(multiple, (hi - lo) // resolution)
    while hi - lo > step:
        mid = (lo + hi) // 2 // multiple * multiple
        ok = fits(mid)
        if ok is None:
            return result(stopped(), lo)
        lo, hi = (mid, hi) if ok else (lo, mid)
    return result("memory", lo)


def add_gains(rows: list[dict], is_base=lambda r: r["world"] == 1) -> None:
    """Each row's answer against one process's (same mixer and checkpointing); ``is_base`` picks
    the one-process rows (hf_context: transformers alone, not longmix on one rank)."""
    one = {(r["mixer"], r["checkpoint"]): r["max_context"] for r in rows if is_base(r)}
    for r in rows:
        base = one.get((r["mixer"], r["checkpoint"]))
        if base and r["max_context"]:
            r["vs_one_process"] = r["max_context"] / base
        no_ckpt = next((o["max_context"] for o in rows if o["mixer"] == r["mixer"]
                        and o["world"] == r["world"] and not o["checkpoint"]), None)
        if r["checkpoint"] and no_ckpt and r["max_context"]:
            r["vs_no_checkpoint"] = r["max_context"] / no_ckpt


def table(rows: list[dict], memory_mib: int) -> str:
    lines = [f"| mixer | P | checkpointing | longest context in {memory_mib} MiB / process | "
             "vs 1 process (goal: 1.8x at 2, 3.4x at 4) | vs no checkpointing | stopped by | "
             "points measured | seconds of the last fit | run |", "|" + "---|" * 10]
    for r in rows:
        fit = [p["time_s"] for p in r["points"] if p["length"] == r["max_context"]]
        gain = f"{r['vs_one_process']:.2f}x" if "vs_one_process" in r else "-"
        ck = f"{r['vs_no_checkpoint']:.2f}x" if "vs_no_checkpoint" in r else "-"
        lines.append(f"| {r['mixer']} | {r['world']} | {'yes' if r['checkpoint'] else 'no'} | "
                     f"{r['max_context'] or '-'} | {gain} | {ck} | {r['stopped_by']} | "
                     f"{len(r['points'])} | {f'{fit[0]:.3g}' if fit else '-'} | {r.get('run', 0)} |")
    return "\n".join(lines)


def merged_rows(records: list[dict]) -> list[dict]:
    """The rows of several runs, in order; a later search of the same mixer, P and checkpointing
    replaces an earlier one (a rerun with a longer time cap completes a search that stopped on
    time). Each row names the run it came from."""
    rows = {}
    for i, record in enumerate(records):
        for row in record["rows"]:
            rows[(row["mixer"], row["world"], row["checkpoint"])] = {
                **row, "run": i, "commit": record["provenance"]["git_describe"]}
    return list(rows.values())


def write_results(records: list[dict], out_dir: Path, stem: str) -> str:
    """``<stem>.json`` (the runs) and ``<stem>.md`` (one table of their merged rows)."""
    from longmix.fileio import atomic_write_text
    from longmix.machine import markdown

    rows = merged_rows(records)
    for r in rows:
        r.pop("vs_one_process", None), r.pop("vs_no_checkpoint", None)
    add_gains(rows)
    memory = {r["config"]["memory_mib"] for r in records}
    if len(memory) != 1:
        raise ValueError(f"runs of different --memory-mib cannot share a table: {sorted(memory)}")
    memory_mib = memory.pop()
    cfg = records[0]["config"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{stem}.json", json.dumps({"runs": records, "rows": rows}, indent=1) + "\n")
    runs = "\n".join(f"- run {i}: {r['date']}, commit {r['provenance']['git_describe']}, "
                      f"`{r['command']}`; {markdown(r['machine'])}" for i, r in enumerate(records))
    text = (f"# Longest LM training context in {memory_mib} MiB per process\n\n{runs}\n\n"
            f"A context fits when every rank's peak memory rise during one training step (forward, "
            f"loss, backward; dim {cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}, vocab "
            f"{cfg['vocab']}, fp32, batch 1) is at most {memory_mib} MiB. A later run's search of "
            f"the same mixer, P and checkpointing replaces an earlier one (column run). The machine "
            f"was shared with other jobs: time caps bind sooner than on an idle one.\n\n"
            + table(rows, memory_mib))
    atomic_write_text(out_dir / f"{stem}.md", text + "\n")
    return text


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS)
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--checkpointing", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    p.add_argument("--form", default=None, help="the form of every layer on P ranks (default: planned)")
    p.add_argument("--memory-mib", type=int, default=256, help="the memory per process")
    p.add_argument("--start", type=int, default=4096, help="the first context tried, per rank")
    p.add_argument("--multiple", type=int, default=256, help="contexts are multiples of this")
    p.add_argument("--resolution", type=int, default=8,
                   help="bisect to 1/resolution of the last doubling's interval")
    p.add_argument("--cap-s", type=float, default=600.0, help="time cap per mixer (all its searches)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--tag", default="", help="a suffix of the result files' names")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="measure nothing: write these result files' runs as one table")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    for name in ("memory_mib", "start", "multiple", "resolution"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from longmix.bench.record import run_record

    args = parse_args(argv)
    stem = "max_context" + (f"_{args.tag}" if args.tag else "")
    if args.merge:
        records = []
        for path in args.merge:
            data = json.loads(path.read_text())
            records += data["runs"] if "runs" in data else [data]
        print(write_results(records, args.out_dir, stem))
        return 0
    record = {**run_record("max_context.py", args, argv), "rows": []}
    for name in args.mixers:
        searches = [(w, c == "yes") for c in args.checkpointing for w in args.ranks]
        for world, checkpoint in searches:
            spec = {"dim": args.dim, "depth": args.depth, "heads": args.heads, "vocab": args.vocab,
                    "mixer": name, "form": args.form, "checkpoint": checkpoint}
            row = {"mixer": name, "world": world, "checkpoint": checkpoint,
                   **search(spec, world, args, args.cap_s / len(searches))}
            record["rows"].append(row)
            print(f"{name:8s} P={world} checkpoint={checkpoint}: {row['max_context']} "
                  f"(stopped by {row['stopped_by']}, {len(row['points'])} points)", flush=True)
            text = write_results([record], args.out_dir, stem)
    print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
