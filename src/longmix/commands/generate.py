"""`longmix generate`: continue a prompt with a trained run's model or a transformers causal LM,
the prompt's prefill split over ranks and the cache kept sharded while decoding (see
``longmix.generate``).

    longmix generate --run runs/text --prompt "def main(" --max-new-tokens 64
    longmix generate --run runs/text --prompt-file long.py --procs 2 --json out.json
    longmix generate --hf-model DIR --prompt-ids 1,2,3 --procs 2
    torchrun --nproc-per-node 2 -m longmix.cli generate --run-dir runs/text --prompt-file long.py

Prints the continuation (decoded text for a byte-level task such as ``text``, token ids
otherwise) on stdout, and on stderr the prefill time, the decode rate, and each rank's peak
memory and cache bytes. Exit status: 0 done, 2 bad arguments or run folder, 1 a rank failed.
"""
from __future__ import annotations

import os
import sys

EXIT_RANK_FAILED, EXIT_BAD_INPUT = 1, 2


def add_arguments(parser):
    a = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR",
                        help="the folder of a finished `longmix train` lm run (--run-dir under "
                             "torchrun, whose own parser takes --run for an abbreviation of its "
                             "--run-path)")
    source.add_argument("--hf-model", metavar="DIR",
                        help="a transformers causal LM saved with save_pretrained (text prompts "
                             "use the tokenizer saved there; nothing downloads)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (byte-level tasks such as text; an HF model's "
                        "saved tokenizer)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt text from FILE")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, comma separated")
    a("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    a("--procs", type=int, default=None,
      help="local ranks (gloo) to split the prompt over (default 1); under torchrun its "
           "WORLD_SIZE is used")
    a("--layout", default="contiguous", choices=["contiguous", "zigzag"],
      help="how the prompt is split over the ranks (default contiguous)")
    a("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    a("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    a("--top-p", type=float, default=None, help="sample among the smallest set reaching probability p")
    a("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    a("--threads", type=int, default=None, help="torch CPU threads per rank (default: cores / ranks)")
    a("--timeout", type=float, default=1800.0,
      help="seconds a rank waits on a collective before failing (default 1800)")
    a("--json", metavar="FILE", default=None, help="also write the tokens and figures to FILE")
    a("--quiet", action="store_true", help="no progress bar")


def _prompt_ids(args, run) -> list[int]:
    if args.prompt_ids is not None:
        try:
            return [int(t) for t in args.prompt_ids.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"--prompt-ids must be integers separated by commas, got "
                             f"{args.prompt_ids!r}") from None
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise ValueError(f"--prompt-file {args.prompt_file!r}: {err.strerror or err}") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"--prompt-file {args.prompt_file!r} is not UTF-8 text ({err})") from err
    else:
        text = args.prompt
    return run.encode(text)


def _request(args) -> tuple:
    """The source without its model (for the report) and everything the ranks need, checked
    here first so that bad input fails before any rank starts: the same checks ``generate``
    makes, on this process."""
    import torch

    from ..checks import check_int
    from ..generate.run_folder import load_source
    from ..generate.validate import check_request

    check_int("--max-new-tokens", args.max_new_tokens, low=0)
    if args.procs is not None:
        check_int("--procs", args.procs)
    run = load_source(args.run, args.hf_model)
    ids = _prompt_ids(args, run)
    if not ids:
        raise ValueError("the prompt is empty: give at least one token to continue")
    check_request(run.model, torch.tensor([ids]), args.max_new_tokens, args.layout,
                  args.temperature, args.top_k, args.top_p, args.seed)
    run.model = None  # the ranks load their own; this process keeps what the report needs
    return run, dict(run=args.run, hf_model=args.hf_model, ids=ids, max_new_tokens=args.max_new_tokens, layout=args.layout,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                threads=args.threads, progress=not args.quiet)


def _rank_main(group, request: dict) -> dict:
    """One rank: load the run, generate, and report this rank's figures."""
    import threading

    import torch
    import torch.distributed as dist

    from .. import machine
    from ..generate import GenerationStats, generate
    from ..generate.run_folder import load_source

    if request["threads"]:
        torch.set_num_threads(request["threads"])
    rank = dist.get_rank(group) if group is not None else 0
    source = load_source(request["run"], request["hf_model"])
    model = source.model
    bar = None
    if request["progress"] and rank == 0:
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock: a killed rank leaks it
        bar = tqdm(total=source.layers, desc="prefill", unit="layer", file=sys.stderr)

    def progress(done, total):
        if bar is not None:
            bar.update(done - bar.n)

    machine.reset_peak_rss()
    stats = GenerationStats()
    tokens = generate(model, torch.tensor([request["ids"]]), request["max_new_tokens"], group=group,
                      layout=request["layout"], temperature=request["temperature"],
                      top_k=request["top_k"], top_p=request["top_p"], seed=request["seed"],
                      stats=stats, progress=progress)
    if bar is not None:
        bar.close()
    return dict(rank=rank, tokens=tokens[0].tolist(), prefill_s=stats.prefill_seconds,
                decode_s=stats.decode_seconds, decode_steps=stats.decode_steps,
                decode_tokens_per_s=stats.decode_tokens_per_second, cache_bytes=stats.cache_bytes,
                peak_rss_bytes=machine.peak_rss_bytes(), forms=stats.forms)


def _report(request: dict, results: list[dict], run) -> dict:
    from ..provenance import provenance, utc_now

    first = results[0]
    text = run.decode(first["tokens"]) if run.has_text_encoding else None
    return {**run.describe(), "prompt_tokens": len(request["ids"]), "max_new_tokens": request["max_new_tokens"],
            "world_size": len(results), "layout": request["layout"], "forms": first["forms"],
            "tokens": first["tokens"], "text": text,
            "prefill_s": max(r["prefill_s"] for r in results),
            "decode_tokens_per_s": min(r["decode_tokens_per_s"] for r in results),
            "cache_bytes_per_rank": [r["cache_bytes"] for r in results],
            "peak_rss_bytes_per_rank": [r["peak_rss_bytes"] for r in results],
            "date": utc_now(), "provenance": provenance()}


def _print(report: dict) -> None:
    print(report["text"] if report["text"] is not None else " ".join(map(str, report["tokens"])))
    mib = 2.0 ** 20
    lines = [f"prompt {report['prompt_tokens']:,} tokens on {report['world_size']} rank(s) "
             f"({report['layout']}; layer forms {report['forms']})",
             f"prefill {report['prefill_s']:.3f} s; decode {report['decode_tokens_per_s']:.1f} tokens/s",
             "peak memory per rank (MiB): " + ", ".join(f"{b / mib:.0f}" for b in report["peak_rss_bytes_per_rank"]),
             "cache bytes per rank: " + ", ".join(f"{b:,}" for b in report["cache_bytes_per_rank"])]
    print("\n".join(lines), file=sys.stderr)


def run(args) -> int:
    import json

    from ..fileio import atomic_write_text, strict_json_value
    from ..generate import DecodeError
    from ..parallel.launch import RankFailure, run_local, torchrun_group, torchrun_world_size

    def fail(code: int, message) -> int:
        print(f"longmix generate: error: {message}", file=sys.stderr)
        return code

    try:
        world = torchrun_world_size(args.procs)
        source, request = _request(args)
    except ValueError as err:
        return fail(EXIT_BAD_INPUT, err)
    try:
        if world is not None:
            import torch.distributed as dist

            with torchrun_group(args.timeout) as group:
                mine = _rank_main(group, request)
                results = [None] * world
                dist.all_gather_object(results, mine, group=group)  # every rank's figures, small
            if int(os.environ["RANK"]) != 0:
                return 0  # rank 0 prints
        elif (args.procs or 1) > 1:
            results = run_local(_rank_main, args.procs, (request,), timeout=float("inf"),
                                collective_timeout=args.timeout)
        else:
            results = [_rank_main(None, request)]
    except ValueError as err:
        return fail(EXIT_BAD_INPUT, err)
    except (RankFailure, DecodeError) as err:
        return fail(EXIT_RANK_FAILED, err)
    report = _report(request, results, source)
    _print(report)
    if args.json:
        atomic_write_text(args.json, json.dumps(strict_json_value(report), indent=1) + "\n")
    return 0
