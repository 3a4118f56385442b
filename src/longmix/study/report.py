"""Turn a study's run records into a markdown table, PNG plots and a plain-text reading.

Everything here is computed from the records (the lines of ``results.jsonl``); nothing about
the outcome is written in advance. A cell is the mean over seeds of a run's test metric, and
its *spread* is the larger of

* the sample standard deviation over seeds (when there are at least two), and
* for accuracy, the binomial standard error of the evaluation, sqrt(p (1 - p) / n_scored) /
  sqrt(seeds), so that a single seed or two identical seeds do not pretend to be exact.

Two numbers "differ" in the reading only when their difference exceeds the root sum of squares
of their spreads; otherwise the reading says the difference is within the spread.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cell:
    """The runs of one (task label, mixer, context): their test metrics over seeds."""

    values: list[float]
    seeds: list[int]
    wall_s: list[float]
    scored: int  # evaluation targets per run

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
    """All cells of one task label."""

    label: str
    task: str
    metric: str
    higher_is_better: bool
    expect: str | None
    note: str
    chance: float | None
    cells: dict  # mixer -> context -> Cell
    families: dict  # mixer -> family

    @property
    def contexts(self) -> list[int]:
        return sorted({c for row in self.cells.values() for c in row})

    @property
    def mixers(self) -> list[str]:
        return list(self.cells)


def label_of(record: dict) -> str:
    return record.get("study", {}).get("label", record["task"])


def tables(records: list[dict]) -> list[TaskTable]:
    """Group records by task label, then mixer, then context (in order of first appearance)."""
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    first: dict = {}
    for r in records:
        label = label_of(r)
        grouped[label][r["mixer"]][r["context"]].append(r)
        first.setdefault(label, r)
    out = []
    for label, by_mixer in grouped.items():
        r0 = first[label]
        metric = r0["metric"]
        num_classes = r0.get("task_info", {}).get("num_classes")
        cells = {}
        for mixer, by_context in by_mixer.items():
            cells[mixer] = {c: Cell(values=[x["test"][metric] for x in rs], seeds=[x["seed"] for x in rs],
                                    wall_s=[x["wall_s"] for x in rs], scored=rs[0]["test"].get("scored", 0))
                            for c, rs in sorted(by_context.items())}
        families = {m: next(iter(by_context.values()))[0].get("family", "?") for m, by_context in by_mixer.items()}
        out.append(TaskTable(label=label, task=r0["task"], metric=metric, higher_is_better=r0["higher_is_better"],
                             expect=r0.get("study", {}).get("expect"), note=r0.get("study", {}).get("note", ""),
                             chance=1.0 / num_classes if metric == "accuracy" and num_classes else None,
                             cells=cells, families=families))
    return out


# -- markdown -------------------------------------------------------------------------------
def fmt(cell: Cell | None, metric: str) -> str:
    if cell is None:
        return "—"
    text = f"{cell.mean:.3f}"
    if cell.n >= 2:
        text += f" ± {cell.std:.3f}"
    return text


METRIC_WORDS = {"accuracy": "test accuracy (higher is better)",
                "bits_per_byte": "test bits per byte on the last positions (lower is better)",
                "bits_per_token": "test bits per token on the last positions (lower is better)"}


def markdown(tabs: list[TaskTable], header: dict, plots: dict[str, str], reading_text: str,
             skipped: list[tuple[str, str, str]] = ()) -> str:
    """The report: a table per task (mixer x context -> mean ± std over seeds), its plot, the
    cost of runs, and the reading."""
    lines = [f"# Does long context help? Study `{header.get('grid', '?')}`", ""]
    lines += [f"- command: `{header.get('command', '')}`",
              f"- finished runs: {header.get('runs_finished')} of {header.get('runs_planned')}; "
              f"seeds: {header.get('seeds')}; total training wall time: {header.get('wall_min', 0):.1f} min",
              f"- training: {header.get('train', '')}",
              f"- machine: {header.get('machine', '')}; date: {header.get('date', '')}; "
              f"git commit: {header.get('git_commit') or 'unknown'}",
              "- cells: mean ± sample std over seeds of the test metric; — = not run (yet)", ""]
    for t in tabs:
        lines.append(f"## {t.label}")
        lines.append("")
        desc = f"Task `{t.task}`, {METRIC_WORDS.get(t.metric, t.metric)}"
        if t.chance is not None:
            desc += f"; chance {t.chance:.3f}"
        lines.append(desc + (f". {t.note[:1].upper()}{t.note[1:]}." if t.note else "."))
        lines.append("")
        lines.append("| mixer (family) | " + " | ".join(f"C={c}" for c in t.contexts) + " |")
        lines.append("|---|" + "---:|" * len(t.contexts))
        for m in t.mixers:
            row = [fmt(t.cells[m].get(c), t.metric) for c in t.contexts]
            lines.append(f"| {m} ({t.families[m]}) | " + " | ".join(row) + " |")
        lines.append("")
        if t.label in plots:
            lines += [f"![{t.label}]({plots[t.label]})", ""]
    lines += cost_table(tabs)
    if skipped:
        lines += ["Skipped combinations:", ""]
        lines += [f"- {label} x {mixer}: {reason}" for label, mixer, reason in skipped]
        lines.append("")
    lines += ["## Reading", "", "```", reading_text.rstrip(), "```", ""]
    return "\n".join(lines)


def cost_table(tabs: list[TaskTable]) -> list[str]:
    """Mean wall seconds per run, by mixer and context, over every task and seed."""
    walls: dict = defaultdict(lambda: defaultdict(list))
    for t in tabs:
        for m, row in t.cells.items():
            for c, cell in row.items():
                walls[m][c] += cell.wall_s
    if not walls:
        return []
    contexts = sorted({c for row in walls.values() for c in row})
    lines = ["## Cost", "", "Mean wall seconds per run (all tasks and seeds); every run takes the same "
             "number of steps and examples.", "",
             "| mixer | " + " | ".join(f"C={c}" for c in contexts) + " |", "|---|" + "---:|" * len(contexts)]
    for m, row in walls.items():
        lines.append(f"| {m} | " + " | ".join(f"{statistics.fmean(row[c]):.1f}" if c in row else "—"
                                              for c in contexts) + " |")
    return lines + [""]


# -- plots ----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def draw(t: TaskTable, ax, title: str) -> None:
    """Metric vs context (log2 axis) on ``ax``, one line per mixer, error bars = std over seeds."""
    for m in t.mixers:
        cs = sorted(t.cells[m])
        ax.errorbar(cs, [t.cells[m][c].mean for c in cs], yerr=[t.cells[m][c].std for c in cs],
                    marker="o", capsize=3, label=f"{m} ({t.families[m]})")
    if t.chance is not None:
        ax.axhline(t.chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(t.contexts)
    ax.set_xticklabels([str(c) for c in t.contexts])
    ax.set_xlabel("context C (tokens the model sees)")
    ax.set_ylabel(t.metric.replace("_", " ") + (" (higher is better)" if t.higher_is_better else " (lower is better)"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot(t: TaskTable, path: Path, title_suffix: str = "") -> Path:
    """One PNG for one task."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    draw(t, ax, f"{t.label}{title_suffix}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_plot(tabs: list[TaskTable], path: Path) -> Path:
    """Every task side by side in one PNG (for the README)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tabs), figsize=(5.2 * len(tabs), 4.0), dpi=100, squeeze=False)
    for t, ax in zip(tabs, axes[0]):
        draw(t, ax, t.label)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the reading ----------------------------------------------------------------------------
def _differs(a: Cell, b: Cell, metric: str) -> bool:
    return abs(a.mean - b.mean) > math.hypot(a.spread(metric), b.spread(metric))


def trend(t: TaskTable, mixer: str) -> tuple[str, str]:
    """(kind, sentence) describing how ``mixer``'s metric changes from the shortest to the longest
    context; kind is "better", "worse" or "flat" (within the spread)."""
    row = t.cells[mixer]
    cs = sorted(row)
    lo, hi = row[cs[0]], row[cs[-1]]
    name = t.metric.replace("_", " ")
    if len(cs) < 2:
        return "flat", f"{mixer} {name} {lo.mean:.3f} at C={cs[0]} (one context only)"
    if not _differs(lo, hi, t.metric):
        vals = [row[c].mean for c in cs]
        return "flat", (f"{mixer} {name} stays within the spread from C={cs[0]} to C={cs[-1]} "
                        f"({min(vals):.3f}..{max(vals):.3f}; spread ±{max(row[c].spread(t.metric) for c in cs):.3f})")
    verb = "rises" if hi.mean > lo.mean else "falls"
    better = (hi.mean > lo.mean) == t.higher_is_better
    sentence = f"{mixer} {name} {verb} from {lo.mean:.3f} at C={cs[0]} to {hi.mean:.3f} at C={cs[-1]}"
    best_c = (max if t.higher_is_better else min)(cs, key=lambda c: row[c].mean)
    if best_c not in (cs[0], cs[-1]) and _differs(row[best_c], hi, t.metric):
        sentence += f", best at C={best_c} ({row[best_c].mean:.3f})"
    return ("better" if better else "worse"), sentence


def ranking(t: TaskTable, context: int) -> str | None:
    """Who is best at ``context``, and whether the lead exceeds the spread."""
    here = [(m, t.cells[m][context]) for m in t.mixers if context in t.cells[m]]
    if len(here) < 2:
        return None
    here.sort(key=lambda mc: mc[1].mean, reverse=t.higher_is_better)
    (m1, c1), (m2, c2) = here[0], here[1]
    gap = "ahead beyond the spread" if _differs(c1, c2, t.metric) else "but within the spread of"
    worst_m, worst_c = here[-1]
    text = (f"at C={context} the best is {m1} ({t.families[m1]}, {c1.mean:.3f}), {gap} "
            f"{m2} ({c2.mean:.3f})")
    if len(here) > 2:
        text += f"; the worst is {worst_m} ({worst_c.mean:.3f})"
    return text


def reading(tabs: list[TaskTable]) -> str:
    """A short plain-text reading of the numbers, task by task, then against the hypotheses."""
    out, long_rises, long_total, local_flat, local_total = [], [], 0, [], 0
    for t in tabs:
        seeds = max(c.n for row in t.cells.values() for c in row.values())
        head = f"{t.label} ({t.metric.replace('_', ' ')}, {'higher' if t.higher_is_better else 'lower'} is better"
        head += f", chance {t.chance:.3f}" if t.chance is not None else ""
        head += f", {seeds} seed{'s' if seeds > 1 else ''}"
        if seeds >= 2:
            head += ")"
        elif t.metric == "accuracy":
            head += "; one seed: the spread is the evaluation's sampling error only)"
        else:
            head += "; one seed: no spread measured, every difference counts)"
        out.append(head + ":")
        kinds = {}
        for m in t.mixers:
            kind, sentence = trend(t, m)
            kinds[m] = kind
            at_chance = ""
            if t.chance is not None:
                row = t.cells[m]
                if all(not _differs(row[c], Cell([t.chance], [0], [0.0], row[c].scored), t.metric) for c in row):
                    at_chance = " (indistinguishable from chance at every context)"
            out.append(f"  - {sentence}{at_chance}.")
        if (r := ranking(t, t.contexts[-1])):
            out.append(f"  - {r}.")
        if t.expect == "rises":
            long_total += len(kinds)
            long_rises += [f"{t.label}/{m}" for m, k in kinds.items() if k == "better"]
        elif t.expect == "flat":
            local_total += len(kinds)
            local_flat += [f"{t.label}/{m}" for m, k in kinds.items() if k == "flat"]
        out.append("")
    out.append("Against the hypotheses:")
    if long_total:
        out.append(f"  - long-range tasks: the metric improves with context beyond the spread for "
                   f"{len(long_rises)} of {long_total} task/mixer pairs"
                   + (f" ({', '.join(long_rises)})" if long_rises else "") + ".")
    if local_total:
        out.append(f"  - local tasks: context changes the metric by no more than the spread for "
                   f"{len(local_flat)} of {local_total} task/mixer pairs"
                   + (f" ({', '.join(local_flat)})" if local_flat else "") + ".")
    families = _family_lead(tabs)
    if families:
        out.append(f"  - at the longest context of each long-range task: {families}.")
    out.append("  - caveat: small models trained briefly; a mixer at chance may need more steps, not "
               "lack the ability. Compare the cost table: runs differ in wall time at equal steps.")
    return "\n".join(out) + "\n"


def _family_lead(tabs: list[TaskTable]) -> str:
    parts = []
    for t in tabs:
        if t.expect != "rises" or len(t.mixers) < 2:
            continue
        c = t.contexts[-1]
        here = sorted(((m, t.cells[m][c]) for m in t.mixers if c in t.cells[m]),
                      key=lambda mc: mc[1].mean, reverse=t.higher_is_better)
        if len(here) < 2:
            continue
        leaders = [here[0][0]] + [m for m, cell in here[1:] if not _differs(here[0][1], cell, t.metric)]
        fams = sorted({t.families[m] for m in leaders})
        parts.append(f"{t.label}: {', '.join(leaders)} lead ({'/'.join(fams)})")
    return "; ".join(parts)
