"""`longmix attend`, the main job: exact causal attention over a million tokens on several ranks,
fast on the machine it runs on, verified against float64.

Modules, one concern each:
    config      the problem (:class:`AttendConfig`) and its defaults, torch-free (the CLI's source)
    main        the job's steps for both launchers: checks, calibration, dtype, memory, run
    workload    the problem's regenerable random data
    calibrate   a few seconds of kernel and link measurement; the dtype choice; the cache
    resources   memory per rank predicted, against what the machine has
    verify      which rows, the float64 reference, the tolerance, the verdict
    progress    the bar over the useful kernel work done (a torch function mode counts it)
    job         the job on each rank, and the local launcher
    report      what is printed

Names are loaded on first use, so ``longmix.attend.config`` can be imported without torch.
"""
from __future__ import annotations

import importlib

_HOMES = {"AttendConfig": "config", "run_job": "main", "Refused": "main",
          "attend_rank": "job", "run_local_job": "job", "format_report": "report"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'longmix.attend' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
