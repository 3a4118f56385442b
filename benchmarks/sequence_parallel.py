"""Sequence-parallel token mixers on local ranks: time, peak memory and bytes per rank.

    python benchmarks/sequence_parallel.py                 # the full run (L = 2^20; hours on 2 cores)
    python benchmarks/sequence_parallel.py --quick         # a smoke run at tiny sizes (~1 min)
    python benchmarks/sequence_parallel.py --mixers s4d mamba --budget-s 1800

Two parts, each point a fresh launch of P gloo ranks on this machine (``longmix.parallel.launch``):

* **long**: one forward pass of a mixer layer at ``--long-len`` tokens (2^20) over P = 1, 2, 4
  ranks, every mixer that has a sequence-parallel form (softmax is left to the attention
  benchmark), in every form it has: seconds and peak extra memory per rank.
* **scaling**: per mixer and form, P = 1, 2, 4 at a fixed L (strong scaling) and at L = L0 * P
  (weak scaling), with the bytes each rank sent (``CommStats``) against the planner's prediction
  (``longmix.parallel.plan_model``) and the peak activation memory per rank against one process
  (goal: within 1/P + 10% at large L).

Memory is the rise of the rank's peak resident set (VmHWM, reset after a short warm-up forward)
during the first forward at the measured length over its resident set before it: activations and
workspace, not weights or one-time buffers. Each rank gets cores / P threads.
A total ``--budget-s`` bounds the run; points past it are listed as skipped. Writes
sequence_parallel[_backward][_<mixers>][_quick].{json,md,png} under ``--out-dir`` with machine,
command, date and commit (``_<mixers>`` when ``--mixers`` is not the default set, so that a partial
rerun keeps the full run's files).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from longmix.bench.form_step import forms_of, measure
from longmix.vocabulary import LAYOUTS

DEFAULT_MIXERS = ["linear", "performer", "local", "bigbird", "linformer", "nystrom", "fnet",
                  "mlpmixer", "longconv", "hyena", "s4d", "mamba"]


def _dtype_name(text: str) -> str:
    """The one dtype vocabulary (fp32/bf16/fp64), imported here so that ``--help`` stays fast."""
    from longmix.dtypes import dtype_name

    try:
        return dtype_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def plan_points(args) -> list[tuple[str, dict, int]]:
    """(part, spec, world) for every point, in run order (cheap scaling points first)."""
    points = []
    base = dict(dim=args.dim, heads=args.heads, batch=args.batch, dtype=args.dtype,
                layout=args.layout, repeats=args.repeats, quick_s=args.quick_s, backward=args.backward)
    for name in args.mixers:
        for form in forms_of(name, max(args.ranks), args.dim, args.heads):
            for world in args.ranks:
                for part, length in (("strong", args.strong_len), ("weak", args.weak_len * world)):
                    if part in args.parts:
                        points.append((part, {**base, "mixer": name, "form": form, "length": length}, world))
    if "long" in args.parts:
        for name in args.mixers:
            for form in forms_of(name, max(args.ranks), args.dim, args.heads):
                for world in args.ranks:
                    points.append(("long", {**base, "mixer": name, "form": form,
                                            "length": args.long_len}, world))
    return points


def memory_vs_one(rows: list[dict]) -> None:
    """Add each row's peak memory per rank as a fraction of the P = 1 row of its part, mixer and
    form, and the goal: 1/P + 10% at the same L (strong, long); 1 + 10% for weak scaling, where
    each rank's share of L stays L0."""
    one = {(r["part"], r["mixer"], r["form"]): r for r in rows
           if r["status"] == "ok" and r["world"] == 1}
    for r in rows:
        base = one.get((r["part"], r["mixer"], r["form"]))
        if r["status"] == "ok" and base and base["memory_mb"] > 0:
            r["memory_vs_one"] = r["memory_mb"] / base["memory_mb"]
            r["memory_goal"] = (1.0 if r["part"] == "weak" else 1 / r["world"]) + 0.10


def fmt(x, spec="{:.3g}") -> str:
    return "-" if x is None else spec.format(x)


