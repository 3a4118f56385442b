"""report.md: per task a table of cells with sizes, floors and flags, the validation sweep and
the plots; then provenance, the cost of each mixer, and the reading."""
from __future__ import annotations

import statistics
from collections import defaultdict

from .tables import CONVERGED_TOL, Cell, TaskTable, cell_flags


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
