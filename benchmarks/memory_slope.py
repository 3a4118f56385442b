"""Memory per token of one LM training step, on one process and per rank on P ranks.

    python benchmarks/memory_slope.py                        # 2^15 -> 2^16 tokens, P = 1, 2, 4
    python benchmarks/memory_slope.py --mixers mamba s4d --ranks 1 2
    python benchmarks/memory_slope.py --quick                # a smoke run at tiny sizes

For a causal LM (``--dim`` 64, ``--depth`` 2, ``--heads`` 4, fp32, batch 1, vocabulary
``--vocab`` 256), one training step is the forward, the loss
(``longmix.train.loss.training_loss_sum``, what ``longmix train`` runs) and the backward. Its peak memory at ``--short`` and at ``--long``
tokens gives the slope, KB per extra token: fixed overheads (weights, thread pools, gloo's
buffers) cancel. On P ranks the slope is the worst rank's, in every feasible form of the mixer
(``parallelize(..., forms=form)``); its ratio to one process's slope should be at most 1/P + 10%.

Memory of a point: each point (mixer, form, P, L) is a fresh launch of P ranks
(``longmix.parallel.launch.run_local``). A rank fixes glibc's mmap threshold as ``longmix train
--return-freed-memory`` does (``--malloc fixed``, the default: ``longmix.machine.return_freed_memory``,
at ``--mmap-threshold``, 128 KiB by default as in ``generate_max_prompt.py``; freed blocks above
it leave the resident set, for a page fault per new block), builds the
model, runs a short warm-up step (one-time costs), then resets its peak resident set
(``longmix.machine.reset_peak_rss``: VmHWM via /proc/self/clear_refs) and records the rise of
VmHWM over its resident set during one step.
Writes memory_slope[_<tag>].{json,md} under ``--out-dir`` with machine, command, date and commit;
``--append`` keeps the rows already there (rows name their commit), so a table can hold the
runs before and after a change.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_MIXERS = ["softmax", "s4d", "mamba", "hyena", "linear"]


def model_spec(args) -> dict:
    from longmix.machine import MMAP_THRESHOLD_BYTES

    return dict(dim=args.dim, depth=args.depth, heads=args.heads, vocab=args.vocab,
                checkpoint=getattr(args, "checkpoint", False),
                malloc=getattr(args, "malloc", "fixed"),
                mmap_threshold=getattr(args, "mmap_threshold", MMAP_THRESHOLD_BYTES))


def malloc_label(spec: dict) -> str:
    """A row's malloc setting: "default", or "fixed <threshold> KiB" (rows before the threshold
    was an option say "fixed": 1 MiB)."""
    if spec["malloc"] != "fixed":
        return spec["malloc"]
    return f"fixed {spec['mmap_threshold'] // 1024} KiB"


#: the exit status of a rank that :func:`peak_rise`'s watchdog ended for passing its cap
OVER_CAP_EXIT = 86


def peak_rise(run, cap_bytes: int | None = None) -> tuple[int, float]:
    """Run ``run()`` and return the rise of this process's peak resident set over its resident
    set before (VmHWM reset first: the call's own memory, not the interpreter's or the weights')
    and the seconds it took. With ``cap_bytes`` a watchdog thread polls the rise and, once it
    passes the cap, ends the process with exit status :data:`OVER_CAP_EXIT`: a point that does
    not fit is known not to as soon as it passes the cap, and need not run to its end."""
    import os
    import threading

    from longmix.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    before = current_rss_bytes()
    reset_peak_rss()
    done = threading.Event()

    def watch():
        while not done.wait(0.02):
            if peak_rss_bytes() - before > cap_bytes:
                os._exit(OVER_CAP_EXIT)

    if cap_bytes is not None:
        threading.Thread(target=watch, daemon=True).start()
    start = time.perf_counter()
    try:
        run()
    finally:
        done.set()
    return peak_rss_bytes() - before, time.perf_counter() - start


def step_worker(group, spec: dict) -> dict:
    """One LM training step of ``spec["length"]`` tokens on this rank's shard: the rise of the
    peak resident set over the resident set before the step, and the step's time."""
    import torch

    import longmix.parallel as lp
    from longmix.machine import return_freed_memory
    from longmix.models.model import build_model
    from longmix.train.loss import scored_targets, training_loss_sum

    world = torch.distributed.get_world_size(group)
    rank = torch.distributed.get_rank(group)
    if spec.get("malloc", "fixed") == "fixed":  # as `longmix train --return-freed-memory` does
        return_freed_memory(*[spec["mmap_threshold"]] if spec.get("mmap_threshold") else [])
    torch.manual_seed(0)
    model = build_model(vocab_size=spec["vocab"], mixer=spec["mixer"], head="lm", dim=spec["dim"],
                        depth=spec["depth"], heads=spec["heads"])
    options = {"checkpoint_activations": True} if spec.get("checkpoint") else {}
    runner = (lp.parallelize(model, group, forms=spec["form"], **options) if world > 1
              else model)
    if world == 1 and spec.get("checkpoint"):
        model.checkpoint_activations = True

    def step(length: int) -> None:
        g = torch.Generator().manual_seed(length)
        tokens = torch.randint(0, spec["vocab"], (1, length + 1), generator=g)
        x, y = tokens[:, :-1], scored_targets(tokens[:, 1:], "lm", pad_id=-1)
        if world > 1:
            x, y = lp.shard(x, group), lp.shard(y, group)
        total, _ = training_loss_sum(runner, x, y, "lm")
        (total / length).backward()

    step(64 * world)  # thread pools, gloo's buffers, parameter gradients: not per token
    memory, seconds = peak_rise(lambda: step(spec["length"]), spec.get("cap_bytes"))
    return {"rank": rank, "memory_bytes": memory, "time_s": seconds}


def measure(spec: dict, world: int, timeout: float, worker=step_worker) -> dict:
    """Peak memory of one training step (or ``worker``'s call: ``worker(group, spec)`` returns
    this dict's fields per rank) on ``world`` ranks: the worst rank's, or the failure. With
    ``spec["cap_bytes"]``, status "over the cap" when a rank's watchdog ended it there."""
    from longmix.parallel.launch import RankFailure, run_local

    try:
        ranks = run_local(worker, world, (spec,), timeout=timeout,
                          collective_timeout=max(60.0, timeout), threads_per_rank=spec.get("threads"))
    except RankFailure as exc:
        if exc.exitcode == OVER_CAP_EXIT:
            return {"status": "over the cap", "worst_rank": exc.rank, "memory_bytes": None,
                    "time_s": None, "error": None}
        error = exc.summary()
        return {"status": "timed out" if error.startswith("timed out") else "failed",
                "error": error}
    worst = max(ranks, key=lambda r: r["memory_bytes"])
    return {"status": "ok", "memory_bytes": worst["memory_bytes"], "worst_rank": worst["rank"],
            "by_rank": [r["memory_bytes"] for r in ranks],
            "time_s": max(r["time_s"] for r in ranks)}


def forms_of(name: str, world: int, spec: dict) -> list[str]:
    """The forms every mixer layer of this model can run on ``world`` ranks."""
    import longmix.parallel as lp
    from longmix.models.model import build_model

    model = build_model(vocab_size=spec["vocab"], mixer=name, head="lm", dim=spec["dim"],
                        depth=1, heads=spec["heads"])
    options = lp.plan_model(model, None, world).layers[0].options
    return [o.form for o in options if o.feasible]


def slope_row(name: str, form: str, world: int, args, deadline: float) -> dict:
    """The slope (bytes per token) between ``args.short`` and ``args.long`` tokens."""
    spec = {**model_spec(args), "mixer": name, "form": form}
    row = {"mixer": name, "form": form, "world": world, "short": args.short, "long": args.long,
           "checkpoint": spec["checkpoint"], "malloc": malloc_label(spec)}
    points = {}
    for length in (args.short, args.long):
        remaining = deadline - time.monotonic()
        if remaining < 10:
            return {**row, "status": "skipped (over the budget)"}
        points[length] = measure({**spec, "length": length}, world, timeout=remaining)
        if points[length]["status"] != "ok":
            return {**row, "status": "failed", "error": points[length]["error"]}
    lo, hi = points[args.short], points[args.long]
    return {**row, "status": "ok", "memory_short_mb": lo["memory_bytes"] / 2 ** 20,
            "memory_long_mb": hi["memory_bytes"] / 2 ** 20,
            "kb_per_token": (hi["memory_bytes"] - lo["memory_bytes"]) / (args.long - args.short) / 1024,
            "worst_rank": hi["worst_rank"], "time_long_s": hi["time_s"]}


def add_ratios(rows: list[dict]) -> None:
    """Each row's slope against one process's (same mixer, commit, lengths, checkpointing and
    malloc setting), and the goal."""
    def key(r):
        return r["mixer"], r["commit"], r["short"], r["long"], r["checkpoint"], r.get("malloc", "default")

    one = {key(r): r for r in rows if r["status"] == "ok" and r["world"] == 1}
    for r in rows:
        base = one.get(key(r))
        if r["status"] == "ok" and base and base["kb_per_token"] > 0:
            r["ratio"] = r["kb_per_token"] / base["kb_per_token"]
            r["goal"] = 1 / r["world"] + 0.10
            r["meets_goal"] = r["ratio"] <= r["goal"]


def met_cell(r: dict) -> str:
    return ("yes" if r["meets_goal"] else "**no**") if "meets_goal" in r else "-"


def table(rows: list[dict]) -> str:
    lines = ["| commit | mixer | form | P | ckpt | malloc | L | MB at short | MB at long | KB / token "
             "| vs 1 process | goal | met | time at long (s) |", "|" + "---|" * 14]
    for r in rows:
        head = (f"| {r['commit']} | {r['mixer']} | {r['form']} | {r['world']} | "
                f"{'yes' if r['checkpoint'] else 'no'} | {r.get('malloc', 'default')} | "
                f"{r['short']} -> {r['long']} |")
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r.get('error', '')} |||||||")
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        goal = f"{r['goal']:.2f}" if "goal" in r else "-"
        lines.append(f"{head} {r['memory_short_mb']:.1f} | {r['memory_long_mb']:.1f} | "
                     f"{r['kb_per_token']:.2f} | {ratio} | {goal} | {met_cell(r)} | {r['time_long_s']:.3g} |")
    return "\n".join(lines)


