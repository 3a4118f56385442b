"""`longmix attend`: exact distributed attention on a random sequence, verified against float64.

    longmix attend                                   # a million tokens, causal, 2 local ranks
    longmix attend --seq-len 65536 --procs 4 --heads 8 --kv-heads 2 --strategy ring --dtype fp32
    torchrun --nnodes 2 --nproc-per-node 1 ... -m longmix.cli attend --seq-len 65536

Spawns ``--procs`` local gloo ranks, or, when started by torchrun (RANK/WORLD_SIZE/MASTER_ADDR in
the environment), joins torchrun's group and uses its world size.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

# Torch-free, so building the parser (`longmix --help`) stays fast. The defaults are the job's
# own (AttendConfig), so the command and Python callers cannot drift apart.
from ..attend.config import DEFAULT_PROCS, DEVICES, AttendConfig
from ..vocabulary import DTYPE_ALIASES, LAYOUTS, STRATEGIES
from ..vocabulary import DTYPE_NAMES as DTYPES

#: Exit statuses, documented in --help and the README.
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3
EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's convention for "killed by SIGTERM"

EPILOG = """exit status:
  0  the run finished and verification passed (or was skipped: --check-rows 0 prints
     "not verified", never PASS)
  1  verification FAILED: a sampled row is off by more than the tolerance
  2  bad arguments, refused before any rank starts (also: an unwritable --json path, a
     problem predicted not to fit in memory)
  3  runtime failure: a rank raised, died or timed out; or the report could not be written
  143  stopped by SIGTERM (every rank is stopped too)"""

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


def _dtype(text: str) -> str:
    name = DTYPE_ALIASES.get(text, text)
    if name not in (*DTYPES, "auto"):
        raise argparse.ArgumentTypeError(
            f"expected auto or one of {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)}), got {text!r}")
    return name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = AttendConfig()
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--seq-len", type=_positive_int, default=d.seq_len,
                        help=f"sequence length L (default {d.seq_len:,})")
    parser.add_argument("--procs", type=_positive_int, default=None,
                        help=f"local ranks to spawn (default {DEFAULT_PROCS}); under torchrun the "
                             "launcher's world size is used instead")
    parser.add_argument("--heads", type=_positive_int, default=d.heads,
                        help=f"query heads (default {d.heads})")
    parser.add_argument("--kv-heads", type=_positive_int, default=None,
                        help="key/value heads, dividing --heads (default: --heads; fewer = GQA)")
    parser.add_argument("--head-dim", type=_positive_int, default=d.head_dim,
                        help=f"head dimension (default {d.head_dim})")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=d.causal,
                        help="causal mask (default: causal)")
    parser.add_argument("--strategy", choices=STRATEGIES, default=d.strategy,
                        help="distribution strategy (default auto: the planner picks, at rates "
                             "measured on this machine)")
    parser.add_argument("--hybrid-size", type=_positive_int, default=None,
                        help="ranks per shuffle group for --strategy hybrid (a divisor of the "
                             "world size; default: the planner's, or the degenerate grid u=1/u=P "
                             "when the world size has no other divisor)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="sequence layout over ranks (default: zigzag when causal, which "
                             "balances causal work across ranks; contiguous otherwise)")
    parser.add_argument("--dtype", type=_dtype, default=d.dtype,
                        help="compute dtype: fp32, bf16, fp64, or auto (default): a few seconds of "
                             "calibration pick bf16 only where it is faster than fp32 here")
    parser.add_argument("--device", choices=DEVICES, default=d.device,
                        help="cpu (default): local gloo ranks or torchrun; cuda: one process on "
                             "one NVIDIA GPU (dtype auto means bf16 there)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure the machine again instead of using the cached calibration")
    parser.add_argument("--check-rows", type=_non_negative_int, default=d.check_rows,
                        help=f"random output rows verified against float64, on top of every "
                             f"shard boundary, chunk edge and the first/last row (default "
                             f"{d.check_rows}; 0 verifies nothing and prints 'not verified')")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"data seed (default {d.seed})")
    parser.add_argument("--timeout", type=_positive_int, default=int(d.timeout),
                        help=f"seconds before a stuck run is killed (default {d.timeout:g})")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the full report (per-rank figures, machine, "
                             "calibration) as JSON; checked for writability before the run")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on stderr")
    parser.set_defaults(_parser=parser)


def json_path_error(path: str) -> str | None:
    """Why ``path`` cannot receive the report (None when it can), checked before any work."""
    target = Path(path)
    if target.is_dir():
        return f"{path} is a directory"
    folder = target.parent
    if not folder.is_dir():
        return f"folder {str(folder)!r} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return f"{path} is not writable"
    return None


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    # Raised in the main thread wherever it waits: run_local's clean-up then stops every rank.
    raise _Terminated()


def run(args: argparse.Namespace) -> int:
    """Parse what argparse cannot check alone, run the job, map its errors to exit statuses."""
    parser = args._parser
    kv_heads = args.kv_heads or args.heads
    if args.heads % kv_heads:
        parser.error(f"argument --kv-heads: must divide --heads={args.heads}, got {kv_heads}")
    if args.hybrid_size is not None and args.strategy != "hybrid":
        parser.error("argument --hybrid-size: applies to --strategy hybrid only")
    if args.json and (why := json_path_error(args.json)):
        parser.error(f"argument --json: {why}")
    cfg = AttendConfig(seq_len=args.seq_len, heads=args.heads, kv_heads=kv_heads,
                       head_dim=args.head_dim, causal=args.causal, strategy=args.strategy,
                       layout=args.layout, dtype=args.dtype, check_rows=args.check_rows,
                       seed=args.seed, timeout=float(args.timeout), hybrid_size=args.hybrid_size,
                       device=args.device)

    from longmix import attend
    from longmix.fileio import atomic_write_text, strict_json_value
    from longmix.parallel.launch import RankFailure, launched_by_torchrun

    torchrun = launched_by_torchrun()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if not torchrun else None
    try:
        report = attend.run_job(cfg, procs=args.procs, progress=args.progress,
                                recalibrate=args.recalibrate)
    except attend.Refused as exc:
        parser.error(f"argument {exc.argument}: {exc.reason}")
    except RankFailure as exc:
        print(f"longmix attend: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except _Terminated:
        print("longmix attend: stopped by SIGTERM; every rank was stopped", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not torchrun or int(os.environ["RANK"]) == 0:
        print(attend.format_report(report), flush=True)
        if args.json:  # a killed run never leaves half a report
            try:
                text = json.dumps(strict_json_value(report), indent=2, default=str, allow_nan=False)
                atomic_write_text(args.json, text)
            except OSError as exc:
                print(f"longmix attend: could not write --json {args.json}: {exc}", file=sys.stderr)
                return EXIT_RUNTIME
    return EXIT_PASS if report["verification"]["verdict"] != "FAIL" else EXIT_FAIL
