"""Turn a study's run records into a markdown table, PNG plots and a plain-text reading.

Everything here is computed from the records (the lines of ``results.jsonl``) and the floors;
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
from pathlib import Path

from ..plotting import pyplot
from .floors import beats

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


# -- markdown -------------------------------------------------------------------------------
def _diffs(hashes: list[str], shown: int = 5) -> str:
    """The uncommitted diffs behind dirty records: their hashes, or how many when there are many
    (each record's own is in results.jsonl)."""
    if len(hashes) <= shown:
        return f"diff sha256 {', '.join(hashes)}"
    return f"{len(hashes)} distinct uncommitted diffs; each record's sha256 is in results.jsonl"


def fmt(cell: Cell | None, metric: str, flags: str = "") -> str:
    if cell is None:
        return "—"
    text = f"{cell.mean:.3f}"
    if cell.n >= 2:
        text += f" ± {cell.std:.3f}"
    return text + flags


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


METRIC_WORDS = {"accuracy": "test accuracy (higher is better)",
                "bits_per_byte": "test bits per byte on the last positions (lower is better)",
                "bits_per_token": "test bits per token on the last positions (lower is better)"}
FLOOR_ROWS = {"accuracy": ("chance", "majority"),
              "bits_per_byte": ("unigram", "bigram", "trigram", "ngram", "ngram_full"),
              "bits_per_token": ("unigram", "bigram", "trigram", "ngram", "ngram_full")}


def _floor_label(name: str, f: dict) -> str:
    if name == "ngram":
        return f"n-gram, best order on valid ({f['ngram_order']}), {f['ngram_bytes']} train bytes (the floor)"
    if name == "ngram_full":
        return f"n-gram on the train split's first bytes (order {f['ngram_full_order']}; reference)"
    if name in ("unigram", "bigram", "trigram"):
        return f"{name}, {f['ngram_bytes']} train bytes"
    return name


def markdown(tabs: list[TaskTable], header: dict, plots: dict, reading_text: str,
             skipped: list[tuple[str, str, str]] = (), sweep_table: dict | None = None,
             choices: dict | None = None) -> str:
    """The report: per task a table (mixer x context -> mean ± std over seeds, with model sizes,
    floors and flags), the sweep, the plots; then provenance, cost and the reading."""
    prov = header.get("provenance", {})
    lines = [f"# Does long context help? Study `{header.get('grid', '?')}`", ""]
    lines += [f"- command: `{header.get('command', '')}`",
              f"- finished grid runs: {header.get('runs_finished')} of {header.get('runs_planned')}; "
              f"sweep runs: {header.get('sweep_finished')} of {header.get('sweep_planned')}; "
              f"seeds: {header.get('seeds')}; total training wall time: {header.get('wall_min', 0):.1f} min",
              f"- training: {header.get('train', '')}",
              f"- validation sweep per (task, mixer) at the task's longest context, seed 0: lr in "
              f"{{{header.get('lrs', '')}}}; positions in {{{header.get('positionals', '')}}} for "
              "attention-like mixers; the best final VALIDATION metric wins (test is never looked at)",
              f"- machine: {header.get('machine', '')}; date: {header.get('date', '')}",
              f"- code: {', '.join(prov.get('describes', [])) or 'unknown'}; "
              f"{prov.get('dirty', 0)} of {prov.get('total', 0)} records from a dirty tree"
              + (f" ({_diffs(prov.get('diffs', []))})" if prov.get("dirty") else ""),
              "- cells: mean ± sample std over seeds of the test metric; — = not run (yet). "
              "† = does not beat the floor by more than its spread; ~ = a seed not converged "
              f"(validation moved > {CONVERGED_TOL['accuracy']} over the last third); * = dirty tree", ""]
    if header.get("diverged"):
        lines += [f"- diverged grid runs (left out of the tables): {', '.join(header['diverged'])}", ""]
    for t in tabs:
        lines.append(f"## {t.label}")
        lines.append("")
        desc = f"Task `{t.task}`, {METRIC_WORDS.get(t.metric, t.metric)}"
        if t.chance is not None:
            desc += f"; chance {t.chance:.3f}"
        lines.append(desc + (f". {t.note[:1].upper()}{t.note[1:]}." if t.note else "."))
        lines.append("")
        lines.append("| mixer (family) | params (dim) | " + " | ".join(f"C={c}" for c in t.contexts) + " |")
        lines.append("|---|---:|" + "---:|" * len(t.contexts))
        for m in t.mixers:
            size = t.matched.get(m)
            size_text = f"{size['parameters']} ({size['dim']})" if size else "?"
            row = [fmt(t.cells[m].get(c), t.metric, cell_flags(t, m, c)) for c in t.contexts]
            lines.append(f"| {m} ({t.families[m]}) | {size_text} | " + " | ".join(row) + " |")
        for name in FLOOR_ROWS.get(t.metric, ()):
            if all(name in t.floors.get(c, {}) for c in t.contexts) and t.floors:
                f0 = t.floors[t.contexts[0]]
                lines.append(f"| floor: {_floor_label(name, f0)} | | "
                             + " | ".join(f"{t.floors[c][name]:.3f}" for c in t.contexts) + " |")
        lines.append("")
        ref = next((v["reference"] for v in t.matched.values() if v.get("reference")), None)
        if ref:
            lines.append(f"Parameters exclude a learned position table; widths are matched to {ref} "
                         "parameters (within ±10%).")
        tokens = {c: next(iter(t.cells[m][c].tokens_seen for m in t.mixers if c in t.cells[m]))
                  for c in t.contexts}
        steps = sorted({cell.steps for row in t.cells.values() for cell in row.values()})
        lines.append(f"Training steps per run: {', '.join(map(str, steps))}. Input tokens seen per run: "
                     + ", ".join(f"C={c}: {n}" for c, n in tokens.items()) + ".")
        untrained = [m for m in t.mixers if t.trained(m) is False]
        if untrained:
            lines.append(f"**Not trained** (below the floor at C={t.contexts[-1]}): {', '.join(untrained)}; "
                         "the reading makes no claim from these rows.")
        lines.append("")
        if sweep_table:
            lines += sweep_lines(t, sweep_table, choices or {})
        if t.label in plots:
            lines += [f"![{t.label}]({plots[t.label]['plot']})", "",
                      f"![{t.label} training curves]({plots[t.label]['curves']})", ""]
    lines += cost_table(tabs)
    if skipped:
        lines += ["Skipped combinations:", ""]
        lines += [f"- {label} x {mixer}: {reason}" for label, mixer, reason in skipped]
        lines.append("")
    lines += ["## Reading", "", "```", reading_text.rstrip(), "```", ""]
    return "\n".join(lines)


def sweep_lines(t: TaskTable, sweep_table: dict, choices: dict) -> list[str]:
    """The validation sweep of task ``t``: each candidate's final validation metric, the choice."""
    rows = {m: sweep_table[(t.label, m)] for m in t.mixers if (t.label, m) in sweep_table}
    if not rows:
        return []
    out = [f"Validation sweep ({t.metric.replace('_', ' ')} on the valid split; **bold** = chosen):", "",
           "| mixer | candidates |", "|---|---|"]
    for m, cands in rows.items():
        chosen = choices.get((t.label, m))
        parts = []
        for cand, value in cands:
            text = f"lr {cand['lr']:g}" + (f", {cand['positional']}" if cand["positional"] != "auto" else "")
            text += f": {value:.3f}" if value is not None else ": —"
            parts.append(f"**{text}**" if cand == chosen else text)
        out.append(f"| {m} | " + "; ".join(parts) + " |")
    return out + [""]


def cost_table(tabs: list[TaskTable]) -> list[str]:
    """Mean wall milliseconds per training step, by mixer and context, over every task and seed
    (tasks may train different numbers of steps)."""
    walls: dict = defaultdict(lambda: defaultdict(list))
    for t in tabs:
        for m, row in t.cells.items():
            for c, cell in row.items():
                walls[m][c] += [1e3 * wall / cell.steps for wall in cell.wall_s if cell.steps]
    if not walls:
        return []
    contexts = sorted({c for row in walls.values() for c in row})
    lines = ["## Cost", "", "Mean wall milliseconds per training step (a run's wall time, its evaluations "
             "included, over its steps; all tasks and seeds). Each task's steps per run are under its table.", "",
             "| mixer | " + " | ".join(f"C={c}" for c in contexts) + " |", "|---|" + "---:|" * len(contexts)]
    for m, row in walls.items():
        lines.append(f"| {m} | " + " | ".join(f"{statistics.fmean(row[c]):.1f}" if row.get(c) else "—"
                                              for c in contexts) + " |")
    return lines + [""]


# -- plots ----------------------------------------------------------------------------------
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    draw(t, ax, f"{t.label}{title_suffix}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def curves_plot(t: TaskTable, path: Path) -> Path:
    """Validation metric vs training step at the task's longest context, every seed, one
    colour per mixer, with the floor: what the converged / not-converged flags are read from."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    c = t.contexts[-1]
    for i, m in enumerate(t.mixers):
        cell = t.cells[m].get(c)
        for j, curve in enumerate(cell.curves if cell else []):
            if curve:
                ax.plot(*zip(*curve), color=f"C{i}", alpha=0.8, label=f"{m} ({t.families[m]})" if j == 0 else None)
    if c in t.floors:
        ax.axhline(t.floors[c]["floor"], color="gray", linestyle="--", linewidth=1,
                   label=f"floor ({t.floors[c]['floor_name']})")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation " + t.metric.replace("_", " "))
    ax.set_title(f"{t.label}: training curves at C={c} (all seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_plot(tabs: list[TaskTable], path: Path) -> Path:
    """Every task side by side in one PNG (for the README)."""
    plt = pyplot()
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


def cite(t: TaskTable, mixer: str, *contexts: int) -> str:
    """The cells a sentence rests on, e.g. "(passkey-far, softmax, C=512 vs C=32)"."""
    return f"({t.label}, {mixer}, " + " vs ".join(f"C={c}" for c in contexts) + ")"


def trend(t: TaskTable, mixer: str) -> tuple[str, str]:
    """(kind, sentence) describing how ``mixer``'s metric changes from the shortest to the longest
    context, citing its cells; kind is "better", "worse", "flat" (within the spread) or "single"
    (one context measured: no trend, so it counts for no hypothesis)."""
    row = t.cells[mixer]
    cs = sorted(row)
    lo, hi = row[cs[0]], row[cs[-1]]
    name = t.metric.replace("_", " ")
    if len(cs) < 2:
        return "single", f"{mixer} {name} {lo.mean:.3f} at C={cs[0]}, one context only {cite(t, mixer, cs[0])}"
    if not _differs(lo, hi, t.metric):
        vals = [row[c].mean for c in cs]
        return "flat", (f"{mixer} {name} stays within the spread from C={cs[0]} to C={cs[-1]} "
                        f"({min(vals):.3f}..{max(vals):.3f}; spread ±{max(row[c].spread(t.metric) for c in cs):.3f}) "
                        f"{cite(t, mixer, cs[-1], cs[0])}")
    verb = "rises" if hi.mean > lo.mean else "falls"
    better = (hi.mean > lo.mean) == t.higher_is_better
    sentence = f"{mixer} {name} {verb} from {lo.mean:.3f} at C={cs[0]} to {hi.mean:.3f} at C={cs[-1]}"
    best_c = (max if t.higher_is_better else min)(cs, key=lambda c: row[c].mean)
    cited = [cs[-1], cs[0]]
    if best_c not in (cs[0], cs[-1]) and _differs(row[best_c], hi, t.metric):
        sentence += f", best at C={best_c} ({row[best_c].mean:.3f})"
        cited.append(best_c)
    return ("better" if better else "worse"), f"{sentence} {cite(t, mixer, *cited)}"


def jump(t: TaskTable, mixer: str) -> tuple[bool | None, str] | None:
    """For a control with the answer at distance ``jump_at``: compare the longest context below
    it with the shortest at or above it. (jumped, sentence), or None without both cells."""
    row = t.cells[mixer]
    below = [c for c in row if c < t.jump_at]
    above = [c for c in row if c >= t.jump_at]
    if not below or not above:
        return None
    b, a = max(below), min(above)
    jumped = _differs(row[a], row[b], t.metric) and (row[a].mean > row[b].mean) == t.higher_is_better
    verb = "jumps" if jumped else "does not jump beyond the spread"
    return jumped, (f"{mixer} {verb} where C crosses the key's distance {t.jump_at}: {row[b].mean:.3f} at "
                    f"C={b}, {row[a].mean:.3f} at C={a} {cite(t, mixer, a, b)}")


def ranking(t: TaskTable, context: int, trained: list[str]) -> str | None:
    """Who is best at ``context`` among the ``trained`` mixers, and whether the lead exceeds the spread."""
    here = [(m, t.cells[m][context]) for m in trained if context in t.cells[m]]
    if len(here) < 2:
        return None
    here.sort(key=lambda mc: mc[1].mean, reverse=t.higher_is_better)
    (m1, c1), (m2, c2) = here[0], here[1]
    gap = "ahead beyond the spread of" if _differs(c1, c2, t.metric) else "but within the spread of"
    text = (f"at C={context} the best trained mixer is {m1} ({t.families[m1]}, {c1.mean:.3f}), {gap} "
            f"{m2} ({c2.mean:.3f}) ({t.label}, {m1} vs {m2}, C={context})")
    return text


def reading(tabs: list[TaskTable]) -> str:
    """A plain-text reading of the numbers, task by task, then against the hypotheses. Every
    sentence names the cells it rests on; rows that do not beat their floor support no claim."""
    out, long_rises, long_total, local_flat, local_total, jumps, jump_total = [], [], 0, [], 0, [], 0
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
        trained = []
        for m in t.mixers:
            c = max(t.cells[m])
            status = t.trained(m)
            if status is False:
                f = t.floors[c]
                out.append(f"  - no claim from {m}: at C={c} it scores {t.cells[m][c].mean:.3f}, not beyond "
                           f"the {f['floor_name']} floor {f['floor']:.3f} by more than its spread, so it is "
                           f"not trained {cite(t, m, c)}.")
                continue
            trained.append(m)
            kind, sentence = trend(t, m)
            unconverged = [c for c, cell in t.cells[m].items() if any(v is False for v in cell.converged)]
            note = f"; not converged at C={','.join(map(str, unconverged))}" if unconverged else ""
            floor_note = "" if status else " (no floor known)"
            out.append(f"  - {sentence}{note}{floor_note}.")
            if t.expect == "jump" and t.jump_at is not None and (j := jump(t, m)):
                jump_total += 1
                jumps += [f"{t.label}/{m}"] if j[0] else []
                out.append(f"  - {j[1]}.")
            elif kind == "single":
                pass
            elif t.expect == "rises":
                long_total += 1
                long_rises += [f"{t.label}/{m}"] if kind == "better" else []
            elif t.expect == "flat":
                local_total += 1
                local_flat += [f"{t.label}/{m}"] if kind == "flat" else []
        if (r := ranking(t, t.contexts[-1], trained)):
            out.append(f"  - {r}.")
        out.append("")
    out.append("Against the hypotheses (trained rows only):")
    if jump_total:
        out.append(f"  - controls: accuracy jumps where C crosses the key's distance for {len(jumps)} of "
                   f"{jump_total} trained task/mixer pairs" + (f" ({', '.join(jumps)})" if jumps else "") + ".")
    if long_total:
        out.append(f"  - long-range tasks: the metric improves with context beyond the spread for "
                   f"{len(long_rises)} of {long_total} trained task/mixer pairs"
                   + (f" ({', '.join(long_rises)})" if long_rises else "") + ".")
    if local_total:
        out.append(f"  - local tasks: context changes the metric by no more than the spread for "
                   f"{len(local_flat)} of {local_total} trained task/mixer pairs"
                   + (f" ({', '.join(local_flat)})" if local_flat else "") + ".")
    out.append("  - caveats: small models trained briefly; a mixer below its floor or not "
               "converged may need more steps or another setting, not lack the ability. Learning rates "
               "and positions were chosen at the longest context only. Compare the cost table: runs "
               "differ in wall time at equal steps.")
    return "\n".join(out) + "\n"
