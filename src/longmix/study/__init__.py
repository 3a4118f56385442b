"""Does long context help? Train over task x mixer x context (x seeds) and report.

    >>> from longmix.study import get_grid, run_study
    >>> grid = get_grid("small").select(mixers_=["softmax", "s4d"], contexts=[64, 256])
    >>> summary = run_study(grid, "runs/study")      # resumable; rerun to continue
"""
from .grid import FULL, GRIDS, SMALL, Grid, Run, StudyTask, get_grid
from .report import reading, tables
from .runner import run_study, write_report

__all__ = ["FULL", "GRIDS", "SMALL", "Grid", "Run", "StudyTask", "get_grid", "reading", "tables",
           "run_study", "write_report"]
