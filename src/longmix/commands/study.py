"""`longmix study`: train over task x mixer x context (x seeds) and report whether long context helps.

    longmix study --grid small --out runs/study

Resumable: rerun the same command after an interruption; finished runs are skipped.
"""
from __future__ import annotations

import sys


def add_arguments(parser):
    a = parser.add_argument
    a("--grid", default="small", choices=["small", "full"],
      help="small: ~30-40 min on a 2-core CPU; full: more tasks/mixers, contexts to 8192 (default small)")
    a("--out", default="runs/study", help="study directory (default runs/study)")
    a("--seeds", type=int, default=None, help="seeds per cell, 0..N-1 (default: the grid's)")
    a("--tasks", nargs="+", default=None, metavar="TASK", help="task labels of the grid (or registry names)")
    a("--mixers", nargs="+", default=None, metavar="MIXER", help="mixer names (default: the grid's)")
    a("--contexts", nargs="+", type=int, default=None, metavar="C", help="context lengths (default: the grid's)")
    a("--steps", type=int, default=None, help="override the grid's steps per run (e.g. for a smoke test)")
    a("--jobs", type=int, default=1,
      help="runs trained at once, one process each (default 1; 2 on a 2-core machine halves the time)")
    a("--list", action="store_true", help="print the runs of the grid and exit")
    a("--quiet", action="store_true", help="no per-run progress bars")


def run(args) -> int:
    from ..study import get_grid, run_study

    try:
        grid = get_grid(args.grid).select(tasks_=args.tasks, mixers_=args.mixers, contexts=args.contexts,
                                          seeds=args.seeds)
        if args.steps is not None:
            if args.steps < 1:
                raise ValueError(f"--steps must be a positive int, got {args.steps}")
            grid.train = {**grid.train, "steps": args.steps,
                          "warmup": min(grid.train.get("warmup") or 0, args.steps),
                          "eval_every": min(grid.train.get("eval_every", 100), args.steps),
                          "checkpoint_every": min(grid.train.get("checkpoint_every", 50), args.steps)}
        if args.list:
            for r in grid.runs():
                print(r.run_id)
            for label, mixer, reason in grid.skipped():
                print(f"# skipped {label} x {mixer}: {reason}")
            return 0
        summary = run_study(grid, args.out, progress=not args.quiet and args.jobs == 1, jobs=args.jobs)
    except ValueError as err:
        print(f"longmix study: error: {err}", file=sys.stderr)
        return 2
    for run_id, message in summary["failed"]:
        print(f"longmix study: run {run_id} failed: {message}", file=sys.stderr)
    print(f"{len(summary['finished'])} runs finished; report: {summary['paths']['report']}")
    return 1 if summary["failed"] else 0
