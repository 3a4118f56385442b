"""How long a mixer must train on the small grid's MQAR task to recall: one long run, its curve.

    python benchmarks/mqar_steps.py --steps 6000                        # the grid's softmax cell
    python benchmarks/mqar_steps.py --steps 6000 --mixer hyena --lr 3e-3

The task is the small grid's "mqar" exactly (``mqar_all``: 8 key-value pairs at least 64 tokens
before the end, every query scored, C = 256) and the model is the grid's cell for ``--mixer``
(its matched width, depth, batch, pooling), trained for ``--steps`` instead of the grid's 800.
Pass the learning rate (and, for attention-like mixers, positions) that the cell's validation
sweep chose: the defaults are softmax's (3e-3, sinusoidal). ``--dim``, ``--heads`` change one
setting at a time. Each run is the trainer's (checkpointed under ``--runs``, resumed
by a rerun), and its record, with the validation curve and the test accuracy, goes to
``mqar_steps.jsonl`` (append-only; a rerun of a setting supersedes its row in the table,
not its line). ``mqar_steps.md`` tables every setting -- the first step at which validation reached 0.5 and 0.9, the final test
accuracy, the time -- and ``mqar_steps.png`` draws the curves.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from longmix.fileio import append_record, atomic_write_text, read_records
from longmix.machine import markdown as machine_line
from longmix import mixers
from longmix.study.grid import POSITIONAL_FAMILIES, SMALL
from longmix.train import train

TASK = next(t for t in SMALL.tasks if t.label == "mqar")
CONTEXT = 256
THRESHOLDS = (0.5, 0.9)


def config(mixer: str, steps: int, dim: int | None, heads: int, lr: float, positional: str, runs: Path,
           progress: bool):
    """The grid's cell of ``mixer`` on MQAR at C = 256, with the given settings."""
    cfg = SMALL.base_config(TASK, mixer, CONTEXT, seed=0, steps=steps, heads=heads, lr=lr,
                            positional=positional, warmup=min(SMALL.train["warmup"], steps),
                            eval_every=max(100, steps // 40), checkpoint_every=250)
    cfg = replace(cfg, dim=dim if dim is not None else SMALL.matched(TASK, mixer)["dim"], progress=progress)
    return replace(cfg, out=str(runs / cfg.run_id()))


def family(mixer: str) -> str:
    return mixers.get_class(mixer).taxonomy.family


def first_step(history: list[dict], threshold: float) -> int | None:
    """The first evaluated step whose validation accuracy reached ``threshold``."""
    return next((h["step"] for h in history if h["valid_accuracy"] >= threshold), None)


def markdown_text(records: list[dict]) -> str:
    head = ["mixer", "dim", "heads", "lr", "parameters", "steps"] + [f"valid >= {t} at step" for t in THRESHOLDS] + \
           ["final valid", "test accuracy", "minutes", "command"]
    lines = [f"# MQAR (the small grid's task, C = {CONTEXT}): how many steps a mixer needs", "",
             f"Task `{TASK.task}` {TASK.params}; chance {1 / TASK.params['num_values']:.3f}. Every row one run "
             "(seed 0); '-' = never within its steps.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        c = r["config"]
        reached = [first_step(r["history"], t) for t in THRESHOLDS]
        cells = [c["mixer"], c["dim"], c["heads"], c["lr"], r["parameters"], c["steps"],
                 *("-" if s is None else s for s in reached), f"{r['history'][-1]['valid_accuracy']:.3f}",
                 f"{r['test']['accuracy']:.3f}", f"{r['wall_s'] / 60:.1f}", f"`{r['command']}`"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Commits: " + ", ".join(sorted({f"{r['git_describe']} ({r['date']})" for r in records})), "",
              machine_line(records[-1]["machine"])]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in records:
        c = r["config"]
        ax.plot([h["step"] for h in r["history"]], [h["valid_accuracy"] for h in r["history"]],
                label=f"{c['mixer']}, dim {c['dim']}, {c['heads']} heads, lr {c['lr']}")
    ax.axhline(1 / TASK.params["num_values"], color="gray", ls=":", label="chance")
    ax.axhline(0.9, color="gray", ls="--", label="goal 0.9")
    ax.set(xlabel="step", ylabel="valid accuracy", title=f"MQAR, C = {CONTEXT}", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixer", default="softmax")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=None, help="default: the grid's matched width")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3, help="default: softmax's sweep choice")
    parser.add_argument("--positional", default=None,
                        help="default: sinusoidal (softmax's sweep choice) for the families the grid gives "
                             "positions, auto (none added) for the others, as the grid does")
    parser.add_argument("--runs", type=Path, default=Path("runs/mqar_steps"), help="checkpoints (resumable)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/mqar_steps.py"] + (sys.argv[1:] if argv is None else argv))

    positional = args.positional or ("sinusoidal" if family(args.mixer) in POSITIONAL_FAMILIES else "auto")
    cfg = config(args.mixer, args.steps, args.dim, args.heads, args.lr, positional, args.runs, not args.quiet)
    record = {**train(cfg), "command": command}
    path = args.out_dir / "mqar_steps.jsonl"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    append_record(path, record)
    records = list({r["run_id"]: r for r in read_records(path)}.values())  # the latest line of each setting
    atomic_write_text(args.out_dir / "mqar_steps.md", markdown_text(records))
    plot(records, args.out_dir / "mqar_steps.png")
    print(markdown_text([record]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
