"""Data generators and loaders: synthetic long-range tasks and real text on disk.

Every task is deterministic given a seed and exposes the context length as a knob::

    task = longmix.tasks.build("mqar", seed=0, length=512)
    x, y = task.batch("train", index=0, batch_size=32, context=256)   # x: (32, 256)

See :mod:`longmix.tasks.base` for the contract, and each task module for its recipe and a
comparison of its parameters with the published ones.
"""
from .base import SPLITS, Task, truncate_left
from .registry import available, build, get_class, parameters, register

# Importing a task module registers it (order = order of `available()`).
from . import listops, pathfinder, mqar, passkey, distance, text  # noqa: E402,F401  isort: skip
from .text import bits_per_byte  # noqa: E402  isort: skip

__all__ = ["SPLITS", "Task", "truncate_left", "available", "build", "get_class", "parameters", "register",
           "bits_per_byte"]
