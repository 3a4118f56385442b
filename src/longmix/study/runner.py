"""Run a study grid through the trainer, then write its report.

Layout of the study directory ``out``::

    out/runs/<run-id>/checkpoint.pt     each run resumes from here
    out/runs/<run-id>/results.jsonl     the run's own record
    out/results.jsonl                   every finished run of the study, append-only
    out/report.md, out/plot_<task>.png, out/summary.png, out/reading.txt

Rerunning skips runs already in ``out/results.jsonl``, resumes unfinished ones from their
checkpoints, and starts the rest; the whole study may be interrupted at any point.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from ..fileio import atomic_write_text
from ..train import results, train
from ..train.loop import prepare_out
from . import report
from .grid import Grid, with_out


def _train_one(cfg):
    """Worker entry point: (record, None) or (None, error message) for a clear ValueError."""
    try:
        return train(cfg), None
    except ValueError as err:
        return None, str(err)


def run_study(grid: Grid, out: str | os.PathLike, progress: bool = True, command: str | None = None,
              log=print, jobs: int = 1) -> dict:
    """Train every run of ``grid`` not yet finished in ``out``, then write the report.

    ``jobs > 1`` trains that many runs at once in worker processes (small models use one core
    each best: see the grids' ``threads``). Only this process appends to ``out/results.jsonl``,
    so lines never interleave.

    Returns ``{"finished": [...records of this grid...], "failed": [(run_id, message)], "paths": {...}}``.
    A run that fails with a ValueError (e.g. a corrupt checkpoint) is reported and skipped; the
    others still run.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    out = prepare_out(out)
    study_results = out / "results.jsonl"
    runs = grid.runs()
    done = {r["study"]["run"] for r in results.read(study_results) if "study" in r}
    failed = []
    todo = [r for r in runs if r.run_id not in done]
    log(f"study {grid.name!r}: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
        f"{len(todo)} to run" + (f" ({jobs} at a time)" if jobs > 1 else ""))

    def record_result(i, run, record, error):
        if error is not None:
            log(f"[{i}/{len(todo)}] {run.run_id} failed: {error}")
            failed.append((run.run_id, error))
            return
        st = next(t for t in grid.tasks if t.label == run.label)
        record["study"] = {"run": run.run_id, "label": run.label, "grid": grid.name, "expect": st.expect,
                           "note": st.note}
        results.append(study_results, record)
        log(f"[{i}/{len(todo)}] {run.run_id}: test {record['metric']} "
            f"{record['test'][record['metric']]:.4f} ({record['wall_s']:.0f} s)")

    if jobs == 1:
        for i, run in enumerate(todo, 1):
            record_result(i, run, *_train_one(with_out(run, out, progress)))
    else:
        import concurrent.futures as cf
        import multiprocessing

        # spawn: a fresh interpreter per worker, no forked torch thread pools.
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_one, with_out(run, out, False)): run for run in todo}
            try:
                for i, fut in enumerate(cf.as_completed(futures), 1):
                    record_result(i, futures[fut], *fut.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: stop; a rerun resumes
                raise
    paths = write_report(grid, out, command=command)
    return {"finished": paths.pop("records"), "failed": failed, "paths": paths}


def write_report(grid: Grid, out: Path, command: str | None = None) -> dict:
    """Write report.md, the PNGs and reading.txt from the finished runs of ``grid`` in ``out``."""
    wanted = {r.run_id for r in grid.runs()}
    records = [r for r in results.read(out / "results.jsonl") if r.get("study", {}).get("run") in wanted]
    tabs = report.tables(records)
    plots = {}
    for t in tabs:
        name = f"plot_{t.label}.png"
        report.plot(t, out / name, title_suffix=f" ({grid.name} grid)")
        plots[t.label] = name
    if tabs:
        report.summary_plot(tabs, out / "summary.png")
    reading_text = report.reading(tabs) if tabs else "No finished runs yet.\n"
    last = max(records, key=lambda r: r["date"]) if records else {}
    header = {
        "grid": grid.name,
        "command": command or "longmix " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "runs_planned": len(wanted), "runs_finished": len(records),
        "seeds": ", ".join(map(str, grid.seeds)),
        "wall_min": sum(r["wall_s"] for r in records) / 60,
        "train": ", ".join(f"{k}={v}" for k, v in grid.train.items() if k not in ("device",)),
        "machine": _machine_line(last.get("machine", {})),
        "date": last.get("date", time.strftime("%Y-%m-%d")), "git_commit": last.get("git_commit"),
    }
    atomic_write_text(out / "reading.txt", reading_text)
    atomic_write_text(out / "report.md", report.markdown(tabs, header, plots, reading_text, grid.skipped()))
    return {"report": out / "report.md", "reading": out / "reading.txt",
            "plots": [out / p for p in plots.values()], "records": records}


def _machine_line(m: dict) -> str:
    if not m:
        return "unknown"
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('processor')} ({m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads{gpu}), "
            f"{m.get('platform')}, torch {m.get('torch')}")
