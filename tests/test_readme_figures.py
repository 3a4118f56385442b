"""Every figure in the README's results table is in the file its row links to.

A figure is a number in the "measured" column; after thousands separators are dropped
(1,048,576 -> 1048576) it must appear as a number in one of the row's linked files. This is the
check that would have caught the README quoting 0.93-0.98 GiB for a file holding 925.5 / 979.1 MiB.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers(text: str) -> set[str]:
    return set(NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)))


def results_rows(text: str) -> list[tuple[str, str, list[str]]]:
    """(what, measured, linked paths) of each row of the table under "## Results at a glance"."""
    section = text.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past header, rule
    out = []
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a results row must have 3 cells (what, measured, file): {line}"
        out.append((cells[0], cells[1], re.findall(r"\]\(([^)]+)\)", cells[2])))
    return out


def missing_figures(measured: str, files: list[Path]) -> list[str]:
    found = set().union(*(numbers(f.read_text(encoding="utf-8", errors="replace")) for f in files))
    return sorted(numbers(measured) - found)


ROWS = results_rows(README.read_text(encoding="utf-8"))


def test_the_table_has_rows():
    assert len(ROWS) >= 5


@pytest.mark.parametrize("what,measured,links", ROWS, ids=[r[0][:40] for r in ROWS])
def test_every_figure_is_in_its_file(what, measured, links):
    assert links, f"row {what!r} links no file"
    files = [ROOT / link for link in links]
    for f in files:
        assert f.is_file(), f"row {what!r} links {f.relative_to(ROOT)}, which does not exist"
    assert missing_figures(measured, files) == [], f"row {what!r}: figures not in {links}"


def test_the_check_catches_a_figure_not_in_the_file(tmp_path):
    record = tmp_path / "r.txt"
    record.write_text("0     1,048,576    925.5 MiB (160.8 MiB)\n1    979.1 MiB")
    assert missing_figures("925.5 and 979.1 MiB per rank, L = 1,048,576", [record]) == []
    assert missing_figures("0.93-0.98 GiB per rank", [record]) == ["0.93", "0.98"]
