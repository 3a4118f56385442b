"""How long a grid cell must train to learn its task (MQAR by default): one long run, its curve.

    python benchmarks/mqar_steps.py --steps 6000                        # the grid's softmax cell
    python benchmarks/mqar_steps.py --steps 6000 --mixer hyena --lr 3e-3
    python benchmarks/mqar_steps.py --task distance-100 --context 128 --mixer mamba --lr 3e-3 --steps 3000
    python benchmarks/mqar_steps.py --param length=64 --param min_distance=16 --context 64 --steps 3000

The task is a task of the small grid exactly, by its label (default "mqar": ``mqar_all``, 8
key-value pairs at least 64 tokens before the end, every query scored), at ``--context`` (default
the task's longest in the grid), and the model is the grid's cell for ``--mixer`` (its matched
width, depth, batch, pooling), trained for ``--steps`` instead of the grid's 800. Pass the
learning rate (and, for attention-like mixers, positions) that the cell's validation sweep
chose: the defaults are softmax's on MQAR (3e-3, sinusoidal). ``--dim``, ``--heads`` change one
setting at a time. ``--param KEY=VALUE`` changes one of the task's parameters (a smaller MQAR,
say); such runs are not the grid's cell, so they go to files of their own, named by the changes.

Each run is the trainer's (checkpointed under ``--runs``, resumed by a rerun), and its record,
with the validation curve and the test accuracy, goes to ``<task>_steps.jsonl`` (append-only; a
rerun of a setting supersedes its row in the table, not its line). ``<task>_steps.md`` tables
every setting -- the first step at which validation reached 0.5 and 0.9, the final test
accuracy, the time -- and ``<task>_steps.png`` draws the curves.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from longmix import mixers
from longmix.fileio import append_record, atomic_write_text, read_records
from longmix.machine import markdown as machine_line
from longmix.plotting import pyplot
from longmix.study.grid import POSITIONAL_FAMILIES, SMALL, StudyTask
from longmix.train import train
from longmix.bench.record import command_line

THRESHOLDS = (0.5, 0.9)


def grid_task(label: str, changes: dict | None = None) -> StudyTask:
    """The small grid's task ``label``, its parameters updated by ``changes``."""
    tasks = {t.label: t for t in SMALL.tasks}
    if label not in tasks:
        raise SystemExit(f"--task must be a task of the small grid, one of {sorted(tasks)}; got {label!r}")
    return replace(tasks[label], params={**tasks[label].params, **(changes or {})})


def parse_param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value), the value read as JSON (a number, a list), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def stem(label: str, changes: dict) -> str:
    """The name of the result files: ``<task>_steps``, the changed parameters in between."""
    return "_".join([label, *(f"{k}{v}" for k, v in sorted(changes.items())), "steps"])


