"""Crash-safe checkpoints: write to a temporary file, fsync, then atomically rename.

``os.replace`` is atomic on POSIX and Windows, so at every instant the checkpoint path holds
either the previous complete checkpoint or the new complete one, never a torn file; the
previous one is kept until the new one is fully on disk. A crash mid-write leaves at most a
stray ``*.tmp`` file next to it, which the next save overwrites.

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: reading one never runs pickled code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
REQUIRED = ("format", "identity", "step", "model", "optimizer", "scheduler", "rng", "history", "wall_s",
            "sessions")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not look like a longmix checkpoint."""


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable. Not possible on every platform (e.g. Windows): best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never left half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave the previous checkpoint untouched; drop the partial one.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_atomic`; a clear :class:`CheckpointError` if it is
    corrupt, truncated or not a longmix checkpoint. The file is never modified or deleted."""
    path = Path(path)
    hint = ("the file was left in place; move it away (or delete it) to restart this run "
            "from step 0, or point --out at another directory")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... here
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              f"{hint}") from err
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(obj, dict) or k not in obj]
        raise CheckpointError(f"checkpoint {path} is not a longmix training checkpoint "
                              f"(missing {missing}); {hint}")
    if obj["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {obj['format']!r}, expected {FORMAT}; {hint}")
    return obj


# -- random number generator states, as weights_only-loadable values ------------------------
def rng_state() -> dict:
    """The states of python's, numpy's and torch's global generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
