"""Turn a study's run records into report.md, PNG plots and reading.txt.

    tables      records -> cells (task x mixer x context) with their spreads and flags
    markdown    report.md from the tables
    plots       the PNGs
    reading     reading.txt, the plain-text reading of the numbers
"""
from .markdown import cost_table, fmt, markdown, sweep_lines
from .plots import curves_plot, draw, plot, summary_plot
from .reading import cite, jump, ranking, reading, trend
from .tables import (CONVERGED_TOL, Cell, TaskTable, cell_flags, converged, label_of,
                     provenance_summary, tables)

__all__ = ["CONVERGED_TOL", "Cell", "TaskTable", "cell_flags", "cite", "converged", "cost_table",
           "curves_plot", "draw", "fmt", "jump", "label_of", "markdown", "plot",
           "provenance_summary", "ranking", "reading", "summary_plot", "sweep_lines", "tables",
           "trend"]
