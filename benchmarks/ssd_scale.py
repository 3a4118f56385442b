"""A 1M-token forward of mamba2 and gated_deltanet: one process, then 2 and 4 gloo ranks per form.

    python benchmarks/ssd_scale.py                          # L = 2^20, dim 64, heads 4, fp32
    python benchmarks/ssd_scale.py --length 65536 --ranks 2 # a smaller, quicker run

Each point is a fresh launch (``longmix.parallel.launch.run_local``) with ``--threads`` torch
threads per rank. P = 1 is the mixer itself on the whole sequence; P = 2, 4 run it through
``longmix.parallel.parallelize`` in each form it has ("state": state passing, "shuffle": by heads),
each rank holding its contiguous L / P rows. Every rank builds the same mixer (seed 0) and
generates only its own rows of one fixed input (drawn in blocks by seed, so that any rank can
draw any rows). Per rank: the forward's seconds, the peak resident set of the process (VmHWM)
and its rise during the forward over the resident set before (the forward's activations and
workspace), after a short warm-up forward that pays one-time costs (thread pools, gloo buffers).
The one-process output is kept in a file, and each rank of a multi-rank run compares all its rows
with it (memory-mapped): the max abs error over max |y|. Writes ``ssd_scale.{json,md}`` under
``--out-dir`` (``ssd_scale_<mixers>.*`` when ``--mixers`` is not the default pair, so that a
partial rerun keeps the full run's files) with machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

BLOCK = 2 ** 14  # rows of the input drawn per seed
DEFAULT_MIXERS = ["mamba2", "gated_deltanet"]


def input_rows(start: int, stop: int, dim: int, seed: int):
    """Rows [start, stop) of the fixed input (1, L, dim): block b of BLOCK rows comes from seed
    (seed, b), so a rank draws only the blocks its rows touch."""
    import torch

    blocks = []
    for b in range(start // BLOCK, -(-stop // BLOCK)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        blocks.append(torch.randn(BLOCK, dim, generator=g))
    first = (start // BLOCK) * BLOCK
    return torch.cat(blocks)[start - first:stop - first].unsqueeze(0) if blocks else torch.zeros(1, 0, dim)


def rank_worker(group, spec: dict) -> dict:
    """One forward of ``spec['mixer']`` on this rank's rows: time, memory, and the error of its
    rows against the one-process output (when ``spec['reference']`` names its file)."""
    import torch

    import longmix.parallel as ld
    from longmix import mixers
    from longmix.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    length, dim = spec["length"], spec["dim"]
    torch.manual_seed(0)
    mixer = mixers.build(spec["mixer"], dim, heads=spec["heads"], causal=True).eval()
    run = mixer if spec["form"] == "one process" else ld.parallelize(mixer, group, "contiguous", forms=spec["form"])
    (start, rows), = ld.segments(length, world, rank, "contiguous")
    with torch.no_grad():
        short = ld.local_length(64 * world, world, rank, "contiguous")
        run(torch.randn(1, short, dim))
        x = input_rows(start, start + rows, dim, spec["seed"])
        before = current_rss_bytes()
        reset_peak_rss()
        began = time.perf_counter()
        y = run(x)
        seconds = time.perf_counter() - began
        peak = peak_rss_bytes()
    result = {"rank": rank, "rows": rows, "time_s": seconds, "peak_rss_mb": peak / 2 ** 20,
              "peak_extra_mb": (peak - before) / 2 ** 20, "threads": torch.get_num_threads()}
    if spec.get("save"):
        torch.save(y, spec["save"])
    if spec.get("reference"):
        reference = torch.load(spec["reference"], mmap=True)
        mine = reference[:, start:start + rows]
        result["max_abs_error"] = (y - mine).abs().max().item() if rows else 0.0
        result["reference_max_abs"] = reference.abs().max().item()
    return result


def measure(spec: dict, world: int, threads: int, timeout: float) -> dict:
    from longmix.parallel.launch import RankFailure, run_local

    row = {k: v for k, v in spec.items() if k not in ("save", "reference")} | {"world": world}
    try:
        ranks = run_local(rank_worker, world, (spec,), timeout=timeout, collective_timeout=max(60.0, timeout),
                          threads_per_rank=threads)
    except RankFailure as exc:
        return {**row, "status": "failed", "error": exc.summary()}
    row.update(status="ok", time_s=max(r["time_s"] for r in ranks),
               peak_rss_mb=max(r["peak_rss_mb"] for r in ranks),
               peak_extra_mb=max(r["peak_extra_mb"] for r in ranks), ranks=ranks)
    if "max_abs_error" in ranks[0]:
        row["relative_error"] = max(r["max_abs_error"] for r in ranks) / ranks[0]["reference_max_abs"]
    return row


def fmt(x, spec="{:.3g}") -> str:
    return "-" if x is None else spec.format(x)


def markdown_text(record: dict) -> str:
    from longmix.machine import markdown

    cfg = record["config"]
    ranks = ", ".join(str(p) for p in [1] + cfg["ranks"])
    lines = [f"# {' and '.join(cfg['mixers'])}: forward at L = {cfg['length']} on {ranks} ranks", "",
             f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
             f"Commit: {record['provenance']['git_describe']} ({record['provenance']['git_commit']}), "
             f"diff sha256 {record['provenance']['git_diff_sha256']}  ",
             f"Setting: dim {cfg['dim']}, heads {cfg['heads']}, batch 1, float32, no grad, causal, "
             f"{cfg['threads']} torch thread(s) per rank, contiguous layout, each point a fresh launch  ",
             "The machine was shared with other jobs (~8 agents on 2 cores): times are noisy, and with "
             "more ranks than cores the ranks take turns; memory figures are sound. Time and memory are "
             "the max over ranks; error = max |y_P - y_1| / max |y_1| over all rows.", "",
             "| mixer | form | P | time (s) | peak RSS MB / rank | forward's rise MB / rank | rise vs P = 1 "
             "| error vs 1 process |", "|" + "---|" * 8]
    one = {r["mixer"]: r for r in record["rows"] if r["status"] == "ok" and r["world"] == 1}
    for r in record["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['mixer']} | {r['form']} | {r['world']} | {r['status']}: {r.get('error', '')} "
                         f"|||||")
            continue
        base = one.get(r["mixer"])
        ratio = r["peak_extra_mb"] / base["peak_extra_mb"] if base and base["peak_extra_mb"] > 0 else None
        lines.append(f"| {r['mixer']} | {r['form']} | {r['world']} | {fmt(r['time_s'])} | "
                     f"{fmt(r['peak_rss_mb'], '{:.0f}')} | {fmt(r['peak_extra_mb'], '{:.0f}')} | "
                     f"{fmt(ratio, '{:.2f}')} | {fmt(r.get('relative_error'), '{:.2e}')} |")
    if record["skipped"]:
        lines += ["", f"Skipped (over the {cfg['budget_s']:.0f} s budget): "
                  + ", ".join(f"{s['mixer']} {s['form']} P={s['world']}" for s in record["skipped"])]
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    from longmix.bench.record import run_record, write_record

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS)
    p.add_argument("--forms", nargs="+", default=["state", "shuffle"])
    p.add_argument("--ranks", nargs="+", type=int, default=[2, 4], help="multi-rank runs (P = 1 always runs)")
    p.add_argument("--length", type=int, default=2 ** 20)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=1200.0, help="total time; later points are skipped")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    started, rows, skipped = time.monotonic(), [], []
    base = dict(length=args.length, dim=args.dim, heads=args.heads, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="ssd_scale_") as scratch:
        for name in args.mixers:
            reference = str(Path(scratch) / f"{name}.pt")
            points = [("one process", 1)] + [(form, world) for form in args.forms for world in args.ranks]
            for form, world in points:
                remaining = args.budget_s - (time.monotonic() - started)
                spec = {**base, "mixer": name, "form": form}
                if remaining < 30 or (world > 1 and not Path(reference).exists()):
                    skipped.append({**spec, "world": world})
                    continue
                spec.update({"save": reference} if world == 1 else {"reference": reference})
                row = measure(spec, world, args.threads, timeout=remaining)
                rows.append(row)
                print(f"{name:15s} {form:11s} P={world}: {row['status']} {fmt(row.get('time_s'))} s, "
                      f"peak RSS {fmt(row.get('peak_rss_mb'), '{:.0f}')} MB, rise "
                      f"{fmt(row.get('peak_extra_mb'), '{:.0f}')} MB, error {fmt(row.get('relative_error'), '{:.2e}')}"
                      + (f" ({row['error']})" if row["status"] != "ok" else ""), flush=True)
    record = {**run_record("ssd_scale.py", args, argv), "rows": rows, "skipped": skipped}
    stem = "ssd_scale" + ("" if args.mixers == DEFAULT_MIXERS else "_" + "_".join(args.mixers))
    text = markdown_text(record)
    write_record(args.out_dir, stem, record, text)
    print(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
