"""A Hugging Face model trained by `longmix train --hf-model` on passkey, split over ranks.

    python benchmarks/hf_train_passkey.py                       # 8,192 tokens on 2 ranks (~12 min)
    python benchmarks/hf_train_passkey.py --context 512 --steps 2 --control-steps 0   # smoke
    python benchmarks/hf_train_passkey.py --steps 12 --control-steps 0 \
        --curriculum 64:300:16,512:60:8,2048:30:4   # shorter contexts first (--init-from)

Writes a small Llama config (hidden 64, 2 layers, 4 heads; ``save_pretrained``, no weights: the
run initialises them from the config with its seed) and runs the command line itself,

    longmix train --hf-model DIR --task passkey --task-param length=C --context C --procs 2 ...

once at ``--context`` and, unless ``--control-steps 0``, once at a short ``--control-context``
with more steps: the same model and command at a length where a few hundred steps are known to
be enough for tiny models to find the key (see passkey_long.py), so that a run at chance at the
long context reads as "too few steps", not as a broken pipeline. Chance is 1/10 (one key digit).
With ``--curriculum C:STEPS:BATCH,...`` those stages train first, on the same ranks, each starting
from the weights of the one before (``longmix train --init-from``), and the run at ``--context``
starts from the last of them.

Reported per run: test accuracy on ``--eval-batches`` x ``--batch-size`` examples, the chance
floor, the loss history, and the time per optimizer step (the run's own wall time over its steps,
its evaluations and checkpoints included; process start-up excluded). Appends one record to
``<out-dir>/hf_train_passkey.jsonl`` (machine, commands, date, commit) and rewrites
``hf_train_passkey.md`` from all records. Run folders live under ``--runs-dir`` (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from longmix.fileio import append_record, atomic_write_text, read_records
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now
from longmix.train import results

STEM = "hf_train_passkey"


def save_model_config(folder: Path, args) -> dict:
    """A small Llama config in ``folder`` (config.json only); returns it as a dict."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.context)
    config.save_pretrained(folder)
    return json.loads((folder / "config.json").read_text())


def train_command(model_dir: Path, out: Path, context: int, steps: int, batch_size: int, args,
                  init_from: Path | None = None) -> list[str]:
    start = [] if init_from is None else ["--init-from", str(init_from)]
    return [sys.executable, "-m", "longmix.cli", "train", "--hf-model", str(model_dir),
            "--task", "passkey", "--task-param", f"length={context}", "--context", str(context),
            "--procs", str(args.procs), "--layout", args.layout, "--threads", "1",
            "--steps", str(steps), "--batch-size", str(batch_size), "--lr", str(args.lr),
            "--eval-every", str(steps), "--eval-batches", str(args.eval_batches),
            "--checkpoint-every", str(steps), "--seed", str(args.seed), *start, "--out", str(out), "--quiet"]


def run(command: list[str]) -> dict:
    """Run one `longmix train` command; its record (from its run folder) and the launch time."""
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    launch_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    out = Path(command[command.index("--out") + 1])
    record = results.find(out / "results.jsonl", summary["run_id"])
    chance = 1 / record["task_info"]["num_classes"]
    return {"context": record["context"], "steps": record["steps"],
            "batch_size": record["config"]["batch_size"], "world_size": record["world_size"],
            "accuracy": record["test"]["accuracy"], "test_examples": record["test"]["scored"],
            "test_loss": record["test"]["loss"], "chance": chance,
            "history": record["history"], "parameters": record["parameters"],
            "s_per_step": record["wall_s"] / max(record["steps"], 1), "run_wall_s": record["wall_s"],
            "launch_wall_s": round(launch_s, 1), "hf_class": record["hf_model"]["class"],
            "hf_layers": record["hf_model"].get("layers"), "run_id": record["run_id"],
            "init_from": record["config"].get("init_from"),
            "command": "longmix " + shlex.join(command[3:])}


def parse_curriculum(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in stage.split(":")) for stage in text.split(",") if stage]


def start(row: dict) -> str:
    """'cold', or the run folder whose weights the row's run started from."""
    return "cold" if not row.get("init_from") else f"from `{Path(row['init_from']).name}`"


