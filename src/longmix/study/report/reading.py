"""reading.txt: a plain-text reading of the numbers, task by task, then against the hypotheses.

Two numbers "differ" only when their difference exceeds the root sum of squares of their
spreads; every sentence names the cells it rests on.
"""
from __future__ import annotations

import math

from .tables import Cell, TaskTable


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
