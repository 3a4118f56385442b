"""The head every benchmark record starts with, and the pair of files it is written to.

Each script in ``benchmarks/`` keeps its own rows and tables; these give its record the same head
(the command as typed, the date, the machine, the code, the arguments) and the same write-out
(JSON and markdown, each replaced atomically), so every file under ``benchmarks/results/`` says
where it came from in the same words.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/<script> <arguments>``: the command that reproduces the run (``argv``:
    the arguments given to the script's ``main``; None: the process's own)."""
    return shlex.join(["python", f"benchmarks/{script}"] + list(sys.argv[1:] if argv is None else argv))


def config_of(args: argparse.Namespace) -> dict:
    """The parsed arguments as JSON values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def run_record(script: str, args: argparse.Namespace, argv: list[str] | None) -> dict:
    """A record's head: command, date, machine, provenance (commit, dirty state) and config."""
    from longmix.machine import describe
    from longmix.provenance import provenance, utc_now

    return {"command": command_line(script, argv), "date": utc_now(), "machine": describe(),
            "provenance": provenance(), "config": config_of(args)}


def provenance_lines(record: dict) -> list[str]:
    """The markdown lines that say where ``record`` came from (command, date, commit, machine)."""
    from longmix.machine import markdown

    code = record["provenance"]
    return [f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
            f"Commit: {code['git_describe']} ({code['git_commit']})  ",
            f"Machine: {markdown(record['machine'])}"]


def write_record(out_dir: Path, stem: str, record: dict, text: str) -> None:
    """``record`` to ``<stem>.json`` and ``text`` to ``<stem>.md`` under ``out_dir``, each
    replaced atomically (a reader, or a crash, never sees half a file)."""
    from longmix.fileio import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=1) + "\n")
    atomic_write_text(out_dir / f"{stem}.md", text)
