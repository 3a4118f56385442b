"""Append-only results files: one JSON object per line, one line per finished run.

Lines are only ever appended (``O_APPEND``, each line written in full, then fsync), never rewritten,
so earlier results survive any crash or rerun. Readers skip a torn last line with a warning
instead of failing, so one bad line never hides the others.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import warnings
from pathlib import Path

import torch


def append(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (created if missing)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # A torn previous line (a crash mid-write) must not swallow this record: start a new line.
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = b"\n" + line
        # os.write may write fewer bytes than asked (e.g. a full disk, a signal): finish the line.
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read(path: str | os.PathLike) -> list[dict]:
    """Every well-formed record in ``path`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping a line that is not valid JSON")
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def find(path: str | os.PathLike, run_id: str) -> dict | None:
    """The record of the finished run ``run_id`` in ``path``, or None."""
    for record in read(path):
        if record.get("run_id") == run_id:
            return record
    return None


def git_commit() -> str | None:
    """The commit of the longmix checkout, if it is a git checkout and git is available."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


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


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