def table(rows: list[dict], part: str) -> str:
    head = ("| mixer | form | P | L | time (s) | peak extra MB / rank | vs 1 process (goal) "
            "| sent MB / rank | predicted MB | sent / predicted |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r["part"] != part:
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['mixer']} | {r['form']} | {r['world']} | {r['length']} | "
                         f"{r['status']}: {r.get('error', '')} |||||| ")
            continue
        mem = (f"{r['memory_vs_one']:.2f} ({r['memory_goal']:.2f})" if "memory_vs_one" in r else "-")
        lines.append(f"| {r['mixer']} | {r['form']} | {r['world']} | {r['length']} | "
                     f"{fmt(r['time_s'])} | {fmt(r['memory_mb'], '{:.1f}')} | {mem} | "
                     f"{fmt(r['sent'] / 2**20)} | "
                     f"{fmt(None if r['predicted'] is None else r['predicted'] / 2**20)} | "
                     f"{fmt(r['bytes_ratio'], '{:.3f}')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from longmix.plotting import pyplot

    plt = pyplot()

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    keys = sorted({(r["mixer"], r["form"]) for r in rows if r["part"] == "strong"})
    for i, (name, form) in enumerate(keys):
        pts = sorted((r["world"], r["time_s"], r.get("memory_vs_one")) for r in rows
                     if r["part"] == "strong" and r["status"] == "ok"
                     and (r["mixer"], r["form"]) == (name, form))
        if not pts:
            continue
        style = dict(marker="o", label=f"{name} ({form})", linestyle=("-", "--", ":")[i // 10 % 3])
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], **style)
        mem = [(p[0], p[2]) for p in pts if p[2] is not None]
        if mem:
            ax_m.plot(*zip(*mem), **style)
    worlds = sorted({r["world"] for r in rows})
    ax_m.plot(worlds, [1 / p + 0.1 for p in worlds], "k--", label="goal 1/P + 10%")
    for ax, label in ((ax_t, "forward time (s)"), (ax_m, "peak memory per rank / 1 process")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(worlds, [str(p) for p in worlds])
        ax.set_xlabel("ranks P")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax_t.set_yscale("log")
    ax_m.legend(fontsize=7, ncol=2)
    fig.suptitle("strong scaling of sequence-parallel mixers (fixed L)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS)
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--long-len", type=int, default=2 ** 20)
    p.add_argument("--strong-len", type=int, default=2 ** 16)
    p.add_argument("--weak-len", type=int, default=2 ** 14, help="L0: weak scaling runs L = L0 * P")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", type=_dtype_name, default="fp32",
                   help="fp32, bf16 or fp64 (float32, bfloat16, float64 are read as those)")
    p.add_argument("--layout", default="contiguous", choices=LAYOUTS)
    p.add_argument("--repeats", type=int, default=2, help="timed forwards after the first")
    p.add_argument("--quick-s", type=float, default=20.0,
                   help="stop repeating once a point took this long")
    p.add_argument("--budget-s", type=float, default=4 * 3600.0, help="total time for the run")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--backward", action="store_true",
                   help="time and measure forward + backward (a training step's memory) instead "
                        "of the forward; writes sequence_parallel_backward.*")
    p.add_argument("--parts", nargs="+", default=["strong", "weak", "long"],
                   choices=["strong", "weak", "long"], help="which parts to run (default all)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.long_len, args.strong_len, args.weak_len = 2 ** 11, 2 ** 10, 2 ** 9
        args.dim, args.repeats, args.quick_s = 16, 1, 2.0
        args.budget_s = min(args.budget_s, 300.0)
    return args


def result_stem(args) -> str:
    """The name of the run's files. A run of some mixers only gets files of its own, so that it
    never replaces the full run's."""
    subset = "" if args.mixers == DEFAULT_MIXERS else "_" + "_".join(args.mixers)
    return "sequence_parallel" + ("_backward" if args.backward else "") + subset + ("_quick" if args.quick else "")


def markdown_text(record: dict) -> str:
    """The tables of ``record`` (what main writes to JSON), one section per part that ran."""
    from longmix.machine import markdown

    cfg, rows = record["config"], record["rows"]
    step = "Forward and backward" if cfg.get("backward") else "Forward"
    sections = {"long": f"## {step} at L = {cfg['long_len']} (time and peak extra memory per rank)",
                "strong": f"## Strong scaling (L = {cfg['strong_len']})",
                "weak": f"## Weak scaling (L = {cfg['weak_len']} x P)"}
    parts = cfg.get("parts", list(sections))
    return "\n\n".join(
        [f"# Sequence-parallel mixers{' (forward and backward)' if cfg.get('backward') else ''}\n\n"
         f"{markdown(record['machine'])}; commit {record['provenance'].get('git_describe')}; "
         f"command: `{record['command']}`"]
        + [f"{title}\n\n" + table(rows, part) for part, title in sections.items() if part in parts]
        + [f"Skipped (over the {cfg['budget_s']:.0f} s budget): {len(record['skipped'])} points."])


def main(argv: list[str] | None = None) -> int:
    from longmix.bench.record import run_record, write_record

    args = parse_args(argv)
    started, rows, skipped = time.monotonic(), [], []
    for part, spec, world in plan_points(args):
        remaining = args.budget_s - (time.monotonic() - started)
        if remaining < 5:
            skipped.append({"part": part, **spec, "world": world})
            continue
        row = {"part": part, **measure(spec, world, timeout=remaining)}
        rows.append(row)
        print(f"{part:6s} {spec['mixer']:9s} {spec['form']:7s} P={world} L={spec['length']}: "
              f"{row['status']} {fmt(row.get('time_s'))} s, {fmt(row.get('memory_mb'), '{:.1f}')} MB,"
              f" sent/predicted {fmt(row.get('bytes_ratio'), '{:.3f}')}", flush=True)
    memory_vs_one(rows)
    stem = result_stem(args)
    record = {**run_record("sequence_parallel.py", args, argv), "rows": rows, "skipped": skipped}
    text = markdown_text(record)
    write_record(args.out_dir, stem, record, text + "\n")
    plot(rows, args.out_dir / f"{stem}.png")
    print(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
