"""Passkey retrieval (key anywhere) trained at long context on P ranks, against one process.

    python benchmarks/passkey_long.py --mixer mamba --context 65536 --steps 300
    python benchmarks/passkey_long.py --mixer softmax --context 8192 --steps 300
    python benchmarks/passkey_long.py --mixer linear --context 1024 --steps 4 --dim 16   # smoke
    python benchmarks/passkey_long.py --mixer mamba --causal --curriculum 64:400,256:200,1024:100 \
        --context 4096 --steps 50 --batch-size 8          # a curriculum of growing contexts

A curriculum (``--curriculum``) trains short contexts first, on the same P ranks, each stage
starting from the weights of the one before (``longmix train --init-from``); the final stage at
``--context`` starts from the last of them, on P ranks and on one process alike. Tiny models
learn to find the key in a few hundred steps at 64 tokens, where the search is short, and
then need only tens of steps per 4x longer context: the same task trained cold at 2,048 tokens
stayed at chance after 1,500 steps (the first rows of the table).

Each configuration is trained twice with ``longmix.train`` -- on ``--procs`` ranks (every sequence
split over them, the model sequence-parallel) and on one process -- from the same seed, so the
two runs see the same batches and should reach the same accuracy: the point of the P-rank run is
the memory per rank (and, given cores, the time), not a different model. ``--no-single`` skips
the one-process run where it would not fit.

Reported per run: test accuracy (chance is 1/10 with one key digit), the time per optimizer step
(the run's wall time over its steps: one evaluation and the checkpoints included), and the peak
resident memory of each rank (VmHWM, the whole process: the torch runtime included; its size at
the start of training is shown beside it). Each rank runs in a fresh process, so peaks never mix.

Appends one record per invocation to ``<out-dir>/passkey_long.jsonl`` (machine, command, date,
code version) and rewrites ``<out-dir>/passkey_long.md`` from all of them. Run folders (with
their checkpoints) live under ``--runs-dir``: an interrupted benchmark resumes where it stopped.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from longmix.parallel.launch import run_local
from longmix.vocabulary import LAYOUTS
from longmix.fileio import append_record, atomic_write_text, read_records
from longmix.machine import current_rss_bytes, describe, markdown, peak_rss_bytes
from longmix.provenance import provenance, utc_now
from longmix.train import TrainConfig, evaluate_checkpoint, results, train

STEM = "passkey_long"


def train_rank(group, cfg: TrainConfig) -> dict:
    """One rank (in a fresh process): train, then report this process's memory."""
    start_rss = current_rss_bytes()
    try:
        record = train(cfg, group=group)
    except ValueError as err:  # a clear error, the same on every rank: report it, not a traceback
        return {"error": str(err)}
    return {"record": record, "start_rss_bytes": start_rss, "peak_rss_bytes": peak_rss_bytes()}


def score_rank(group, cfg: TrainConfig, path: str) -> dict:
    try:
        return evaluate_checkpoint(cfg, path, split="test", group=group)
    except ValueError as err:
        return {"error": str(err)}


def score(cfg: TrainConfig, path: str, procs: int, threads: int, timeout_s: float) -> dict:
    """Test accuracy of the weights in checkpoint ``path`` at ``cfg``'s context, on ``procs`` ranks."""
    t0 = time.perf_counter()
    ranks = run_local(score_rank, procs, args=(cfg, path), timeout=timeout_s,
                      collective_timeout=1800.0, threads_per_rank=threads)
    if "error" in ranks[0]:
        raise SystemExit(f"passkey_long: error: {ranks[0]['error']}")
    return {"context": cfg.context, "accuracy": ranks[0]["accuracy"], "scored": ranks[0]["scored"],
            "procs": procs, "wall_s": round(time.perf_counter() - t0, 1)}


