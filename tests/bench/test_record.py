"""longmix.bench.record: the head and the write-out every benchmark record shares."""
import argparse
import json
from pathlib import Path

from longmix.bench.record import command_line, provenance_lines, run_record, write_record


def test_a_record_says_the_command_the_arguments_and_the_code(tmp_path):
    args = argparse.Namespace(lengths=[1024, 2048], out_dir=tmp_path / "out", tag="")
    record = run_record("memory_slope.py", args, ["--lengths", "1024", "2048"])
    assert record["command"] == "python benchmarks/memory_slope.py --lengths 1024 2048"
    assert record["config"] == {"lengths": [1024, 2048], "out_dir": str(tmp_path / "out"), "tag": ""}
    assert {"git_describe", "git_commit"} <= set(record["provenance"]) and record["date"]
    lines = provenance_lines(record)
    assert lines[0] == f"Command: `{record['command']}`  " and lines[2].startswith("Commit: ")
    assert command_line("x.py", ["a b"]) == "python benchmarks/x.py 'a b'"  # quoted as a shell reads it


def test_write_record_writes_the_json_and_the_markdown(tmp_path):
    out = tmp_path / "new" / "dir"
    write_record(out, "stem", {"rows": [1]}, "# table\n")
    assert json.loads((out / "stem.json").read_text()) == {"rows": [1]}
    assert (out / "stem.md").read_text() == "# table\n"
    assert sorted(p.name for p in Path(out).iterdir()) == ["stem.json", "stem.md"]  # no temporaries left