def config(task: StudyTask, context: int, mixer: str, steps: int, dim: int | None, heads: int, lr: float,
           positional: str, runs: Path, progress: bool, seed: int = 0):
    """The grid's cell of ``mixer`` on ``task`` at ``context``, with the given settings."""
    cfg = SMALL.base_config(task, mixer, context, seed=seed, steps=steps, heads=heads, lr=lr,
                            dim=dim if dim is not None else SMALL.matched(task, mixer)["dim"],
                            positional=positional, warmup=min(SMALL.train["warmup"], steps),
                            eval_every=max(100, steps // 40), checkpoint_every=250, progress=progress)
    return replace(cfg, out=str(runs / cfg.run_id()))


def family(mixer: str) -> str:
    return mixers.get_class(mixer).taxonomy.family


def chance(record: dict) -> float | None:
    """A uniform guess's accuracy: over the classes, or over MQAR's values."""
    info = record["task_info"]
    count = info.get("num_classes") or info["params"].get("num_values")
    return 1 / count if count else None


def first_step(history: list[dict], threshold: float) -> int | None:
    """The first evaluated step whose validation accuracy reached ``threshold``."""
    return next((h["step"] for h in history if h["valid_accuracy"] >= threshold), None)


def markdown_text(label: str, records: list[dict], changes: dict | None = None) -> str:
    head = ["mixer", "C", "dim", "heads", "positions", "lr", "seed", "parameters", "steps"] + \
           [f"valid >= {t} at step" for t in THRESHOLDS] + ["final valid", "test accuracy", "minutes", "command"]
    first = records[0]
    what = f"with {changes} (the small grid's task changed, so not its cell)" if changes \
        else "(a task of the small grid)"
    lines = [f"# {label} {what}: how many steps a mixer needs", "",
             f"Task `{first['task']}` {first['config']['task_params']}; chance {chance(first):.3f}. Every row "
             "one run; '-' = never within its steps.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        c = r["config"]
        reached = [first_step(r["history"], t) for t in THRESHOLDS]
        cells = [c["mixer"], c["context"], c["dim"], c["heads"], r["positional"], c["lr"], c["seed"],
                 r["parameters"], c["steps"], *("-" if s is None else s for s in reached),
                 f"{r['history'][-1]['valid_accuracy']:.3f}",
                 f"{r['test']['accuracy']:.3f}", f"{r['wall_s'] / 60:.1f}", f"`{r['command']}`"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Commits: " + ", ".join(sorted({f"{r['git_describe']} ({r['date']})" for r in records})), "",
              machine_line(records[-1]["machine"])]
    return "\n".join(lines) + "\n"


def plot(label: str, records: list[dict], path: Path, changes: dict | None = None) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(11, 4))
    colors = plt.get_cmap("tab20").colors  # tab10's cycle repeats a color from the 11th curve
    for i, r in enumerate(records):
        c = r["config"]
        ax.plot([h["step"] for h in r["history"]], [h["valid_accuracy"] for h in r["history"]],
                color=colors[i % len(colors)], ls="--" if r["positional"] == "learned" else "-",
                label=f"{c['mixer']}, C {c['context']}, dim {c['dim']}, {c['heads']} heads, {r['positional']} "
                      f"positions, lr {c['lr']}, seed {c['seed']}, {c['steps']} steps")
    if chance(records[0]) is not None:
        ax.axhline(chance(records[0]), color="gray", ls=":", label="chance")
    ax.axhline(0.9, color="gray", ls="--", label="0.9")
    changed = ", task changed: " + ", ".join(f"{k}={v}" for k, v in changes.items()) if changes else ""
    ax.set(xlabel="step", ylabel="valid accuracy", ylim=(0, 1), title=label + changed)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the curves fill the axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mqar", help="a task label of the small grid (default mqar)")
    parser.add_argument("--context", type=int, default=None, help="default: the task's longest in the grid")
    parser.add_argument("--mixer", default="softmax")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=None, help="default: the grid's matched width")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the grid's seed of the run (its data and init)")
    parser.add_argument("--param", type=parse_param, action="append", default=[], metavar="KEY=VALUE",
                        help="change a parameter of the task (repeatable); the run is then not the grid's cell")
    parser.add_argument("--lr", type=float, default=3e-3, help="default: softmax's sweep choice on MQAR")
    parser.add_argument("--positional", default=None,
                        help="default: sinusoidal (softmax's sweep choice on MQAR) for the families the grid "
                             "gives positions, auto (none added) for the others, as the grid does")
    parser.add_argument("--runs", type=Path, default=Path("runs/mqar_steps"), help="checkpoints (resumable)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    command = command_line("mqar_steps.py", argv)

    changes = dict(args.param)
    task = grid_task(args.task, changes)
    context = args.context or SMALL.contexts_of(task)[-1]
    if context > task.params.get("length", context):  # beyond it, the window would be left padding
        parser.error(f"--context {context} exceeds the task's length {task.params['length']}; pass --context")
    positional = args.positional or ("sinusoidal" if family(args.mixer) in POSITIONAL_FAMILIES else "auto")
    cfg = config(task, context, args.mixer, args.steps, args.dim, args.heads, args.lr, positional, args.runs,
                 not args.quiet, args.seed)
    record = {**train(cfg), "command": command}
    name = stem(args.task, changes)
    path = args.out_dir / f"{name}.jsonl"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    append_record(path, record)
    records = list({r["run_id"]: r for r in read_records(path)}.values())  # the latest line of each setting
    atomic_write_text(args.out_dir / f"{name}.md", markdown_text(args.task, records, changes))
    plot(args.task, records, args.out_dir / f"{name}.png", changes)
    print(markdown_text(args.task, [record], changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
