"""The `longmix` command line. Thin: each subcommand parses its arguments and calls the library.

Each subcommand lives in ``longmix.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import heavy dependencies inside ``run`` only, so that
building the parser (and `longmix --help`) stays fast.

Exit status: 0 done; a command's own codes (1 a run or rank failed, 2 bad arguments, 3 the loss
diverged); :data:`EXIT_DISK_FULL` when any command's write (checkpoint, results, report) found
no space left, with the path, the bytes needed and the bytes free.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .fileio import DiskFull

#: Exit status of any command whose write found the disk full (its commands use 1 to 3).
EXIT_DISK_FULL = 4

COMMANDS = {
    "mixers": "print the taxonomy table of every token mixer",
    "show": "draw the mixing matrix of a mixer (or of every family) to a PNG",
    "attend": "exact (distributed) attention on a random sequence, verified against float64",
    "train": "train a model on a task with any mixer, with checkpoints and resume",
    "study": "train over a grid of task x mixer x context and report whether long context helps",
    "generate": "continue a prompt with a trained lm run or a transformers causal LM, the prefill "
                "split over ranks",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longmix", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"longmix.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DiskFull as err:  # every command's writes go through longmix.fileio, which raises it
        print(f"longmix {args.command}: error: {err}", file=sys.stderr)
        return EXIT_DISK_FULL


def entry() -> None:
    """The ``longmix`` executable (and ``python -m longmix.cli``): :func:`main`, then exit."""
    code = main()
    from .parallel.launch import launched_by_torchrun

    if launched_by_torchrun():
        _exit_rank(code)
    sys.exit(code)


def _exit_rank(code: int) -> None:
    """Exit a torchrun rank without the C++ teardown. After its group is destroyed and its files
    written, a rank can still abort in that teardown (std::terminate, no Python frame), which
    fails the whole torchrun job although its work is done. ``os._exit`` skips the teardown;
    this flushes what it would have flushed. (The measured abort rates are in the commit that
    added it.)"""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
