"""Crash-safe checkpoints, and a strict check of what is read back.

A checkpoint is replaced atomically (:func:`longmix.fileio.atomic_replace`: a uniquely named
temporary file, fsync, rename), so at every instant the checkpoint path holds either the previous
complete checkpoint or the new complete one, never a torn file, and a symlink planted next to
it is never written through. A hard kill mid-write leaves at most a hidden temporary file, which
the next run clears (:func:`longmix.fileio.remove_stale_temps`) under the run folder's lock.

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: reading one never runs pickled code. Every field is checked
for its type on load, so a damaged or hand-edited checkpoint is a clear error naming the field,
not a traceback deep inside the training loop.
"""
from __future__ import annotations

import math
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checks import is_int
from ..fileio import atomic_replace

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not look like a longmix checkpoint."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never left half-written; a full disk is a
    :class:`longmix.fileio.DiskFull` naming the path and about how many bytes were needed."""
    with atomic_replace(path, "wb", size_hint=_tensor_bytes(obj)) as f:
        torch.save(obj, f)


def _tensor_bytes(obj) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): most of a checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: Each field and (a test of its value, what the test expects), for the error message.
FIELDS = {
    "format": (is_int, "an int"),
    "identity": (lambda v: isinstance(v, dict), "a dict"),
    "step": (lambda v: is_int(v, low=0), "an int >= 0"),
    "model": (lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()),
              "a dict of tensors"),
    "optimizer": (lambda v: isinstance(v, dict), "a dict"),
    "scheduler": (lambda v: isinstance(v, dict), "a dict"),
    "rng": (lambda v: isinstance(v, dict) and {"python", "numpy", "torch"} <= set(v), "a dict of RNG states"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of dicts"),
    "wall_s": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "sessions": (lambda v: is_int(v, low=0), "an int >= 0"),
}
REQUIRED = tuple(FIELDS)


def _describe(err: Exception) -> str:
    """A one-line reason for a failed ``torch.load``. torch's message for data it refuses to
    unpickle advises retrying with ``weights_only=False``, i.e. running the file's code: that
    advice is wrong for a file that should hold only tensors, so only the reason is kept."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = next((ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()), "")
        return f"not a file of tensors and plain values: {reason}".rstrip(": ")
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else f"{type(err).__name__}: the file ended early"


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_atomic`; a clear :class:`CheckpointError` if it is
    corrupt, truncated, not a longmix checkpoint, or a field has the wrong type. The file is
    never modified or deleted."""
    path = Path(path)
    hint = ("the file was left in place; move it away (or delete it) to restart this run "
            "from step 0, or point --out at another directory")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... here
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({_describe(err)}); "
                              f"{hint}") from None
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(obj, dict) or k not in obj]
        raise CheckpointError(f"checkpoint {path} is not a longmix training checkpoint "
                              f"(missing {missing}); {hint}")
    if obj["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {obj['format']!r}, expected {FORMAT}; {hint}")
    for name, (ok, expected) in FIELDS.items():
        if not ok(obj[name]):
            value = obj[name]
            shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
            raise CheckpointError(f"checkpoint {path} is damaged: field {name!r} must be {expected}, "
                                  f"got {shown}; {hint}")
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
