"""Does long context help? Train over task x mixer x context (x seeds) and report.

A study sweeps each (task, mixer) cell's learning rate (and positions) on the validation split,
trains every context and seed with the choice, matches parameter counts within a task, and
reports every cell against its floor (n-gram counts, chance, majority class); see
:mod:`longmix.study.grid`, :mod:`longmix.study.floors` and :mod:`longmix.study.report`.

    >>> from longmix.study import get_grid, run_study
    >>> grid = get_grid("small").select(mixers_=["softmax", "s4d"], contexts=[64, 256])
    >>> summary = run_study(grid, "runs/study")      # resumable; rerun to continue
"""
from .grid import FULL, GRIDS, SMALL, TINY, Grid, Run, StudyTask, choose, get_grid
from .report import reading, tables
from .runner import run_study, write_report

__all__ = ["FULL", "GRIDS", "SMALL", "TINY", "Grid", "Run", "StudyTask", "choose", "get_grid", "reading", "tables",
           "run_study", "write_report"]