def markdown_table(records: list[dict]) -> str:
    lines = ["# `longmix train --hf-model`: passkey on ranks (`benchmarks/hf_train_passkey.py`)", "",
             "A transformers `LlamaForCausalLM` (random init from its config) trained by the "
             "command line, every sequence split over the ranks by `longmix.hf.parallelize`. "
             "Accuracy is on the test split; chance is 1/10. `start`: random weights (cold), or "
             "those of the run named (a curriculum, `--init-from`). Time per step includes the run's "
             "evaluations and checkpoints. The machine was shared with other jobs: times are noisy.",
             "", "| date | commit | context | ranks | start | steps x batch | params | s/step | test accuracy "
             "(examples) | chance | final train loss |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        for row in rec["runs"]:
            last = row["history"][-1]["train_loss"] if row["history"] else float("nan")
            lines.append(f"| {rec['date'][:10]} | {rec.get('git_describe') or rec.get('git_commit', '')[:12]} "
                         f"| {row['context']:,} | {row['world_size']} | {start(row)} "
                         f"| {row['steps']} x {row['batch_size']} "
                         f"| {row['parameters']:,} | {row['s_per_step']:.1f} | {row['accuracy']:.3f} "
                         f"({row['test_examples']}) | {row['chance']:.2f} | {last:.3f} |")
    lines += ["", "Commands:", ""]
    for rec in records:
        lines += [f"- `{rec['command']}`"] + [f"  - `{row['command']}`" for row in rec["runs"]]
    lines += ["", "Machines:", ""] + sorted({f"- {markdown(rec['machine'])}" for rec in records})
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = parser.add_argument
    a("--context", type=int, default=8192)
    a("--steps", type=int, default=16)
    a("--batch-size", type=int, default=4)
    a("--curriculum", type=parse_curriculum, default=[], metavar="C:STEPS:BATCH,...",
      help="stages trained first, each from the weights of the one before (default none)")
    a("--control-context", type=int, default=64)
    a("--control-steps", type=int, default=300, help="0: no control run")
    a("--control-batch-size", type=int, default=16)
    a("--procs", type=int, default=2)
    a("--layout", default="zigzag")
    a("--hidden", type=int, default=64)
    a("--layers", type=int, default=2)
    a("--heads", type=int, default=4)
    a("--lr", type=float, default=3e-3)
    a("--eval-batches", type=int, default=4)
    a("--seed", type=int, default=0)
    a("--runs-dir", type=Path, default=Path("runs/hf_train_passkey"))
    a("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    model_dir = args.runs_dir / "model"
    model_config = save_model_config(model_dir, args)
    # (context, steps, batch, chained: starts from the run before)
    plan = [(*stage, True) for stage in args.curriculum]
    plan.append((args.context, args.steps, args.batch_size, bool(args.curriculum)))
    if args.control_steps:
        plan.append((args.control_context, args.control_steps, args.control_batch_size, False))
    rows, before = [], None
    for context, steps, batch_size, chained in plan:
        init_from = before if chained else None
        tag = "" if init_from is None else f"-after-{init_from.name.split('-')[0]}"
        out = args.runs_dir / f"C{context}-s{steps}-b{batch_size}-seed{args.seed}{tag}"
        print(f"context {context}: {steps} steps x {batch_size} on {args.procs} ranks"
              + (f", from {init_from.name}" if init_from else ""), flush=True)
        rows.append(run(train_command(model_dir, out, context, steps, batch_size, args, init_from)))
        before = out
        row = rows[-1]
        print(f"  test accuracy {row['accuracy']:.3f} on {row['test_examples']} examples "
              f"(chance {row['chance']:.2f}), {row['s_per_step']:.1f} s/step", flush=True)
    record = {"model_config": model_config, "runs": rows, "machine": describe(), "shared_machine": True,
              "command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "date": utc_now(), **provenance()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    append_record(args.out_dir / f"{STEM}.jsonl", record)
    atomic_write_text(args.out_dir / f"{STEM}.md", markdown_table(read_records(args.out_dir / f"{STEM}.jsonl")))
    print(f"results -> {args.out_dir / (STEM + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
