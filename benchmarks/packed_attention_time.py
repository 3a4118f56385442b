"""Causal attention over packed documents across ranks, timed: per-rank busy time by layout.

``benchmarks/packed_balance.py`` counts the work each rank gets; this runs it. For each P, one
launch of P gloo ranks on this machine (one thread each) runs ``longmix.parallel.attention`` with
``cu_seqlens`` (forward + backward) on a skewed document mix (log-normal lengths, median
``--median``, a tail cut at the packed length), in the ring and the shuffle, over the layouts
``contiguous``, ``zigzag`` (whole sequence) and ``doc_zigzag`` (every document zigzagged), side by
side in the same launch.

Per rank: the CPU time of the calling thread over the call (``time.thread_time``: the attention
kernels and the bookkeeping around them; a rank waiting for a message sleeps and is not charged,
and gloo moves bytes on its own threads), and the wall time. Busy time is what a rank's share of
the work costs, independent of how many other processes share the cores; wall time on a shared
machine is not. Medians over ``--repeats`` calls after one warm-up call. Also: the work per rank
the layout predicts (query-key pairs inside documents, ``longmix.parallel.packed_layout``) and
the bytes each rank sent (``CommStats``) against the planner's prediction for the same attention
(``plan_model`` of a softmax mixer with these heads, ring or shuffle form).

    OMP_NUM_THREADS=1 python benchmarks/packed_attention_time.py
    python benchmarks/packed_attention_time.py --quick        # seconds: a smoke run

    python benchmarks/packed_attention_time.py --packed-len 32768 --median 512 --head-dim 16 \
        --packs 1 --repeats 2                                  # longer documents, fewer pieces

Writes ``packed_attention_time[_quick][_L<packed-len>].{json,md}`` (``_L`` when not the default
length) to ``--out-dir`` with command, date, commit and machine.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from packed_balance import pack

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.parallel.launch import run_local
from longmix.provenance import provenance, utc_now
from longmix.bench.record import command_line

LAYOUT_NAMES = ("contiguous", "zigzag", "doc_zigzag")
DEFAULT_PACKED_LEN = 8192
STRATEGY_NAMES = ("ring", "shuffle")


def rank_worker(group, packs, heads, head_dim, repeats):
    """Every (pack, strategy, layout): this rank's busy and wall seconds and bytes sent."""
    import torch

    import longmix.parallel as ld

    rows = []
    for p_i, bounds in enumerate(packs):
        cu = torch.tensor(bounds, dtype=torch.int64)
        g = torch.Generator().manual_seed(p_i)
        q, k, v, dout = torch.randn(4, 1, bounds[-1], heads, head_dim, generator=g)
        for strategy in STRATEGY_NAMES:
            for layout in LAYOUT_NAMES:
                local = [ld.shard(t, group, layout, cu_seqlens=cu) for t in (q, k, v)]
                grad = ld.shard(dout, group, layout, cu_seqlens=cu)
                busy, wall, sent = [], [], []
                for i in range(repeats + 1):  # the first call warms up
                    inputs = [t.detach().requires_grad_() for t in local]
                    stats = ld.CommStats()
                    torch.distributed.barrier(group)
                    cpu0, wall0 = time.thread_time(), time.perf_counter()
                    out = ld.attention(*inputs, causal=True, group=group, strategy=strategy,
                                       layout=layout, cu_seqlens=cu, stats=stats)
                    out.backward(grad)
                    cpu1, wall1 = time.thread_time(), time.perf_counter()
                    if i:
                        busy.append(cpu1 - cpu0)
                        wall.append(wall1 - wall0)
                        sent.append(stats.bytes_sent)
                rows.append({"pack": p_i, "strategy": strategy, "layout": layout,
                             "busy_s": statistics.median(busy), "wall_s": statistics.median(wall),
                             "rows": local[0].shape[1], "bytes_sent": sent[-1]})
    return rows


def predicted(bounds, world, layout, strategy, heads, head_dim):
    """Work per rank by the layout, and the planner's bytes per rank (forward + backward)."""
    import torch

    from longmix import mixers
    from longmix.parallel.forms.model_plan import plan_model
    from longmix.parallel.layout import all_segments
    from longmix.parallel.packed_layout import work_per_rank

    segments = all_segments(bounds[-1], world, layout, cu_seqlens=bounds)
    work = work_per_rank(bounds, segments)
    if strategy == "shuffle":  # every rank attends whole documents of its heads: 1/P of all
        work = [sum(work) / world] * world
    mixer = mixers.build("softmax", heads * head_dim, heads=heads, causal=True)
    cost = plan_model(mixer, bounds[-1], world, 1, dtype=torch.float32, layout=layout,
                      forms=strategy, packed=True, cu_seqlens=bounds).layers[0].cost()
    return (work,
            [f + b for f, b in zip(cost.forward_bytes, cost.backward_bytes)])