def run(cfg: TrainConfig, procs: int, threads: int, timeout_s: float) -> dict:
    """Train ``cfg`` on ``procs`` fresh ranks; one row of the table. A run already finished in its
    folder is not trained again: its row is marked ``reused`` and has no memory figures."""
    reused = results.find(Path(cfg.out) / "results.jsonl", cfg.run_id()) is not None
    ranks = run_local(train_rank, procs, args=(cfg,), timeout=timeout_s,
                      collective_timeout=1800.0, threads_per_rank=threads)
    if "error" in ranks[0]:
        raise SystemExit(f"passkey_long: error: {ranks[0]['error']}")
    record = ranks[0]["record"]
    return {
        "procs": procs, "threads_per_rank": threads, "run_id": record["run_id"],
        "accuracy": record["test"]["accuracy"], "test_loss": record["test"]["loss"],
        "steps": record["steps"], "wall_s": record["wall_s"], "sessions": record["sessions"],
        "s_per_step": record["wall_s"] / max(record["steps"], 1),
        "forms": record.get("forms"), "positional": record["positional"],
        "peak_rss_bytes": None if reused else [r["peak_rss_bytes"] for r in ranks],
        "start_rss_bytes": None if reused else [r["start_rss_bytes"] for r in ranks],
        "reused": reused,
    }


