"""The longest context an HF model reaches in a fixed memory per process: transformers alone, and
``longmix.hf.parallelize`` on 1, 2 and 4 ranks (a reduced version of issue 19's section 3).

    python benchmarks/hf_context.py                          # cap 256 MiB, L = 1024 * 2^k
    python benchmarks/hf_context.py --cap-mib 128 --budget-s 600 --modes prefill

The model: a Llama-style ``LlamaForCausalLM`` with random weights, float32 (``--hidden`` 64,
``--layers`` 2, 4 query heads, 2 K/V heads, vocabulary 256, batch 1); sizes are in the record.
For each setting, transformers (its own ``sdpa`` attention, one process: what a user has today),
and longmix at P = 1, 2, 4 (gloo ranks on this machine, cores / P threads each), and each mode
(``prefill``: a forward without gradients; ``train``: forward, causal LM loss, backward), the
length doubles from ``--start`` while the step's peak extra memory per rank stays under
``--cap-mib``; the longest length that fit is reported, with its time per step and memory.
Reduced: lengths double (no bisection between the last fit and the first miss), and the Mamba
half of the issue is left out (its HF mapping is another part's).

Memory is the rise of the rank's peak resident set (VmHWM, reset after a warm-up step at
``--start`` tokens) during one step at the measured length over its resident set before it:
activations and workspace, not weights. A total ``--budget-s`` bounds the run. Writes
``hf_context.{json,md}`` to ``--out-dir`` with machine, command, date and commit.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from longmix.fileio import atomic_write_text
from longmix.machine import describe, markdown
from longmix.provenance import provenance, utc_now

VOCAB = 256
SETTINGS = [("transformers", 1), ("longmix", 1), ("longmix", 2), ("longmix", 4)]


def build(hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1 << 22)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()


def step(model, ids, mode: str) -> None:
    if mode == "prefill":
        with torch.no_grad():
            model(ids)
    else:
        model(ids, labels=ids).loss.backward()


def point(group, tool: str, mode: str, seq_len: int, start: int, hidden: int, layers: int):
    """Rank function: one step of ``mode`` at ``seq_len`` tokens; seconds and peak extra MiB."""
    import longmix.hf as lh
    import longmix.parallel as lp
    from longmix.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    model = build(hidden, layers)
    run = model if tool == "transformers" else lh.parallelize(model, group=group)
    g = torch.Generator().manual_seed(seq_len)

    def ids(n):
        full = torch.randint(0, VOCAB, (1, n), generator=g)
        return full if tool == "transformers" else lp.shard(full, group)

    step(run, ids(start), mode)  # warm-up: allocator pools, lazy imports
    model.zero_grad(set_to_none=True)
    local = ids(seq_len)
    reset_peak_rss()
    before = current_rss_bytes()
    began = time.perf_counter()
    step(run, local, mode)
    seconds = time.perf_counter() - began
    extra = (peak_rss_bytes() - before) / 2 ** 20
    return {"seconds": seconds, "memory_mib": extra}


def measure(tool: str, world: int, mode: str, seq_len: int, args) -> dict:
    from longmix.parallel.launch import RankFailure, run_local

    try:
        ranks = run_local(point, world, (tool, mode, seq_len, args.start, args.hidden, args.layers),
                          timeout=args.point_timeout_s, collective_timeout=args.point_timeout_s)
    except RankFailure as err:
        return {"status": "failed", "error": str(err).splitlines()[0][:200]}
    return {"status": "ok", "seconds": max(r["seconds"] for r in ranks),
            "memory_mib": max(r["memory_mib"] for r in ranks)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mib", type=float, default=256.0)
    parser.add_argument("--start", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=1 << 20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["prefill", "train"])
    parser.add_argument("--budget-s", type=float, default=1200.0)
    parser.add_argument("--point-timeout-s", type=float, default=300.0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    points, summary = [], []
    for mode in args.modes:
        for tool, world in SETTINGS:
            best, seq_len = None, args.start
            while seq_len <= args.max_len:
                if time.monotonic() > deadline:
                    points.append({"mode": mode, "tool": tool, "world": world, "seq_len": seq_len,
                                   "status": "skipped (budget)"})
                    break
                row = {"mode": mode, "tool": tool, "world": world, "seq_len": seq_len,
                       **measure(tool, world, mode, seq_len, args)}
                points.append(row)
                print(json.dumps(row), flush=True)
                if row["status"] != "ok" or row["memory_mib"] > args.cap_mib:
                    break
                best, seq_len = row, seq_len * 2
            summary.append({"mode": mode, "tool": tool, "world": world,
                            "longest": best["seq_len"] if best else None,
                            "seconds": best["seconds"] if best else None,
                            "memory_mib": best["memory_mib"] if best else None,
                            "complete": bool(points) and points[-1]["status"] in ("ok", "failed")
                            and (points[-1].get("memory_mib", 0) > args.cap_mib
                                 or points[-1]["status"] == "failed")})
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    record = {"command": command, "date": utc_now(), **provenance(), "machine": describe(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "summary": summary, "points": points}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "hf_context.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out_dir / "hf_context.md", _markdown(record))


def _markdown(record: dict) -> str:
    s = record["settings"]
    lines = [f"# Longest context in {s['cap_mib']:g} MiB per process: transformers vs longmix.hf",
             "", f"`{record['command']}` on {record['date']}, commit {record['git_describe']}. "
             f"LlamaForCausalLM, random weights, float32, hidden {s['hidden']}, {s['layers']} "
             f"layers, 4/2 heads, vocabulary {VOCAB}, batch 1. Lengths double from {s['start']}; "
             f"memory is the peak extra resident set per rank during one step. The machine was "
             f"shared with other jobs: times are noisy.", "",
             "| mode | run | ranks | longest L in cap | x one process | s/step | MiB/rank | search ended |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    base = {r["mode"]: r["longest"] for r in record["summary"]
            if r["tool"] == "transformers" and r["longest"]}
    for r in record["summary"]:
        ratio = (f"{r['longest'] / base[r['mode']]:.1f}" if r["longest"] and r["mode"] in base else "-")
        lines.append(f"| {r['mode']} | {r['tool']} | {r['world']} | {r['longest'] or '-'} | {ratio} | "
                     f"{r['seconds'] or 0:.2f} | {r['memory_mib'] or 0:.0f} | "
                     f"{'cap reached' if r['complete'] else 'budget or max-len'} |")
    lines += ["", "Every point:", "", "| mode | run | ranks | L | status | s/step | MiB/rank |",
              "|---|---|---:|---:|---|---:|---:|"]
    for p in record["points"]:
        lines.append(f"| {p['mode']} | {p['tool']} | {p['world']} | {p['seq_len']} | {p['status']} | "
                     f"{p.get('seconds', 0):.2f} | {p.get('memory_mib', 0):.0f} |")
    return "\n".join(lines) + "\n\n" + markdown(record["machine"]) + "\n"


if __name__ == "__main__":
    main()
