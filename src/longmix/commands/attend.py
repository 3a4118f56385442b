"""`longmix attend`: exact distributed attention on a random sequence, verified against float64.

    longmix attend                                   # a million tokens, causal, 2 local ranks
    longmix attend --seq-len 65536 --procs 4 --heads 8 --kv-heads 2 --strategy ring --dtype fp32
    torchrun --nnodes 2 --nproc-per-node 1 ... -m longmix.cli attend --seq-len 65536

Spawns ``--procs`` local gloo ranks, or, when started by torchrun (RANK/WORLD_SIZE/MASTER_ADDR in
the environment), joins torchrun's group and uses its world size. Exit status 1 when the sampled
rows disagree with the float64 reference beyond the dtype's tolerance.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Copies of longmix.dist.STRATEGIES / LAYOUTS: importing longmix.dist pulls in torch, and building
# the parser (`longmix --help`) must stay fast. tests/cli/test_attend.py keeps them in sync.
STRATEGIES = ("auto", "shuffle", "ring", "hybrid")
LAYOUTS = ("contiguous", "zigzag")
DTYPES = ("bf16", "fp32", "fp64")

# Default problem: a million tokens, causal, in a few minutes on this project's 2-core CPU box
# (Xeon with AMX-bf16). Measured with the CPU flash op (aten._scaled_dot_product_flash_attention_
# for_cpu) at L = 2^15..2^16, causal, extrapolated quadratically to L = 2^20:
#   fp32, 1 process x 2 threads: H=2,d=32 ~630 s; H=1,d=64 ~775 s (150-220 GFLOP/s)
#   bf16, 1 process x 2 threads: H=2,d=32 ~310 s; H=1,d=64 ~270 s (450-530 GFLOP/s, AMX)
#   bf16, 2 processes x 1 thread, 1 head each: d=32 ~310 s, d=16 ~290 s
# bf16 is 2x faster than fp32 here, and below d=32 the cost per score stops falling (the
# softmax, not the matmul, dominates), so d=32 is free over d=16. Two heads is the fewest that
# lets the paper's head-shuffle run on 2 ranks. Hence: 2 ranks, 2 heads (no GQA), d=32, bf16:
# ~5 minutes of attention plus a few seconds to generate and verify.
DEFAULTS = dict(seq_len=2**20, procs=2, heads=2, head_dim=32, dtype="bf16")


def _int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low``; the error names what was expected."""
    wanted = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--seq-len", type=_positive_int, default=d["seq_len"],
                        help=f"sequence length L (default {d['seq_len']:,})")
    parser.add_argument("--procs", type=_positive_int, default=None,
                        help=f"local ranks to spawn (default {d['procs']}); under torchrun the "
                             "launcher's world size is used instead")
    parser.add_argument("--heads", type=_positive_int, default=d["heads"],
                        help=f"query heads (default {d['heads']})")
    parser.add_argument("--kv-heads", type=_positive_int, default=None,
                        help="key/value heads, dividing --heads (default: --heads; fewer = GQA)")
    parser.add_argument("--head-dim", type=_positive_int, default=d["head_dim"],
                        help=f"head dimension (default {d['head_dim']})")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True,
                        help="causal mask (default: causal)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="distribution strategy (default auto: the planner picks)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="sequence layout over ranks (default: zigzag when causal, which "
                             "balances causal work across ranks; contiguous otherwise)")
    parser.add_argument("--dtype", choices=DTYPES, default=d["dtype"],
                        help=f"compute dtype (default {d['dtype']}: AMX makes it the fastest here)")
    parser.add_argument("--check-rows", type=_non_negative_int, default=16,
                        help="output rows verified against the float64 reference (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--timeout", type=_positive_int, default=3600,
                        help="seconds before a stuck run is killed (default 3600)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the full report (per-rank figures, machine) as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar / heartbeat on stderr")
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    parser = args._parser
    kv_heads = args.kv_heads or args.heads
    if args.heads % kv_heads:
        parser.error(f"argument --kv-heads: must divide --heads={args.heads}, got {kv_heads}")
    layout = args.layout or ("zigzag" if args.causal else "contiguous")

    from longmix.bench import attend as job
    from longmix.fileio import atomic_write_text

    cfg = job.AttendConfig(seq_len=args.seq_len, heads=args.heads, kv_heads=kv_heads,
                           head_dim=args.head_dim, causal=args.causal, strategy=args.strategy,
                           layout=layout, dtype=args.dtype, check_rows=args.check_rows,
                           seed=args.seed, timeout=float(args.timeout))
    torchrun = job.launched_by_torchrun()
    world = int(os.environ["WORLD_SIZE"]) if torchrun else args.procs or DEFAULTS["procs"]
    if torchrun and args.procs is not None and args.procs != world:
        parser.error(f"argument --procs: {args.procs} disagrees with torchrun's "
                     f"WORLD_SIZE={world}; leave --procs out under torchrun")
    why = job.strategy_error(cfg, world)
    if why:
        parser.error(f"argument --strategy: {why}")

    from longmix.dist.launch import RankFailure

    try:
        if torchrun:
            report = job.run_torchrun_job(cfg, progress=args.progress)
        else:
            report = job.run_local_job(cfg, procs=world, progress=args.progress)
    except RankFailure as exc:
        print(f"longmix attend: {exc}", file=sys.stderr)
        return 1
    is_rank0 = not torchrun or int(os.environ["RANK"]) == 0
    if is_rank0:
        print(job.format_report(report), flush=True)
        if args.json:  # a killed run never leaves half a report
            atomic_write_text(args.json, json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1