def ratio(values) -> float:
    return max(values) / (sum(values) / len(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packed-len", type=int, default=DEFAULT_PACKED_LEN)
    parser.add_argument("--median", type=float, default=128,
                        help="median document length (packed_balance.py: 2K of 128K, the same ratio)")
    parser.add_argument("--sigma", type=float, default=1.5, help="log-normal shape (tail weight)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--packs", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.packed_len, args.median, args.packs, args.repeats, args.worlds = 512, 16, 1, 1, [2]
    command = command_line("packed_attention_time.py", argv)

    rng = random.Random(args.seed)
    packs = [pack(rng, args.packed_len, args.median, args.sigma) for _ in range(args.packs)]
    results = []
    for world in args.worlds:
        start = time.perf_counter()
        by_rank = run_local(rank_worker, world, (packs, args.heads, args.head_dim, args.repeats),
                            timeout=1800, collective_timeout=600, threads_per_rank=1)
        print(f"P={world}: {time.perf_counter() - start:.0f} s", flush=True)
        for i, row in enumerate(by_rank[0]):
            ranks = [r[i] for r in by_rank]
            bounds = packs[row["pack"]]
            work, bytes_predicted = predicted(bounds, world, row["layout"], row["strategy"],
                                              args.heads, args.head_dim)
            busy = [r["busy_s"] for r in ranks]
            results.append({
                "P": world, "pack": row["pack"], "strategy": row["strategy"],
                "layout": row["layout"], "busy_s": busy, "wall_s": [r["wall_s"] for r in ranks],
                "rows": [r["rows"] for r in ranks], "work": work,
                "bytes_sent": [r["bytes_sent"] for r in ranks], "bytes_predicted": bytes_predicted,
                "busy_max_over_mean": ratio(busy), "work_max_over_mean": ratio(work),
                "busy_max_s": max(busy), "wall_max_s": max(r["wall_s"] for r in ranks)})
            r = results[-1]
            print(f"P={world} pack {r['pack']} {r['strategy']:>7} {r['layout']:>10}: busy max/mean "
                  f"{r['busy_max_over_mean']:.3f} (work {r['work_max_over_mean']:.3f}), busy max "
                  f"{r['busy_max_s']:.3f} s, wall {r['wall_max_s']:.3f} s", flush=True)
    docs = [b - a for bounds in packs for a, b in zip(bounds, bounds[1:])]
    setting = {k: getattr(args, k) for k in ("packed_len", "median", "sigma", "worlds", "packs",
                                             "heads", "head_dim", "repeats", "seed", "quick")}
    setting["documents"] = {"count": len(docs), "median": statistics.median(docs), "max": max(docs),
                            "per_pack": [len(b) - 1 for b in packs]}
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "shared_machine": True, "setting": setting, "rows": results}
    name = "packed_attention_time" + ("_quick" if args.quick else "") + (
        "" if args.packed_len == DEFAULT_PACKED_LEN or args.quick else f"_L{args.packed_len}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / f"{name}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / f"{name}.md", _markdown(record))
    return 0


def _mean(rows, key) -> float:
    return statistics.mean(r[key] for r in rows)


def _markdown(record: dict) -> str:
    s = record["setting"]
    lines = ["# Causal attention over packed documents across ranks: busy time per rank by layout", "",
             f"`longmix.parallel.attention(..., causal=True, cu_seqlens=...)`, forward + backward, "
             f"float32, {s['heads']} heads x {s['head_dim']}, batch 1, on P local gloo ranks with "
             f"one thread each. {s['packs']} pack(s) of {s['packed_len']} tokens, log-normal "
             f"document lengths (median {s['median']:g}, sigma {s['sigma']:g}, cut at the packed "
             f"length): {s['documents']['count']} documents, median {s['documents']['median']:g}, "
             f"longest {s['documents']['max']}.", "",
             "Busy = CPU seconds of each rank's calling thread over the call (kernels and "
             "bookkeeping; waiting for a message is not charged), median of "
             f"{s['repeats']} calls after a warm-up. **The machine was shared with other jobs "
             "while this ran**: busy times are robust to that, wall times are not (compare them "
             "only side by side). Work = query-key pairs inside documents each rank computes, as "
             "the layout predicts (`packed_layout.work_per_rank`; the shuffle splits heads, so "
             "every rank gets 1/P of it whatever the layout). Bytes: sent per rank, forward + "
             "backward, measured (`CommStats`) over the planner's prediction (`plan_model`, the "
             "same attention as a softmax mixer's form), max over ranks.", "",
             "Mean over packs:", "",
             "| P | strategy | layout | busy max/mean | work max/mean (predicted) | busiest rank, s | "
             "wall, s | bytes measured / predicted |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in record["rows"]:
        groups.setdefault((r["P"], r["strategy"], r["layout"]), []).append(r)
    for (world, strategy, layout), rows in groups.items():
        bytes_ratio = max(max(m / p if p else float(m == 0) for m, p in
                              zip(r["bytes_sent"], r["bytes_predicted"])) for r in rows)
        lines.append(f"| {world} | {strategy} | {layout} | {_mean(rows, 'busy_max_over_mean'):.3f} | "
                     f"{_mean(rows, 'work_max_over_mean'):.3f} | {_mean(rows, 'busy_max_s'):.3f} | "
                     f"{_mean(rows, 'wall_max_s'):.3f} | {bytes_ratio:.3f} |")
    lines += ["", "Per pack and rank (busy s; work in M pairs):", ""]
    for r in record["rows"]:
        lines.append(f"- P={r['P']} pack {r['pack']} {r['strategy']} {r['layout']}: busy "
                     f"{[round(b, 3) for b in r['busy_s']]}, work "
                     f"{[round(w / 1e6, 2) for w in r['work']]}, rows {r['rows']}")
    lines += ["", f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
              f"Commit: {record['git_describe']} ({record['git_commit']})  ", "",
              markdown(record["machine"]) + " (shared with other jobs)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
