"""A run folder's ``results.jsonl``: what a finished (or diverged) run left, and where it ran.

The file is written only through :func:`longmix.fileio.append_record` (one strict-JSON line per
record, fsynced, torn lines repaired) and read through :func:`longmix.fileio.read_records`.
Each record has a ``status``: "finished" (a complete run, with its test metrics) or "diverged"
(the loss became non-finite; the record says at which step). Records written before statuses
existed are finished runs.
"""
from __future__ import annotations

import os

from ..fileio import read_records

FINISHED, DIVERGED = "finished", "diverged"


def find(path: str | os.PathLike, run_id: str) -> dict | None:
    """The last record of run ``run_id`` in ``path`` (finished or diverged), or None."""
    found = None
    for record in read_records(path):
        if record.get("run_id") == run_id and record.get("status", FINISHED) in (FINISHED, DIVERGED):
            found = record
    return found