def latest_verdicts(runs: list[dict]) -> str:
    """One line per mixer, checkpointing, P and form: the newest run's row (runs by date), so a
    reader sees each pair's standing without reading the history below."""
    latest = {}
    for run in sorted(runs, key=lambda run: run["date"]):
        for r in run["rows"]:
            if r["world"] > 1:
                latest[r["mixer"], r["checkpoint"], r["world"], r["form"]] = r
    lines = ["| mixer | ckpt | P | form | vs 1 process | goal | met | commit | malloc | L |",
             "|" + "---|" * 10]
    for (mixer, checkpoint, world, form), r in sorted(latest.items()):
        ratio = (f"{r['ratio']:.2f}" if "ratio" in r else "-") if r["status"] == "ok" else r["status"]
        goal = f"{1 / world + 0.10:.2f}"
        lines.append(f"| {mixer} | {'yes' if checkpoint else 'no'} | {world} | {form} | {ratio} | "
                     f"{goal} | {met_cell(r) if r['status'] == 'ok' else '-'} | {r['commit']} | "
                     f"{r.get('malloc', 'default')} | {r['short']} -> {r['long']} |")
    return "\n".join(lines)


def not_measured() -> str:
    """The registry's mixers that no causal LM can use, and why (issue 20 excepts mlpmixer and
    linformer besides: their weights are sized by max_len and copied on every rank)."""
    from longmix.mixers.registry import available, get_class

    reasons = []
    for name in available():
        cls = get_class(name)
        if cls.taxonomy.causal and not cls.requires_max_len:
            continue
        why = [] if cls.taxonomy.causal else ["cannot run causally, so cannot drive a causal LM"]
        if cls.requires_max_len:
            why.append("excepted by the goal: weights sized by max_len, copied on every rank")
        reasons.append(f"- {name}: {'; '.join(why)}")
    return "\n".join(reasons)


