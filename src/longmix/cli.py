"""The `longmix` command line. Thin: each subcommand parses its arguments and calls the library.

Each subcommand lives in ``longmix.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import heavy dependencies inside ``run`` only, so that
building the parser (and `longmix --help`) stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = {
    "mixers": "print the taxonomy table of every token mixer",
    "show": "draw the mixing matrix of a mixer (or of every family) to a PNG",
    "attend": "exact (distributed) attention on a random sequence, verified against float64",
    "train": "train a model on a task with any mixer, with checkpoints and resume",
    "study": "train over a grid of task x mixer x context and report whether long context helps",
    "generate": "continue a prompt with a trained lm run, the prefill split over ranks",
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
    return int(args._run(args) or 0)


def entry() -> None:
    """The ``longmix`` executable (and ``python -m longmix.cli``): :func:`main`, then exit."""
    code = main()
    from .parallel.launch import launched_by_torchrun

    if launched_by_torchrun():
        _exit_rank(code)
    sys.exit(code)


def _exit_rank(code: int) -> None:
    """Exit a torchrun rank without the C++ teardown. After its group was destroyed and its files
    written, a rank still aborted now and then in that teardown (std::terminate, no Python frame;
    2 in 136 runs on a loaded 2-core machine), which failed the whole torchrun job; with this exit,
    0 in 80. ``os._exit`` skips the teardown; this flushes what it would have flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
