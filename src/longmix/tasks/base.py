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
Resuming training means calling ``batch`` with the same index.

Disjoint splits: different random streams alone do not keep a test example out of training
(a 1-digit passkey in 512 tokens has only ~5000 distinct examples, and 9600 training draws
cover most of them). So every synthetic example belongs to exactly one split by a hash of its
content (:meth:`Task.example_hash`): ``valid`` and ``test`` take the examples whose hash falls
in their slices (:data:`SPLIT_FRACTIONS`) and ``train`` the rest. A split's batch draws
examples and keeps those of its own split; identical examples hash alike, so no test example
can ever appear in training. The text task splits by file instead.
"""
from __future__ import annotations

import hashlib
import inspect
import zlib
from typing import ClassVar, Iterator

import numpy as np
import torch

from ..checks import check_int

SPLITS = ("train", "valid", "test")
KINDS = ("classify", "lm")
#: Fractions of the example space owned by valid and test (train owns the rest). Each valid or
#: test example costs 1 / fraction draws, so these stay large enough for cheap generation.
SPLIT_FRACTIONS = {"valid": 0.1, "test": 0.1}
METRICS = ("accuracy", "bits_per_byte", "bits_per_token")
_MAX_DRAW_ROUNDS = 1000  # a guard: a split that owns (almost) no example raises instead of looping
#: The ``batch_size`` that seeds the document stream of packed batches: no batch has size 0, so
#: packed data never replays the random stream of a padded batch.
PACKED_STREAM = 0
_DOCUMENTS_PER_DRAW = 32  # whole examples rendered at a time for a document stream


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
        metric: the headline metric: ``"accuracy"`` (default for classify; also for lm tasks
            whose targets are labels at some positions), ``"bits_per_token"`` (default for lm)
            or ``"bits_per_byte"`` (byte-level text).
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

    @property
    def metric(self) -> str:
        # A subclass declares its own with a class attribute (``metric = "bits_per_byte"``).
        return "accuracy" if self.kind == "classify" else "bits_per_token"

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
        return self.window(self.rng(split, index, batch_size), batch_size, context, split)

    def window(self, rng: np.random.Generator, batch_size: int, context: int, split: str = "train"):
        """``(x, y)`` from the last ``context`` tokens of examples of ``split`` drawn from ``rng``.
        Tasks whose examples are much longer than a typical context (passkey) override this to
        render only the window; the random draws must not depend on ``context``."""
        full, labels = self.split_examples(rng, batch_size, split)
        return truncate_left(full, context, self.pad_id), torch.as_tensor(labels, dtype=torch.long)

    def documents(self, split: str, index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The endless stream of whole examples that packed batch ``index`` of ``split`` draws
        from (``longmix train --pack``): ``(x, y)``, 1-D LongTensors of the example's own length
        (at most :attr:`length`; the left padding of :meth:`window` removed), ``y`` the next-token
        targets, ``pad_id`` where nothing is scored. Deterministic in ``(seed, split, index)``.

        Language-modelling tasks only: a classification example has one label for the sequence,
        not one target per token."""
        split, index, _, _ = self.check_batch_args(split, index, 1, 1)
        if self.kind != "lm":
            raise ValueError(f"task {self.name!r} is a {self.kind} task (one label per sequence); "
                             f"only language-modelling tasks have documents to pack")
        rng = self.rng(split, index, PACKED_STREAM)
        while True:
            xs, ys = self.window(rng, _DOCUMENTS_PER_DRAW, self.length, split)
            real = xs != self.pad_id  # pad_id is never a real token: the left padding
            for x, y, keep in zip(xs, ys, real):
                start = int(keep.to(torch.int8).argmax()) if bool(keep.any()) else len(x)
                if start < len(x):
                    yield x[start:].clone(), y[start:].clone()

    # -- disjoint splits -------------------------------------------------------------------------
    def example_hash(self, full: np.ndarray) -> np.ndarray:
        """uint64 hash (batch,) of full examples (batch, length): equal examples, equal hashes.
        Tasks whose examples are defined by a few drawn numbers hash those instead (passkey)."""
        return row_hash(full)

    def split_examples(self, rng: np.random.Generator, batch_size: int, split: str, draw=None):
        """``batch_size`` examples of ``split``: draw, keep those whose hash is ``split``'s, repeat.

        ``draw(rng, n) -> (content, labels, hashes)`` draws ``n`` examples; the default renders
        :meth:`examples` and hashes them. ``content`` may be any array or tuple of arrays with
        the batch first (passkey draws positions and digits and renders only its window).
        """
        if draw is None:
            def draw(r, n):
                full, labels = self.examples(r, n)
                return full, labels, self.example_hash(full)
        kept, need = [], batch_size
        for _ in range(_MAX_DRAW_ROUNDS):
            # Draw enough that one round usually suffices; the numbers depend only on the split.
            n = int(np.ceil(need / split_share(split) * 1.3)) + 4
            content, labels, hashes = draw(rng, n)
            keep = np.flatnonzero(split_of_hash(hashes) == SPLITS.index(split))[:need]
            kept.append((_take(content, keep), np.asarray(labels)[keep]))
            need -= len(keep)
            if need == 0:
                contents = [c for c, _ in kept]
                content = (tuple(np.concatenate(parts) for parts in zip(*contents))
                           if isinstance(contents[0], tuple) else np.concatenate(contents))
                return content, np.concatenate([lab for _, lab in kept])
        raise ValueError(f"{self!r}: split {split!r} owns too few examples to fill a batch; "
                         f"the task's example space is too small for disjoint splits")

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


def split_share(split: str) -> float:
    """The fraction of the example space owned by ``split``."""
    return SPLIT_FRACTIONS.get(split, 1.0 - sum(SPLIT_FRACTIONS.values()))


def split_of_hash(hashes: np.ndarray) -> np.ndarray:
    """The split index (into SPLITS) of each example hash: test, valid, then train slices."""
    u = (np.asarray(hashes, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) / 2.0**53
    out = np.full(u.shape, SPLITS.index("train"))
    valid, test = SPLIT_FRACTIONS["valid"], SPLIT_FRACTIONS["test"]
    out[u < valid + test] = SPLITS.index("valid")
    out[u < test] = SPLITS.index("test")
    return out


def row_hash(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash (uint64) of each row of an int array (batch, n): BLAKE2b of its int64 bytes."""
    rows = np.ascontiguousarray(np.asarray(rows, dtype=np.int64))
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
                     for r in rows], dtype=np.uint64)


def _take(content, index):
    return tuple(np.asarray(c)[index] for c in content) if isinstance(content, tuple) else np.asarray(content)[index]


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