def write_results(runs: list[dict], out_dir: Path, stem: str) -> str:
    """Write ``runs`` (each: command, date, machine, provenance, config, rows) to
    ``<stem>.json`` and their one table to ``<stem>.md``; returns the markdown."""
    from longmix.fileio import atomic_write_text
    from longmix.machine import markdown

    all_rows = [r for run in runs for r in run["rows"]]
    add_ratios(all_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{stem}.json", json.dumps({"runs": runs}, indent=1) + "\n")
    head = ["# Memory per token of an LM training step (slope between two lengths)", "",
            "Peak memory rise of one step (forward, loss, backward), worst rank; slope = "
            "(MB at long - MB at short) / (long - short). Goal: at most 1/P + 10% of one process's "
            "slope (the ratio compares rows of the same commit, lengths, checkpointing and malloc setting). "
            "malloc: fixed = glibc's mmap threshold fixed (longmix.machine.return_freed_memory, "
            "`longmix train --return-freed-memory`; \"fixed\" alone: 1 MiB, the rows before "
            "`--mmap-threshold`), default = glibc's own (freed large blocks may stay resident). "
            "With 1 MiB, blocks below it stay on malloc's heap once freed, and how much of it "
            "stays varied from run to run (longconv, P = 2, L = 65536: 460 to 600 MB for the "
            "same rank and step); with 128 KiB the same point gave 423-424 MB six times. "
            "The machine was shared with other jobs: memory is this step's own, times are noisy."]
    for run in runs:
        cfg = run["config"]
        head += ["", f"- {run['date']}, commit {run['provenance']['git_describe']}: "
                     f"`{run['command']}` (L = {cfg['short']} -> {cfg['long']}, dim {cfg['dim']}, "
                     f"depth {cfg['depth']}, heads {cfg['heads']}, vocab {cfg['vocab']}, fp32, batch 1); "
                     f"{markdown(run['machine'])}"]
    text = "\n".join(
        head[:3] + ["", "## Latest verdict per mixer, form and P", "", latest_verdicts(runs), "",
                    "Not measured (the registry's other mixers):", "", not_measured(), "",
                    "## Every run"] + head[3:]) + "\n\n" + table(all_rows)
    atomic_write_text(out_dir / f"{stem}.md", text + "\n")
    return text


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS)
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--forms", nargs="+", default=None, help="only these forms (default: every feasible)")
    p.add_argument("--short", type=int, default=2 ** 15)
    p.add_argument("--long", type=int, default=2 ** 16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
    p.add_argument("--malloc", choices=["fixed", "default"], default="fixed",
                   help="fixed: glibc's mmap threshold fixed, freed large blocks leave the resident "
                        "set (longmix.machine.return_freed_memory, `longmix train --return-freed-memory`); "
                        "default: glibc's own (runs before this option had it)")
    p.add_argument("--mmap-threshold", type=int, default=128 * 1024,
                   help="with --malloc fixed, glibc's mmap threshold in bytes (default 128 KiB: "
                        "freed blocks above it leave the resident set; 1 MiB, the library's "
                        "default, left a run-to-run varying part of the freed blocks resident)")
    p.add_argument("--budget-s", type=float, default=3600.0, help="total time for the run")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--tag", default="", help="a suffix of the result files' names")
    p.add_argument("--append", action="store_true", help="keep the rows already in the result file")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="measure nothing: write the runs of these result files as one table")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.short, args.long, args.dim = 2 ** 10, 2 ** 11, 16
        args.tag = args.tag or "quick"
    if not 0 < args.short < args.long:
        p.error(f"--short and --long must satisfy 0 < short < long, got {args.short}, {args.long}")
    return args