def config(args, procs: int, threads: int, stage: "Stage", init_from: str | None) -> TrainConfig:
    cfg = TrainConfig(
        task="passkey", mixer=args.mixer, context=stage.context, steps=stage.steps,
        batch_size=stage.batch_size, dim=args.dim, depth=args.depth, heads=args.heads, lr=args.lr,
        seed=args.seed, pool=args.pool, positional=args.positional, causal=True if args.causal else None,
        init_from=init_from,
        eval_every=stage.steps, eval_batches=args.eval_batches,
        checkpoint_every=max(1, stage.steps // 10), threads=threads, progress=not args.quiet,
        task_params={"length": stage.context, "depth": [0.0, 1.0]},  # the key anywhere
        procs=procs, layout=args.layout, form=args.form)
    # One folder per configuration (its run id): a rerun resumes it, another one never collides.
    cfg.out = str(Path(args.runs_dir) / f"{args.mixer}-C{stage.context}-P{procs}-{cfg.run_id()}")
    return cfg


@dataclass(frozen=True)
class Stage:
    context: int
    steps: int
    batch_size: int


def parse_curriculum(text: str, batch_size: int) -> list[Stage]:
    """'64:400,256:200:8' -> stages (context, steps, batch size; the batch defaults to --batch-size)."""
    stages = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or min(numbers) < 1:
            raise SystemExit(f"passkey_long: error: --curriculum expects CONTEXT:STEPS[:BATCH] items of "
                             f"positive integers, got {item!r}")
        stages.append(Stage(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else batch_size))
    return stages


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def markdown_table(records: list[dict]) -> str:
    lines = ["# Passkey (key anywhere) at long context: P ranks against one process", "",
             "Written by `benchmarks/passkey_long.py`. Peak memory is each rank's VmHWM (the torch "
             "runtime included; the size at the start of training is in brackets). s/step is the "
             "run's wall time over its steps, one evaluation and the checkpoints included.", "",
             "A curriculum lists each earlier stage as context:steps (batch) = test accuracy, s/step, on "
             "the same P ranks; the final stage starts from its weights.", "",
             "| mixer | context | pool | causal | positions | curriculum | P | forms | batch | steps | "
             "accuracy | s/step | peak GiB per rank [start] | date | code |",
             "|" + "---|" * 15]
    shown = set()
    for rec in records:
        stages = "; ".join(f"{c['context']}:{c['steps']} ({c['batch_size']}) = {c['accuracy']:.3f}, "
                           f"{c['s_per_step']:.2f}" for c in rec.get("curriculum", [])) or "-"
        for row in rec["rows"]:
            # A rerun reuses finished runs: each is shown once. The run id leaves out the process
            # count (a run may resume on another), so the P-rank and one-process runs share it.
            key = (row["run_id"], row["procs"])
            if key in shown or row.get("reused"):
                continue
            shown.add(key)
            peaks = ", ".join(f"{_gib(p)} [{_gib(s)}]"
                              for p, s in zip(row["peak_rss_bytes"], row["start_rss_bytes"]))
            forms = ", ".join(sorted(set(row["forms"]))) if row.get("forms") else "-"
            # records from before --pool existed ran the then-default: mean over non-pad tokens
            lines.append(f"| {rec['mixer']} | {rec['context']} | {rec.get('pool', 'mean')} | "
                         f"{'yes' if rec.get('causal') else 'no'} | {row.get('positional', 'family default')} | "
                         f"{stages} | {row['procs']} | "
                         f"{forms} | {rec.get('batch_size', 16)} | {row['steps']} | "
                         f"{row['accuracy']:.3f} | {row['s_per_step']:.2f} | {peaks} | {rec['date']} | "
                         f"{rec.get('git_describe')} |")
    scored = [rec for rec in records if rec.get("start") or rec.get("beyond")]
    if scored:
        lines += ["", "Test accuracy without training at that context, on the P ranks: the curriculum's "
                  "last weights at the final context before the final stage trains (`--eval-start`), "
                  "and the final weights at longer contexts (`--eval-beyond`), with the examples scored "
                  "and the wall time of the scoring (not a speed figure: other jobs may have shared the "
                  "cores).", "",
                  "| mixer | trained up to | before the final stage | longer contexts | date |",
                  "|---|---|---|---|---|"]
        for rec in scored:
            start = rec.get("start")
            before = f"{start['accuracy']:.3f} at {start['context']} ({start['scored']})" if start else "-"
            longer = "; ".join(f"{b['accuracy']:.3f} at {b['context']} ({b['scored']}, {b['wall_s']:.0f} s)"
                               for b in rec.get("beyond", [])) or "-"
            lines.append(f"| {rec['mixer']} | {rec['context']} | {before} | {longer} | {rec['date']} |")
    lines += ["", "Machines:", ""]
    lines += sorted({f"- {markdown(rec['machine'])}" for rec in records})
    lines += ["", "Commands:", ""] + [f"- `{rec['command']}`" for rec in records]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = parser.add_argument
    a("--mixer", default="mamba", help="any mixer with a sequence-parallel form (default mamba)")
    a("--context", type=int, default=65536, help="sequence length (default 65536)")
    a("--procs", type=int, default=2, help="ranks of the parallel run (default 2)")
    a("--no-single", action="store_true", help="skip the one-process run (e.g. it would not fit)")
    a("--steps", type=int, default=300)
    a("--batch-size", type=int, default=4)
    a("--dim", type=int, default=32)
    a("--depth", type=int, default=2)
    a("--heads", type=int, default=2)
    a("--lr", type=float, default=3e-3)
    a("--curriculum", default="", metavar="C:STEPS[:BATCH],...",
      help="stages trained before the final one, on the same ranks, each from the weights of the "
           "one before (e.g. 64:400,256:200,1024:100); default none")
    a("--causal", action="store_true",
      help="causal mixers (with --pool last the last token reads the whole sequence, as an RNN's)")
    a("--positional", default="auto", choices=["auto", "sinusoidal", "learned", "none"],
      help="positional information (default: by mixer family; 'none' with --causal lets softmax "
           "run at lengths it was not trained on)")
    a("--eval-start", action="store_true",
      help="also score the curriculum's last weights at --context before the final stage trains")
    a("--eval-beyond", type=lambda t: [int(c) for c in t.split(",") if c], default=[], metavar="C,...",
      help="score the final P-rank weights at these longer contexts, on the P ranks (no training)")
    a("--beyond-batches", type=int, default=8, help="test batches per --eval-beyond context (default 8)")
    a("--beyond-batch-size", type=int, default=1, help="examples per --eval-beyond batch (default 1)")
    a("--pool", default="last", choices=["last", "mean"],
      help="classification pooling (default last, the study's: a mean over L dilutes the one key)")
    a("--seed", type=int, default=0)
    a("--eval-batches", type=int, default=4)
    a("--layout", default="contiguous", choices=LAYOUTS)
    a("--form", default=None,
      help="the parallel form of every layer: shuffle, state or ring (default: planned; use "
           "ring for softmax's ring)")
    a("--cores", type=int, default=os.cpu_count() or 1,
      help="cores to use: the one-process run gets all, each of P ranks cores / P (default all)")
    a("--timeout", type=float, default=math.inf, help="seconds per run before its ranks are killed")
    a("--runs-dir", default="runs/passkey_long", help="run folders (checkpoints; resumable)")
    a("--out-dir", type=Path, default=Path(__file__).parent / "results")
    a("--quiet", action="store_true")
    args = parser.parse_args(argv)

    stages = parse_curriculum(args.curriculum, args.batch_size)
    threads = max(1, args.cores // args.procs)
    init_from, curriculum = None, []
    for stage in stages:  # each on the P ranks, from the weights of the stage before
        print(f"{args.mixer}, curriculum stage: context {stage.context}, {stage.steps} steps, "
              f"batch {stage.batch_size}, {args.procs} process(es)", flush=True)
        cfg = config(args, args.procs, threads, stage, init_from)
        row = run(cfg, args.procs, threads, args.timeout)
        print(f"  accuracy {row['accuracy']:.3f}, {row['s_per_step']:.2f} s/step", flush=True)
        curriculum.append({**asdict(stage), **row})
        init_from = cfg.out

    final = Stage(args.context, args.steps, args.batch_size)
    start = None
    if args.eval_start and init_from is not None:  # what the curriculum alone gives at the final context
        start = score(config(args, args.procs, threads, final, None), str(Path(init_from) / "checkpoint.pt"),
                      args.procs, threads, args.timeout)
        print(f"  before the final stage: accuracy {start['accuracy']:.3f} at context {args.context}", flush=True)
    rows, beyond = [], []
    plan = [(args.procs, threads)] + ([] if args.no_single else [(1, args.cores)])
    for procs, procs_threads in plan:
        print(f"{args.mixer}, context {args.context}: training on {procs} process(es), "
              f"{procs_threads} thread(s) each", flush=True)
        cfg = config(args, procs, procs_threads, final, init_from)
        row = run(cfg, procs, procs_threads, args.timeout)
        memory = "reused" if row["reused"] else [round(p / 2**30, 2) for p in row["peak_rss_bytes"]]
        print(f"  accuracy {row['accuracy']:.3f}, {row['s_per_step']:.2f} s/step, peak GiB per rank "
              f"{memory}, forms {row['forms']}", flush=True)
        rows.append(row)
        if procs == args.procs:
            trained = str(Path(cfg.out) / "checkpoint.pt")
    for context in args.eval_beyond:  # the final P-rank weights at contexts they never trained on
        cfg = config(args, args.procs, threads, Stage(context, 1, args.beyond_batch_size), None)
        cfg.eval_batches = args.beyond_batches
        beyond.append(score(cfg, trained, args.procs, threads, args.timeout))
        print(f"  at context {context} (not trained there): accuracy {beyond[-1]['accuracy']:.3f} "
              f"on {beyond[-1]['scored']} examples, {beyond[-1]['wall_s']:.0f} s", flush=True)
    record = {"mixer": args.mixer, "context": args.context, "pool": args.pool, "causal": args.causal,
              "positional": args.positional, "batch_size": args.batch_size, "curriculum": curriculum,
              "start": start, "beyond": beyond, "rows": rows, "machine": describe(),
              "command": "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])]),
              "date": utc_now(), **provenance()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    append_record(args.out_dir / f"{STEM}.jsonl", record)
    atomic_write_text(args.out_dir / f"{STEM}.md", markdown_table(read_records(args.out_dir / f"{STEM}.jsonl")))
    print(f"results -> {args.out_dir / (STEM + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
