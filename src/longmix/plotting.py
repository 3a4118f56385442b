"""matplotlib for writing figures to files, the one way every plot in longmix gets it."""
from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: files only, so no display is ever needed.

    Imported on first use, so that the library imports without matplotlib's start-up cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
