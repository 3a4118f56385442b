"""Forward time and peak memory of every token mixer for L = 2^10 .. 2^20 (batch 1, dim 64).

    python benchmarks/mixers_scaling.py                            # the full sweep (hours)
    python benchmarks/mixers_scaling.py --max-log2-len 12          # a smoke run
    python benchmarks/mixers_scaling.py --mixers s4d mamba --budget-s 60

Each point runs in a fresh process; finished points are saved at once, so an interrupted sweep
keeps its results and a rerun measures only what is missing (``--force`` re-measures). Writes
mixers_scaling.{csv,json,md,png} to ``--out-dir``. The method is described in
``longmix.bench.mixers``.
"""
from __future__ import annotations

import argparse
import sys

from longmix.bench.mixers import add_arguments, config_from_args, run_sweep
from longmix.bench.record import command_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = command_line("mixers_scaling.py", argv)
    run_sweep(config_from_args(args, command=command), progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
