"""Peak memory of every mixer's literal path against the estimate that guards it.

    python benchmarks/reference_memory.py                      # L = 128, 256; writes the results
    python benchmarks/reference_memory.py --lengths 64,128 --json   # one JSON list on stdout

For each registered mixer (causal and not), each L, ``reference`` and ``mixing_matrix``, with
autograd recording and without: the peak resident memory of the call above the process's
resident memory before it, next to :func:`longmix.mixers.memory_guard.literal_path_bytes`.
Measured in a child process whose allocator returns every freed block of 64 KiB or more to the
system (``MALLOC_MMAP_THRESHOLD_``), so one call's freed memory never hides the next call's
peak. Float64, batch 2, dim 16 and 2 heads by default.

Writes benchmarks/results/reference_memory.{json,md} with the machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
#: glibc: serve blocks >= 64 KiB by mmap and unmap them on free (no dynamic threshold).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="128,256", help="comma-separated sequence lengths")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--names", default="", help="comma-separated mixer names (default: all)")
    p.add_argument("--json", action="store_true", help="print the records as JSON; write nothing")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def measure(args) -> list[dict]:
    """In this process: one record per (mixer, causal, L, method, grad)."""
    import torch

    from longmix import mixers
    from longmix.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss
    from longmix.mixers.memory_guard import literal_path_bytes

    torch.set_num_threads(1)
    names = args.names.split(",") if args.names else mixers.available()
    records = []
    for length in map(int, args.lengths.split(",")):
        for name in names:
            causal_modes = (False, True) if mixers.get_class(name).taxonomy.causal else (False,)
            for causal, method, grad in ((c, m, g) for c in causal_modes
                                         for m in ("reference", "mixing_matrix") for g in (False, True)):
                torch.manual_seed(0)
                mixer = mixers.build(name, args.dim, heads=args.heads, causal=causal, max_len=length).double()
                x = torch.randn(args.batch, length, args.dim, dtype=torch.float64, requires_grad=grad)
                estimate = literal_path_bytes(mixer, x)
                before = current_rss_bytes()
                reset_peak_rss()
                try:
                    with torch.set_grad_enabled(grad):
                        out = getattr(mixer, method)(x)
                except NotImplementedError:  # no mixing matrix (the token-mixing MLP)
                    continue
                peak = peak_rss_bytes() - before
                del out
                records.append({"name": name, "causal": causal, "L": length, "method": method,
                                "grad": grad, "batch": args.batch, "dim": args.dim, "heads": args.heads,
                                "peak_bytes": peak, "estimate_bytes": estimate})
    return records


def run_child(argv: list[str]) -> list[dict]:
    """:func:`measure` in a fresh process with :data:`CHILD_ENV`; its records."""
    out = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True,
                         env={**os.environ, **CHILD_ENV}, check=False)
    if out.returncode:
        raise RuntimeError(f"reference_memory child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def table(records: list[dict]) -> str:
    lines = ["| mixer | causal | L | method | grad | peak MiB | estimate MiB | estimate / peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['name']} | {r['causal']} | {r['L']} | {r['method']} | {r['grad']} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {r['estimate_bytes'] / 2**20:.1f} | "
                     f"{r['estimate_bytes'] / max(r['peak_bytes'], 1):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return
    records = run_child([a for a in argv if a != "--json"])
    if args.json:
        print(json.dumps(records))
        return
    from longmix.fileio import atomic_write_text
    from longmix.machine import describe, markdown
    from longmix.provenance import provenance, utc_now

    machine = describe()
    run = {"command": ("python benchmarks/reference_memory.py " + shlex.join(argv)).strip(),
           "date": utc_now(), "machine": machine, **provenance(), "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "reference_memory.json", json.dumps(run, indent=2))
    under = [r for r in records if r["estimate_bytes"] < r["peak_bytes"]]
    md = ["### Peak memory of the literal paths (reference, mixing_matrix) against their estimate", "",
          f"- Machine: {markdown(machine)}", f"- Command: `{run['command']}`",
          f"- Date: {run['date']}; commit: {run['git_describe']}",
          f"- Estimate below the measured peak in {len(under)} of {len(records)} calls", "",
          table(records), ""]
    atomic_write_text(args.out / "reference_memory.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
