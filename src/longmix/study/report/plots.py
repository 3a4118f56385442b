"""The report's PNGs: metric against context per task, training curves, every task side by side."""
from __future__ import annotations

from pathlib import Path

from ...plotting import pyplot
from .tables import TaskTable


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
