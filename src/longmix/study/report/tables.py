"""A study's run records grouped into cells (task label x mixer x context), and each cell's flags.

Everything in the report is computed from the records (the lines of ``results.jsonl``) and the floors;
nothing about the outcome is written in advance. A cell is the mean over seeds of a run's test
metric, and its *spread* is the larger of

* the sample standard deviation over seeds (when there are at least two), and
* for accuracy, the binomial standard error of the evaluation, sqrt(p (1 - p) / n_scored) /
  sqrt(seeds), so that a single seed or two identical seeds do not pretend to be exact.

Two numbers "differ" in the reading only when their difference exceeds the root sum of squares
of their spreads; otherwise the reading says the difference is within the spread.

Flags, each computed from the numbers:

* **not trained**: a row whose cell at the task's longest context does not beat its floor
  (:mod:`longmix.study.floors`) by more than its spread. The reading makes no claim from it.
* **not converged**: a run whose validation metric still moved over the last third of its
  training by more than :data:`CONVERGED_TOL`; a cell counts its converged seeds.
* **dirty**: a record written by code with uncommitted changes (its ``git_describe`` ends in
  ``-dirty``); the report lists the distinct diffs by hash.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from ..floors import beats


#: A run has converged when its validation metric moved by at most this over its last third
#: (accuracy in absolute terms; bits per byte/token in bits).
CONVERGED_TOL = {"accuracy": 0.02, "bits_per_byte": 0.02, "bits_per_token": 0.02}


def converged(record: dict) -> bool | None:
    """Whether the run's validation metric settled over the last third of training (None: too
    few evaluations to tell)."""
    metric = record["metric"]
    points = [(h["step"], h.get(f"valid_{metric}")) for h in record.get("history", [])
              if h.get(f"valid_{metric}") is not None]
    if len(points) < 3:
        return None
    last_step, last_value = points[-1]
    earlier = [v for step, v in points if step <= last_step * 2 / 3]
    if not earlier:
        return None
    return abs(last_value - earlier[-1]) <= CONVERGED_TOL.get(metric, 0.02)


@dataclass
class Cell:
    """The runs of one (task label, mixer, context): their test metrics over seeds."""

    values: list[float]
    seeds: list[int]
    wall_s: list[float]
    scored: int  # evaluation targets per run
    steps: int = 0  # training steps per run
    converged: list = field(default_factory=list)  # per seed: True, False or None
    dirty: bool = False
    tokens_seen: int = 0
    curves: list = field(default_factory=list)  # per seed: [(step, valid metric), ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n >= 2 else 0.0

    def spread(self, metric: str) -> float:
        se = 0.0
        if metric == "accuracy" and self.scored:
            p = min(max(self.mean, 0.0), 1.0)
            se = math.sqrt(max(p * (1 - p), 1.0 / self.scored) / self.scored) / math.sqrt(self.n)
        return max(self.std, se)


@dataclass
class TaskTable:
    """All cells of one task label, its floors per context and each mixer's model size."""

    label: str
    task: str
    metric: str
    higher_is_better: bool
    expect: str | None
    note: str
    chance: float | None
    cells: dict  # mixer -> context -> Cell
    families: dict  # mixer -> family
    floors: dict = field(default_factory=dict)  # context -> floors dict (see floors.floors)
    matched: dict = field(default_factory=dict)  # mixer -> {"dim", "parameters", "reference"}
    jump_at: int | None = None

    @property
    def contexts(self) -> list[int]:
        return sorted({c for row in self.cells.values() for c in row})

    @property
    def mixers(self) -> list[str]:
        return list(self.cells)

    def trained(self, mixer: str) -> bool | None:
        """Does ``mixer`` beat its floor at its longest context? None: no floor known."""
        row = self.cells[mixer]
        c = max(row)
        f = self.floors.get(c)
        if f is None:
            return None
        return beats(row[c].mean, row[c].spread(self.metric), f["floor"], self.higher_is_better)


def label_of(record: dict) -> str:
    return record.get("study", {}).get("label", record["task"])


def tables(records: list[dict], floors: dict | None = None, matched: dict | None = None) -> list[TaskTable]:
    """Group finished records by task label, then mixer, then context (in order of first
    appearance). ``floors[(label, context)]`` and ``matched[(label, mixer)]`` are attached."""
    floors, matched = floors or {}, matched or {}
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    first: dict = {}
    for r in records:
        if r.get("status", "finished") != "finished":
            continue
        label = label_of(r)
        grouped[label][r["mixer"]][r["context"]].append(r)
        first.setdefault(label, r)
    out = []
    for label, by_mixer in grouped.items():
        r0 = first[label]
        metric = r0["metric"]
        info = r0.get("task_info", {})
        classes = info.get("num_classes") or info.get("params", {}).get("num_values")
        cells = {}
        for mixer, by_context in by_mixer.items():
            cells[mixer] = {c: Cell(values=[x["test"][metric] for x in rs], seeds=[x["seed"] for x in rs],
                                    wall_s=[x["wall_s"] for x in rs], scored=rs[0]["test"].get("scored", 0),
                                    steps=rs[0].get("steps", 0),
                                    converged=[converged(x) for x in rs],
                                    dirty=any(str(x.get("git_describe") or "").endswith("-dirty") for x in rs),
                                    tokens_seen=rs[0].get("tokens_seen", 0),
                                    curves=[[(h["step"], h[f"valid_{metric}"]) for h in x.get("history", [])
                                             if f"valid_{metric}" in h] for x in rs])
                            for c, rs in sorted(by_context.items())}
        families = {m: next(iter(by_context.values()))[0].get("family", "?") for m, by_context in by_mixer.items()}
        contexts = sorted({c for row in cells.values() for c in row})
        out.append(TaskTable(label=label, task=r0["task"], metric=metric, higher_is_better=r0["higher_is_better"],
                             expect=r0.get("study", {}).get("expect"), note=r0.get("study", {}).get("note", ""),
                             chance=1.0 / classes if metric == "accuracy" and classes else None,
                             cells=cells, families=families,
                             floors={c: floors[(label, c)] for c in contexts if (label, c) in floors},
                             matched={m: matched[(label, m)] for m in cells if (label, m) in matched},
                             jump_at=r0.get("study", {}).get("jump_at")))
    return out


def provenance_summary(records: list[dict]) -> dict:
    """Code versions behind ``records``: describe strings, dirty count, distinct diff hashes."""
    describes = sorted({str(r.get("git_describe")) for r in records})
    dirty = [r for r in records if str(r.get("git_describe") or "").endswith("-dirty")]
    diffs = sorted({str(r.get("git_diff_sha256"))[:12] for r in dirty})
    return {"describes": describes, "dirty": len(dirty), "total": len(records), "diffs": diffs}


def cell_flags(t: TaskTable, mixer: str, context: int) -> str:
    """Markers of one cell: "†" below its floor, "~" a seed not converged, "*" dirty code."""
    cell = t.cells[mixer].get(context)
    if cell is None:
        return ""
    out = ""
    f = t.floors.get(context)
    if f is not None and not beats(cell.mean, cell.spread(t.metric), f["floor"], t.higher_is_better):
        out += " †"
    if any(c is False for c in cell.converged):
        out += " ~"
    if cell.dirty:
        out += " *"
    return out
