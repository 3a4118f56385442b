"""The Task contract: deterministic batches with the context length as a knob.

A task generates (or reads) full examples of ``length`` tokens. ``batch(split, index, batch_size,
context)`` returns the LAST ``context`` tokens of each example, left-padded with ``pad_id`` when
the example is shorter. The full examples of a batch depend on ``(seed, split, index, batch_size)``
only, never on ``context``: a context sweep sees the very same examples, truncated differently,
so accuracy differences between contexts come from what the model can see, not from the data.

Layouts:

* ``x``: LongTensor (batch_size, context), token ids in ``[0, vocab_size)``; ``pad_id = 0`` is
  reserved for padding and never used by a real token.
* ``y``: LongTensor (batch_size,) with class ids in ``[0, num_classes)`` for ``kind == "classify"``;
  LongTensor (batch_size, context) of next-token targets for ``kind == "lm"``.

Determinism: every batch draws from its own random stream, seeded by
``(task name, seed, split, index, batch_size)`` through :class:`numpy.random.SeedSequence`.
Resuming training means calling ``batch`` with the same index. The three splits use different
streams; for synthetic tasks an identical example in two splits is possible only by chance (the
example spaces are astronomically large for the default sizes); the text task splits by file.
"""
from __future__ import annotations

import inspect
import zlib
from typing import ClassVar

import numpy as np
import torch

SPLITS = ("train", "valid", "test")
KINDS = ("classify", "lm")


def check_int(name: str, value, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``; otherwise raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


def check_fraction_range(name: str, value) -> tuple[float, float]:
    """Accept a float in [0, 1] or a pair (lo, hi) with 0 <= lo <= hi <= 1; return (lo, hi)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = (float(v) for v in value)
    else:
        raise ValueError(f"{name} must be a float in [0, 1] or a pair (lo, hi), got {value!r}")
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 1, got {value!r}")
    return lo, hi


class Task:
    """Base class of all tasks. Subclasses set the attributes below in ``__init__`` and implement
    :meth:`examples` (classification tasks; override :meth:`window` to render only the visible
    window of very long examples) or override :meth:`batch` (language modeling).

    Attributes:
        name: registry name.
        kind: ``"classify"`` (one label per sequence) or ``"lm"`` (next-token prediction).
        vocab_size: token ids are in ``[0, vocab_size)``.
        pad_id: the padding id, 0, never produced by a real token.
        num_classes: number of labels for ``"classify"``; None for ``"lm"``.
        length: length in tokens of a full example (the longest, for variable-length tasks).
        long_range: True when the answer depends on tokens far from the end of the sequence, so
            that a short context cannot answer it; each task's docstring says why.
        seed: the task's seed; all batches derive from it.
    """

    name: ClassVar[str] = "task"
    kind: str = "classify"
    vocab_size: int
    pad_id: int = 0
    num_classes: int | None = None
    length: int
    long_range: bool

    def __init__(self, seed: int = 0):
        self.seed = check_int("seed", seed, low=0)

    # -- randomness ------------------------------------------------------------------------------
    def rng(self, split: str, index: int, batch_size: int) -> np.random.Generator:
        """The random stream of one batch; different for every (task, seed, split, index, size)."""
        salt = zlib.crc32(self.name.encode())
        entropy = [salt, self.seed, SPLITS.index(split), index, batch_size]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    # -- public API ------------------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` for batch ``index`` of ``split``; see the module docstring for layouts.

        Deterministic in ``(seed, split, index, batch_size, context)``; the underlying full
        examples do not depend on ``context``.
        """
        split, index, batch_size, context = self.check_batch_args(split, index, batch_size, context)
        return self.window(self.rng(split, index, batch_size), batch_size, context)

    def window(self, rng: np.random.Generator, batch_size: int, context: int):
        """``(x, y)`` from the last ``context`` tokens of the examples drawn from ``rng``.
        Tasks whose examples are much longer than a typical context (passkey) override this to
        render only the window; the random draws must not depend on ``context``."""
        full, labels = self.examples(rng, batch_size)
        return truncate_left(full, context, self.pad_id), torch.as_tensor(labels, dtype=torch.long)

    def examples(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Full examples, right-aligned: int64 array (batch_size, length) whose shorter examples
        are left-padded with ``pad_id``, and int64 labels (batch_size,)."""
        raise NotImplementedError

    def check_batch_args(self, split, index, batch_size, context):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return (split, check_int("index", index, low=0), check_int("batch_size", batch_size),
                check_int("context", context))

    def describe(self) -> dict:
        """The task's attributes and parameters, JSON-serialisable (for results files)."""
        info = {k: getattr(self, k) for k in ("name", "kind", "vocab_size", "pad_id", "num_classes",
                                              "length", "long_range", "seed")}
        info["params"] = dict(self.params())
        return info

    def params(self) -> dict:
        """The constructor parameters that define this task (besides ``seed``). By convention
        every constructor parameter is stored as an attribute of the same name."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "seed")]
        return {k: getattr(self, k) for k in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {"seed": self.seed, **self.params()}.items())
        return f"{type(self).__name__}({args})"


def truncate_left(full: np.ndarray | torch.Tensor, context: int, pad_id: int = 0) -> torch.Tensor:
    """The last ``context`` columns of ``full`` (batch, length), left-padded with ``pad_id`` when
    ``length < context``. Returns a contiguous LongTensor (batch, context)."""
    full = torch.as_tensor(full, dtype=torch.long)
    batch, length = full.shape
    if length >= context:
        return full[:, length - context:].contiguous()
    out = full.new_full((batch, context), pad_id)
    out[:, context - length:] = full
    return out
