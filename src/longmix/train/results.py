"""A run folder's ``results.jsonl``: what a finished (or diverged) run left, and where it ran.

The file is written only through :func:`longmix.fileio.append_record` (one strict-JSON line per
record, fsynced, torn lines repaired) and read through :func:`longmix.fileio.read_records`.
Each record has a ``status``: "finished" (a complete run, with its test metrics) or "diverged"
(the loss became non-finite; the record says at which step). Records written before statuses
existed are finished runs.
"""
from __future__ import annotations

import os
import platform

import torch

from ..fileio import read_records

FINISHED, DIVERGED = "finished", "diverged"


def find(path: str | os.PathLike, run_id: str) -> dict | None:
    """The last record of run ``run_id`` in ``path`` (finished or diverged), or None."""
    found = None
    for record in read_records(path):
        if record.get("run_id") == run_id and record.get("status", FINISHED) in (FINISHED, DIVERGED):
            found = record
    return found


def machine(device: str = "cpu") -> dict:
    """Where a run ran: host, OS, CPU, thread count, torch version and device."""
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
