"""The longest context a small HF model reaches in a fixed memory per process: transformers alone,
and ``longmix.hf.parallelize`` on 1, 2 and 4 ranks (issue 19, section 3).

    python benchmarks/hf_context.py --models llama --cap-mib 64 --cap-s 300 --resolution 16
    python benchmarks/hf_context.py --models mamba --cap-mib 64 --cap-s 120 --tag mamba

The models (random weights, float32, batch 1; sizes in the record): ``llama``, a
``LlamaForCausalLM`` (``--hidden`` 64, ``--layers`` 2, 4 query heads, 2 K/V heads, its ``sdpa``
attention), and ``mamba``, a ``MambaForCausalLM`` (hidden 64, 2 layers, state 16; transformers'
torch path, which loops over tokens in Python: slow, hence the time caps); vocabulary 256.
For each model, mode (``prefill``: a forward without gradients; ``train``: forward, the model's
causal LM loss, backward) and setting (transformers, one process: what a user has today; longmix
at P = 1, 2, 4 gloo ranks on this machine, ``--threads`` torch threads each; its attention
layers run ``--strategy``, default ``ring``: O(L/P) memory per rank whatever the head counts,
where the head shuffle holds every row of its heads and, with fewer K/V heads than ranks, a whole
K/V head on each rank), the length fits
when every rank's peak memory rise during one step is at most ``--cap-mib``: measured as
``benchmarks/max_context.py`` measures a training step (``memory_slope.measure`` and
``peak_rise``: VmHWM reset after a short warm-up step, its rise over the resident set before; a
watchdog ends a rank once it passes the cap), and searched the same way
(``max_context.longest_fitting``: ``--start`` x P doubled while it fits, then bisection to
1/``--resolution`` of the last interval, in multiples of ``--multiple``). Every rank first calls
``longmix.machine.return_freed_memory()`` (glibc's mmap threshold fixed: freed tensors leave the
resident set; with the moving default the same step's peak varied by +-30%). Each point runs at
most ``--point-cap-s`` seconds and each search ``--cap-s``; the row says what stopped it: memory
(the answer), time, or a failure. Writes hf_context[_<tag>].{json,md} under ``--out-dir`` with
machine, command, date and commit, after every search.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from max_context import add_gains, longest_fitting  # noqa: E402  (the one search)
from longmix.bench.record import provenance_lines, run_record, write_record  # noqa: E402
from memory_slope import measure, peak_rise  # noqa: E402  (the one memory measurement)

VOCAB = 256


def build(model: str, hidden: int, layers: int):
    """A small HF causal LM with seeded random weights, float32, in eval mode (no dropout)."""
    import torch

    torch.manual_seed(0)
    if model == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=1 << 22, use_cache=False)
        return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    if model == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        config = MambaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                             state_size=16, use_cache=False)
        return MambaForCausalLM._from_config(config).eval()
    raise ValueError(f"model must be 'llama' or 'mamba', got {model!r}")


def hf_worker(group, spec: dict) -> dict:
    """One ``spec["mode"]`` step of ``spec["length"]`` tokens on this rank: its peak memory rise."""
    import torch
    import torch.distributed as dist

    import longmix.hf as lh
    import longmix.parallel as lp
    from longmix.machine import return_freed_memory

    return_freed_memory()  # first: freed tensors must leave the resident set (as memory_slope's worker)
    model = build(spec["model"], spec["hidden"], spec["layers"])
    run = model if spec["tool"] == "transformers" else \
        lh.parallelize(model, group=group, strategy=spec["strategy"])
    world = dist.get_world_size(group)

    def step(length: int) -> None:
        full = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
        ids = full if spec["tool"] == "transformers" else lp.shard(full, group)
        if spec["mode"] == "prefill":
            with torch.no_grad():
                run(ids)
        else:
            run(ids, labels=ids).loss.backward()

    step(64 * world)  # thread pools, gloo's buffers, lazy imports, parameter gradients
    memory, seconds = peak_rise(lambda: step(spec["length"]), spec["cap_bytes"])
    return {"rank": dist.get_rank(group), "memory_bytes": memory, "time_s": seconds}


def search_row(model: str, mode: str, tool: str, world: int, args) -> dict:
    spec = {"model": model, "mode": mode, "tool": tool, "hidden": args.hidden, "layers": args.layers,
            "threads": args.threads, "cap_bytes": int(args.cap_mib * 2 ** 20),
            "strategy": args.strategy}
    found = longest_fitting(
        lambda length, timeout: measure({**spec, "length": length}, world, timeout, worker=hf_worker),
        args.start * world, args.multiple, args.resolution, spec["cap_bytes"], args.cap_s,
        args.point_cap_s)
    # add_gains' key: (mixer, checkpoint); the one-process row is transformers'
    return {"mixer": f"{model} {mode}", "checkpoint": False, "model": model, "mode": mode,
            "tool": tool, "world": world, **found}


def markdown_text(record: dict) -> str:
    cfg = record["config"]
    lines = [f"# Longest context in {cfg['cap_mib']:g} MiB per process: transformers vs longmix.hf", "",
             *provenance_lines(record), "",
             f"A length fits when every rank's peak memory rise during one step (prefill: a forward "
             f"without gradients; train: forward, the model's LM loss, backward) is at most "
             f"{cfg['cap_mib']:g} MiB; a point over the cap is ended there by a watchdog. Random "
             f"weights, float32, batch 1, hidden {cfg['hidden']}, {cfg['layers']} layers, vocabulary "
             f"{VOCAB}; llama: 4/2 heads, sdpa (longmix: attention strategy "
             f"{cfg.get('strategy', 'auto')!r}); mamba: state 16, transformers' torch path (its "
             "reference scan), which longmix replaces by its own mamba mixer on the same parameters. "
             f"{cfg['threads']} torch thread(s) per rank; every rank calls "
             "`longmix.machine.return_freed_memory()` first (glibc's mmap threshold fixed). Search: "
             f"start {cfg['start']} x P doubled while it fits, then bisection to 1/{cfg['resolution']}"
             f" of the last interval, multiples of {cfg['multiple']}; time caps {cfg['point_cap_s']:.0f}"
             f" s per point, {cfg['cap_s']:.0f} s per search. The machine was shared with other jobs "
             "(timings are noisy; memory figures are sound).", "",
             "| model | mode | run | P | longest L | x one process (goal: 1.8x at 2, 3.4x at 4) | "
             "stopped by | points (L: MiB of the worst rank, or over) | s of the last fit |",
             "|" + "---|" * 9]
    for r in record["rows"]:
        pts = ", ".join(f"{p['length']:,}: " + (f"{p['memory_bytes'] / 2 ** 20:.0f}" if p["status"] == "ok"
                                                 else p["status"]) for p in r["points"])
        fit = [p["time_s"] for p in r["points"] if p["length"] == r["max_context"] and p["status"] == "ok"]
        gain = f"{r['vs_one_process']:.2f}x" if "vs_one_process" in r else "-"
        longest = f"{r['max_context']:,}" if r["max_context"] else "-"
        lines.append(f"| {r['model']} | {r['mode']} | {r['tool']} | {r['world']} | {longest} | {gain} | "
                     f"{r['stopped_by']} | {pts} | {f'{fit[0]:.1f}' if fit else '-'} |")
    return "\n".join(lines + [""] + goal_lines(record["rows"])) + "\n"


GOALS = {2: 1.8, 4: 3.4}  # issue 19: the context on P ranks over one process's, in the same memory


def first_miss(row: dict) -> int | None:
    """The shortest length measured not to fit above the answer: the answer's upper bound (a
    point measured above the answer is a miss, ended by the watchdog or over the cap at its end)."""
    above = [p["length"] for p in row["points"]
             if p["status"] in ("over the cap", "ok") and p["length"] > (row["max_context"] or 0)]
    return min(above) if above else None


def goal_lines(rows: list[dict]) -> list[str]:
    """Per model and mode: each P's gain against the goal, with the range the search leaves (the
    answers are the longest lengths measured to fit; the true limits lie below the first misses)."""
    out = ["Goal (issue 19: >= 1.8x at 2 ranks, >= 3.4x at 4, longmix against transformers on one "
           "process):", ""]
    for r in rows:
        base = next((b for b in rows if b["mixer"] == r["mixer"] and b["tool"] == "transformers"), None)
        goal = GOALS.get(r["world"])
        if r["tool"] != "longmix" or goal is None or base is None:
            continue
        if not (r["max_context"] and base["max_context"]):
            out.append(f"- {r['mixer']}, P = {r['world']}: no answer ({r['stopped_by']} / "
                       f"{base['stopped_by']}): not judged")
            continue
        gain = r["max_context"] / base["max_context"]
        hi, base_hi = first_miss(r), first_miss(base)
        low = r["max_context"] / base_hi if base_hi else None  # the range the search leaves
        high = hi / base["max_context"] if hi else None
        span = f" (the search leaves {low:.2f}x to {high:.2f}x)" if low and high else ""
        if gain >= goal:
            verdict = "met" if low and low >= goal else "met as measured (the range reaches below)"
        else:
            verdict = "not met" if high and high < goal else "not met as measured (the range reaches above)"
        caveat = "" if r["stopped_by"] == "memory" and base["stopped_by"] == "memory" else \
            f"; stopped by {r['stopped_by']} / transformers by {base['stopped_by']}"
        own = next((o["max_context"] for o in rows if o["mixer"] == r["mixer"]
                    and o["tool"] == "longmix" and o["world"] == 1), None)
        scaling = f"; against longmix on one rank {r['max_context'] / own:.2f}x" if own else ""
        out.append(f"- {r['mixer']}, P = {r['world']}: {gain:.2f}x{span} against {goal}x: "
                   f"{verdict}{caveat}{scaling}")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["llama", "mamba"], choices=["llama", "mamba"])
    p.add_argument("--modes", nargs="+", default=["train", "prefill"], choices=["train", "prefill"])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4],
                   help="longmix's process counts (transformers always runs on one)")
    p.add_argument("--cap-mib", type=float, default=64.0, help="the memory per process")
    p.add_argument("--start", type=int, default=1024, help="the first length tried, per rank")
    p.add_argument("--multiple", type=int, default=256, help="lengths are multiples of this")
    p.add_argument("--resolution", type=int, default=8,
                   help="bisect to 1/resolution of the last doubling's interval")
    p.add_argument("--cap-s", type=float, default=300.0, help="time cap per search")
    p.add_argument("--point-cap-s", type=float, default=120.0, help="time cap per point")
    p.add_argument("--strategy", default="ring", choices=["auto", "shuffle", "ring", "hybrid"],
                   help="longmix's attention strategy (longmix.hf.parallelize(strategy=)); the ring "
                        "holds O(L/P) per rank, the shuffle every row of its heads")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--tag", default="", help="a suffix of the result files' names")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    for name in ("cap_mib", "start", "multiple", "resolution", "hidden", "layers", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(w < 1 for w in args.ranks):
        p.error(f"--ranks must all be >= 1, got {args.ranks}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stem = "hf_context" + (f"_{args.tag}" if args.tag else "")
    record = {**run_record("hf_context.py", args, argv), "rows": []}
    settings = [("transformers", 1)] + [("longmix", w) for w in args.ranks]
    for model in args.models:
        for mode in args.modes:
            for tool, world in settings:
                row = search_row(model, mode, tool, world, args)
                record["rows"].append(row)
                add_gains(record["rows"], is_base=lambda r: r["tool"] == "transformers")
                points = [(p["length"], p["status"], p["memory_bytes"]) for p in row["points"]]
                print(f"{model} {mode} {tool} P={world}: {row['max_context']} (stopped by "
                      f"{row['stopped_by']}, {points})", flush=True)
                write_record(args.out_dir, stem, record, markdown_text(record))
    print(markdown_text(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
