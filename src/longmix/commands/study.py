"""`longmix study`: train over task x mixer x context (x seeds) and report whether long context helps.

    longmix study --grid small --out runs/study
    longmix study --grid small --dry-run      # runs, and the time they will take on this machine
    longmix study --grid tiny --out /tmp/s    # the whole pipeline in a few minutes (a smoke test)

Resumable: rerun the same command after an interruption; finished runs are skipped.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser):
    a = parser.add_argument
    a("--grid", default="small", choices=["tiny", "small", "full"],
      help="tiny: a smoke test of the pipeline; small: a 2-core CPU (see --dry-run for its time); "
           "full: more tasks/mixers, contexts to 8192, for a GPU (default small)")
    a("--out", default="runs/study", help="study directory (default runs/study)")
    a("--seeds", type=int, default=None, help="seeds per cell, 0..N-1 (default: the grid's)")
    a("--tasks", nargs="+", default=None, metavar="TASK", help="task labels of the grid (or registry names)")
    a("--mixers", nargs="+", default=None, metavar="MIXER", help="mixer names (default: the grid's)")
    a("--contexts", nargs="+", type=int, default=None, metavar="C", help="context lengths (default: the grid's)")
    a("--steps", type=int, default=None, help="override the grid's steps per run (e.g. for a smoke test)")
    a("--lrs", nargs="+", type=float, default=None, metavar="LR",
      help="learning rates of the validation sweep (default: the grid's)")
    a("--dry-run", action="store_true",
      help="time a few steps of every (task, mixer, context) here, print the study's estimated "
           "CPU time, and exit without training")
    a("--jobs", type=int, default=1,
      help="runs trained at once, one process each (default 1; 2 on a 2-core machine halves the time)")
    a("--device", default="cpu",
      help="where every run trains: cpu, cuda[:N] (worker processes share the GPU; default cpu)")
    a("--list", action="store_true", help="print the runs of the grid and exit")
    a("--quiet", action="store_true", help="no per-run progress bars")


def run(args) -> int:
    from ..study import get_grid, run_study

    try:
        grid = get_grid(args.grid).select(tasks_=args.tasks, mixers_=args.mixers, contexts=args.contexts,
                                          seeds=args.seeds)
        if args.steps is not None:
            grid = grid.with_steps(args.steps)
        if args.device != "cpu":  # not part of a run's identity: a run may resume on another device
            grid.train = {**grid.train, "device": args.device}
        if args.lrs:
            bad = [lr for lr in args.lrs if not lr > 0]
            if bad:
                raise ValueError(f"--lrs must be positive, got {bad}")
            grid.lrs = list(args.lrs)
        if args.list:
            for r in grid.sweep_runs():
                print(r.run_id)
            from ..study.grid import choose
            from ..study.runner import study_records

            out = Path(args.out)
            choices, _ = choose(grid, study_records(out) if out.is_dir() else [])
            for r in grid.runs(choices):
                print(r.run_id)
            print(f"# {grid.planned_runs()} grid runs in all; those of cells whose sweep has not "
                  "finished get their ids once it has")
            for label, mixer, reason in grid.skipped():
                print(f"# skipped {label} x {mixer}: {reason}")
            return 0
        if args.dry_run:
            from ..study.budget import estimate

            print(f"grid {grid.name!r}: {len(grid.sweep_runs())} sweep runs, {grid.planned_runs()} grid "
                  f"runs; timing {len(grid.cells())} cells on this machine ...")
            for line in estimate(grid, log=print).lines(jobs=max(args.jobs, 1)):
                print(line)
            return 0
        summary = run_study(grid, args.out, progress=not args.quiet and args.jobs == 1, jobs=args.jobs)
    except ValueError as err:
        print(f"longmix study: error: {err}", file=sys.stderr)
        return 2
    for run_id, message in summary["failed"]:
        print(f"longmix study: run {run_id} failed: {message}", file=sys.stderr)
    print(f"{len(summary['finished'])} runs finished; report: {summary['paths']['report']}")
    return 1 if summary["failed"] else 0
