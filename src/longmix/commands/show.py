"""`longmix show NAME|all`: draw mixing matrices to a PNG (plotting lives in longmix.viz)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("name", help="a mixer name (see `longmix mixers`), or 'all' for one panel per mixer")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--length", type=int, default=64,
                        help=f"sequence length L, 1..{MAX_LENGTH} (default 64)")
    parser.add_argument("--dim", type=int, default=16, help="model width (default 16)")
    parser.add_argument("--heads", type=int, default=2, help="heads / channel groups (default 2)")
    parser.add_argument("--causal", action="store_true", help="build causal mixers (where possible)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the random input")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="a constructor option of the mixer, e.g. -o window=8 (repeatable; not with 'all')")


# Each panel materializes L x L float64 matrices (several, for the literal paths) and draws one
# pixel per entry: past a few thousand positions that is gigabytes for a picture no screen shows.
MAX_LENGTH = 4096


def _fail(message: str) -> int:
    print(f"longmix show: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from longmix import mixers, viz
    from longmix.train.config import parse_pairs

    if args.name != "all" and args.name not in mixers.available():
        return _fail(f"unknown mixer {args.name!r}; valid names: all, {', '.join(mixers.available())}")
    if not 1 <= args.length <= MAX_LENGTH:
        return _fail(f"--length must be between 1 and {MAX_LENGTH} (the L x L mixing matrix is "
                     f"materialized and drawn), got {args.length}")
    if not args.out.suffix:  # matplotlib would append ".png"; say the name it really writes
        args.out = args.out.with_suffix(".png")
    folder = args.out.parent if str(args.out.parent) else Path(".")
    if not folder.is_dir():
        return _fail(f"--out: {str(folder)!r} is not an existing directory")
    target = args.out if args.out.exists() else folder
    if not os.access(target, os.W_OK):
        return _fail(f"--out: cannot write {str(args.out)!r}: permission denied")
    settings = dict(length=args.length, dim=args.dim, heads=args.heads, causal=args.causal, seed=args.seed)
    try:
        options = parse_pairs(args.option, "--option")  # the KEY=VALUE parser of `longmix train`
        if args.name == "all":
            if options:
                return _fail("--option applies to one mixer, not to 'all'")
            path = viz.plot_all(args.out, **settings)
        else:
            path = viz.plot_mixer(args.name, args.out, options=options, **settings)
    except ValueError as error:  # e.g. dim not divisible by heads: the mixer's own message
        return _fail(str(error))
    except OSError as error:  # e.g. a read-only file system, or root writing where it may not
        return _fail(f"--out: cannot write {str(args.out)!r}: {error.strerror or error}")
    print(f"wrote {path}")
    return 0
