"""`longmix mixers`: the taxonomy table of every registered token mixer."""
from __future__ import annotations

COLUMNS = ("name", "family", "weights", "input-dependent", "causal", "time", "memory")


def add_arguments(parser):
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (e.g. for a README)")


def taxonomy_rows() -> list[tuple[str, ...]]:
    """One row per registered mixer, ordered by family (as in the paper's taxonomy), then name."""
    from longmix import mixers

    def row(name):
        t = mixers.get_class(name).taxonomy
        return (name, t.family, "learned" if t.learned else "fixed", "yes" if t.input_dependent else "no",
                "yes" if t.causal else "no", t.time, t.memory)

    order = {family: i for i, family in enumerate(mixers.FAMILIES)}
    return sorted((row(n) for n in mixers.available()), key=lambda r: (order[r[1]], r[0]))


def format_table(rows: list[tuple[str, ...]], markdown: bool = False) -> str:
    if markdown:
        lines = [COLUMNS, tuple("---" for _ in COLUMNS), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
    lines = [COLUMNS, tuple("-" * w for w in widths), *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines)


def run(args) -> int:
    print(format_table(taxonomy_rows(), markdown=args.markdown))
    return 0