def main(argv: list[str] | None = None) -> int:
    from longmix.bench.record import command_line, config_of
    from longmix.machine import describe
    from longmix.provenance import provenance, utc_now

    args = parse_args(argv)
    stem = "memory_slope" + (f"_{args.tag}" if args.tag else "")
    if args.merge:
        print(write_results([run for path in args.merge for run in json.loads(path.read_text())["runs"]],
                            args.out_dir, stem))
        return 0
    json_path = args.out_dir / f"{stem}.json"
    runs = json.loads(json_path.read_text())["runs"] if args.append and json_path.exists() else []
    code = provenance()
    commit = code["git_describe"]
    deadline = time.monotonic() + args.budget_s
    rows = []
    for name in args.mixers:
        for world in args.ranks:
            forms = ["-"] if world == 1 else forms_of(name, world, model_spec(args))
            for form in forms:
                if args.forms and world > 1 and form not in args.forms:
                    continue
                row = {**slope_row(name, form, world, args, deadline), "commit": commit}
                rows.append(row)
                print(f"{name:8s} {form:7s} P={world}: {row['status']} "
                      f"{row.get('kb_per_token', float('nan')):.2f} KB/token", flush=True)
    runs.append({"command": command_line("memory_slope.py", argv), "date": utc_now(),
                 "machine": describe(), "provenance": code, "config": config_of(args), "rows": rows})
    print(write_results(runs, args.out_dir, stem))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
