"""Run a study grid through the trainer, then write its report.

Layout of the study directory ``out``::

    out/runs/<run-id>/checkpoint.pt     each run resumes from here
    out/runs/<run-id>/results.jsonl     the run's own record
    out/results.jsonl                   every finished run of the study (sweep and grid), append-only
    out/floors.json                     the floors of every (task, context), computed once
    out/report.md, out/plot_<task>.png, out/curves_<task>.png, out/summary.png, out/reading.txt

A study runs in two phases (see :mod:`longmix.study.grid`): the validation sweep, then the grid
with each cell's chosen settings. A grid run whose configuration equals a sweep run's (the
longest context, seed 0) reuses that run's record instead of training it again.

Rerunning skips runs already in ``out/results.jsonl``, resumes unfinished ones from their
checkpoints, and starts the rest; the whole study may be interrupted at any point.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

from .. import tasks
from ..checks import check_int
from ..fileio import append_record, atomic_write_text, read_records
from ..machine import markdown as machine_line
from ..provenance import provenance, utc_now
from ..train import TrainingDiverged, results, train
from ..train.loop import prepare_out
from . import report
from .floors import floors
from .grid import Grid, Run, choose, with_out

def _train_one(cfg):
    """Worker entry point: (record, None), or (None, message) for a clear ValueError. A diverged
    run returns a record with ``status: "diverged"`` (a sweep's candidate may diverge)."""
    try:
        return train(cfg), None
    except TrainingDiverged as err:  # the trainer recorded it in the run folder: keep that record
        record = results.find(Path(cfg.out) / "results.jsonl", cfg.run_id())
        return (record, None) if record is not None else (None, str(err))
    except ValueError as err:
        return None, str(err)


def study_records(out: Path) -> list[dict]:
    return [r for r in read_records(Path(out) / "results.jsonl") if "study" in r]


def run_study(grid: Grid, out: str | os.PathLike, progress: bool = True, command: str | None = None,
              log=print, jobs: int = 1) -> dict:
    """Run the sweep, then the grid, of ``grid`` in ``out`` (what is not finished yet), then
    write the report.

    ``jobs > 1`` trains that many runs at once in worker processes (small models use one core
    each best: see the grids' ``threads``). Only this process appends to ``out/results.jsonl``,
    so lines never interleave.

    Returns ``{"finished": [...grid records...], "failed": [(run_id, message)], "paths": {...}}``.
    A run that fails with a ValueError (e.g. a corrupt checkpoint) is reported and skipped; the
    others still run.
    """
    check_int("jobs", jobs)
    out = prepare_out(out)
    failed = []
    with contextlib.ExitStack() as stack:
        pool = None
        if jobs > 1:  # one pool for both phases: starting workers costs an interpreter each
            import concurrent.futures as cf
            import multiprocessing

            # spawn: a fresh interpreter per worker, no forked torch thread pools.
            pool = stack.enter_context(cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")))
        _run_phase(grid, grid.sweep_runs(), out, "sweep", progress, pool, log, failed)
        records = study_records(out)  # read once: choosing and reusing see the same records
        choices, _ = choose(grid, [r for r in records if r["study"].get("phase") == "sweep"])
        grid_runs = grid.runs(choices)
        _reuse_sweep_records(grid, grid_runs, out, records)
        _run_phase(grid, grid_runs, out, "grid", progress, pool, log, failed)
    paths = write_report(grid, out, command=command, log=log)
    return {"finished": paths.pop("records"), "failed": failed, "paths": paths}


def _study_fields(grid: Grid, run: Run) -> dict:
    st = next(t for t in grid.tasks if t.label == run.label)
    return {"run": run.run_id, "label": run.label, "grid": grid.name, "phase": run.phase,
            "expect": st.expect, "note": st.note, "jump_at": st.jump_at}


def _append(grid: Grid, out: Path, run: Run, record: dict) -> None:
    record = dict(record)
    record["study"] = _study_fields(grid, run)
    if "git_describe" not in record:  # records from before the trainer carried provenance
        record.update(provenance())
    append_record(out / "results.jsonl", record)


def _reuse_sweep_records(grid: Grid, runs: list[Run], out: Path, records: list[dict]) -> None:
    """Record, under their grid ids, the grid runs a sweep run already trained (same config);
    ``records`` are the study's records in ``out``."""
    done = {r["study"]["run"] for r in records}
    by_config = {r["run_id"]: r for r in records if r["study"].get("phase") == "sweep"
                 and r.get("status", "finished") == "finished"}
    for run in runs:
        source = by_config.get(run.config.run_id())
        if run.run_id not in done and source is not None:
            _append(grid, out, run, {**source, "reused_from": source["study"]["run"]})


def _run_phase(grid: Grid, runs: list[Run], out: Path, phase: str, progress: bool, pool, log,
               failed: list) -> None:
    """Train the ``runs`` not yet recorded, in this process or on ``pool`` (a process pool)."""
    done = {r["study"]["run"] for r in study_records(out)}
    todo = [r for r in runs if r.run_id not in done]
    log(f"study {grid.name!r}, {phase}: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
        f"{len(todo)} to run" + (" (in worker processes)" if pool else ""))

    def record_result(i, run, record, error):
        if error is not None:
            log(f"[{phase} {i}/{len(todo)}] {run.run_id} failed: {error}")
            failed.append((run.run_id, error))
            return
        _append(grid, out, run, record)
        if record.get("status") == "diverged":
            log(f"[{phase} {i}/{len(todo)}] {run.run_id}: diverged")
        else:
            log(f"[{phase} {i}/{len(todo)}] {run.run_id}: valid {record['metric']} "
                f"{(record.get('valid') or {}).get(record['metric'], float('nan')):.4f} ({record['wall_s']:.0f} s)")

    if pool is None:
        for i, run in enumerate(todo, 1):
            record_result(i, run, *_train_one(with_out(run, out, progress)))
        return
    import concurrent.futures as cf

    futures = {pool.submit(_train_one, with_out(run, out, False)): run for run in todo}
    try:
        for i, fut in enumerate(cf.as_completed(futures), 1):
            record_result(i, futures[fut], *fut.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: stop; a rerun resumes
        raise


def study_floors(grid: Grid, out: Path, log=print) -> dict:
    """``{(label, context): floors dict}``, computed once per configuration and kept in
    ``out/floors.json`` (the n-gram fits take seconds; a report is written after every study).

    A task's seed decides which examples its test batches hold, so each seed's runs are scored
    on other examples: the floor is the mean over the grid's seeds of each seed's floor, as the
    cell is the mean over seeds of each seed's score."""
    path = Path(out) / "floors.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    result, changed = {}, False
    for st in grid.tasks:
        for context in grid.contexts_of(st):
            per_seed = []
            for seed in grid.seeds:
                cfg = grid.base_config(st, grid.mixers[0], context, seed)
                key = f"{st.label}|C{context}|s{seed}|{cfg.run_id()}"
                if key not in cache:
                    log(f"floors of {st.label} at C={context}, seed {seed} ...")
                    cache[key] = floors(tasks.build(st.task, seed=seed, **st.params), cfg)
                    changed = True
                per_seed.append(cache[key])
            result[(st.label, context)] = _mean_floors(per_seed)
    if changed:
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return result


def _mean_floors(per_seed: list[dict]) -> dict:
    """The mean of every float field over seeds; names joined when seeds differ ("chance/majority");
    other fields (orders, sizes) from the first seed."""
    out = {}
    for k, v in per_seed[0].items():
        if isinstance(v, float):
            out[k] = sum(f[k] for f in per_seed) / len(per_seed)
        elif isinstance(v, str):
            out[k] = "/".join(dict.fromkeys(f[k] for f in per_seed))
        else:
            out[k] = v
    return out


def _machines(records: list[dict]) -> str:
    """Which machines trained the runs, and how many each (a grid may be split over machines)."""
    counts = collections.Counter(
        machine_line({k: v for k, v in r["machine"].items() if k != "date"}) if r.get("machine")
        else "unknown" for r in records)
    return "; ".join(f"{line}: {n} runs" for line, n in counts.most_common()) or "unknown"


def write_report(grid: Grid, out: Path, command: str | None = None, log=print) -> dict:
    """Write report.md, the PNGs and reading.txt from the finished runs of ``grid`` in ``out``."""
    records = study_records(out)
    # Only this grid's sweep: records of a superseded sweep (e.g. another step budget) stay in
    # the results file but take no part.
    sweep_ids = {run.run_id for run in grid.sweep_runs()}
    sweep_records = [r for r in records if r["study"]["run"] in sweep_ids]
    choices, sweep_table = choose(grid, sweep_records)
    wanted = {r.run_id for r in grid.runs(choices)}
    grid_records = [r for r in records if r["study"]["run"] in wanted]
    finished = [r for r in grid_records if r.get("status", "finished") == "finished"]
    cells = {(st.label, m): grid.matched(st, m) for st, m in grid.cells()}
    tabs = report.tables(finished, floors=study_floors(grid, out, log) if finished else {}, matched=cells)
    plots = {}
    for t in tabs:
        plots[t.label] = {"plot": f"plot_{t.label}.png", "curves": f"curves_{t.label}.png"}
        report.plot(t, out / plots[t.label]["plot"], title_suffix=f" ({grid.name} grid)")
        report.curves_plot(t, out / plots[t.label]["curves"])
    if tabs:
        report.summary_plot(tabs, out / "summary.png")
    reading_text = report.reading(tabs) if tabs else "No finished runs yet.\n"
    last = max(finished, key=lambda r: r["date"]) if finished else {}
    reported = wanted | sweep_ids
    all_runs = [r for r in records if r["study"]["run"] in reported]
    header = {
        "grid": grid.name,
        "command": command or "longmix " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "runs_planned": grid.planned_runs(), "runs_finished": len(finished),
        "sweep_planned": len(sweep_ids), "sweep_finished": len(sweep_records),
        "seeds": ", ".join(map(str, grid.seeds)),
        "wall_min": sum(r.get("wall_s", 0.0) for r in all_runs if not r.get("reused_from")) / 60,
        "train": ", ".join(f"{k}={v}" for k, v in grid.train.items() if k not in ("device",))
                 + "".join(f"; {label}: " + ", ".join(f"{k}={v}" for k, v in own.items())
                           for label, own in ((st.label, grid.task_train(st)) for st in grid.tasks) if own),
        "lrs": ", ".join(f"{lr:g}" for lr in grid.lrs), "positionals": ", ".join(grid.positionals),
        "machine": _machines(all_runs),
        "date": last.get("date", utc_now()),
        "provenance": report.provenance_summary(all_runs),
        "diverged": [r["study"]["run"] for r in grid_records if r.get("status") == "diverged"],
    }
    atomic_write_text(out / "reading.txt", reading_text)
    atomic_write_text(out / "report.md", report.markdown(tabs, header, plots, reading_text, grid.skipped(),
                                                         sweep_table=sweep_table, choices=choices))
    return {"report": out / "report.md", "reading": out / "reading.txt",
            "plots": [out / name for d in plots.values() for name in d.values()], "records": finished}

