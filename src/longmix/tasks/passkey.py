"""Passkey retrieval: a key hidden at a chosen depth inside repetitive filler.

Recipe: Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for
Transformers" (section 4.2): the prompt repeats the filler "The grass is green. The sky is blue.
The sun is yellow. Here we go. There and back again." and somewhere inside says "The pass key is
71432. Remember it. 71432 is the pass key."; it ends with "What is the pass key?".

Our token-level form: the filler is a fixed cycle of ``filler_period`` distinct filler tokens (the
repeated sentence); the key is ``KEY d1 .. dk`` (``k = key_digits`` digit tokens) overwriting the
filler at a depth drawn uniformly in ``depth``; the last token is ``QUERY``. The label is the key
as an integer in ``[0, 10**key_digits)``. Depth 0 puts the key at the very start (the farthest
from the question), depth 1 just before ``QUERY``. A context shorter than the distance from the
key's first digit to the end cannot contain it: a model is then at chance (``10**-key_digits``).

Token layout (``vocab_size = 13 + filler_period``)::

    0 pad | 1 KEY | 2 QUERY | digits 0-9 -> [3, 13) | filler [13, 13 + filler_period)

Generation is O(batch_size * min(context, length)) with numpy (a tiled filler row, then one
scatter for the key): only the visible window is rendered, so ``length = 2**20`` costs a few
milliseconds per example at full context and nothing extra at a short one.

=============  ===============================  ==========================================
parameter      this task (default)              Mohtashami & Jaggi 2023
=============  ===============================  ==========================================
length         1024 (up to millions, eval)      prompts of ~ 1K - 32K tokens (LLaMA tokens)
key_digits     1 (10 classes)                   5-digit key, answered by generation
depth          (0.0, 1.0) uniform               uniform over the prompt
filler         cycle of 16 tokens               one repeated sentence
key statement  ``KEY d1..dk`` once              "The pass key is K. Remember it. K is ..."
=============  ===============================  ==========================================

``long_range = True``: with the default depths the key is on average ``length / 2`` tokens from
the end; nothing near the end carries information about it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..checks import check_int
from .base import Task, check_fraction_range, row_hash, truncate_left
from .registry import register

KEY, QUERY, DIGIT0, FILLER0 = 1, 2, 3, 13


@register("passkey")
class Passkey(Task):
    """Return the key hidden in filler.

    Args:
        seed: base seed of every batch.
        length: tokens per example, including the key and the final QUERY.
        key_digits: digits of the key (1..6); ``num_classes = 10**key_digits``.
        depth: float in [0, 1] or a pair (lo, hi): where the key statement starts, as a fraction
            of the room before QUERY (0 = first token, 1 = right before QUERY); drawn uniformly.
        filler_period: the filler repeats a cycle of this many distinct tokens.
    """

    kind = "classify"
    long_range = True

    def __init__(self, seed: int = 0, length: int = 1024, key_digits: int = 1,
                 depth: float | tuple[float, float] = (0.0, 1.0), filler_period: int = 16):
        super().__init__(seed)
        self.key_digits = check_int("key_digits", key_digits, high=6)
        self.length = check_int("length", length, low=self.key_digits + 2)
        self.depth = depth
        self._depth_range = check_fraction_range("depth", depth)
        self.filler_period = check_int("filler_period", filler_period)
        self.vocab_size = FILLER0 + self.filler_period
        self.num_classes = 10 ** self.key_digits

    def key_start(self, depth: np.ndarray) -> np.ndarray:
        """Position of the KEY token for depths in [0, 1]."""
        room = self.length - 1 - (self.key_digits + 1)  # last start that leaves room before QUERY
        return np.rint(depth * room).astype(np.int64)

    def draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Random content of a batch: KEY positions (batch,) and key digits (batch, key_digits)."""
        lo, hi = self._depth_range
        start = self.key_start(rng.uniform(lo, hi, size=batch_size))
        digits = rng.integers(0, 10, size=(batch_size, self.key_digits))
        return start, digits

    def render(self, start: np.ndarray, digits: np.ndarray, first: int = 0) -> np.ndarray:
        """Columns ``[first, length)`` of the full examples, int64 (batch, length - first)."""
        b, width = len(start), self.length - first
        cycle = np.arange(FILLER0, FILLER0 + self.filler_period, dtype=np.int64)
        row = np.resize(np.roll(cycle, -(first % self.filler_period)), width)
        out = np.repeat(row[None], b, axis=0)
        statement = np.concatenate([np.full((b, 1), KEY), DIGIT0 + digits], axis=1)
        cols = start[:, None] + np.arange(self.key_digits + 1) - first
        rows = np.broadcast_to(np.arange(b)[:, None], cols.shape)
        inside = cols >= 0  # the key may lie (partly) left of the window
        out[rows[inside], cols[inside]] = statement[inside]
        out[:, -1] = QUERY
        return out

    def label(self, digits: np.ndarray) -> np.ndarray:
        return digits @ (10 ** np.arange(self.key_digits - 1, -1, -1))

    def examples(self, rng: np.random.Generator, batch_size: int):
        start, digits = self.draw(rng, batch_size)
        return self.render(start, digits), self.label(digits)

    def example_hash(self, full: np.ndarray) -> np.ndarray:
        # An example is its key position and digits; hash those (window() never renders it whole).
        is_key = full == KEY
        start = is_key.argmax(axis=1)
        digits = full[np.arange(len(full))[:, None], start[:, None] + 1 + np.arange(self.key_digits)] - DIGIT0
        return self._hash(start, digits)

    def _hash(self, start: np.ndarray, digits: np.ndarray) -> np.ndarray:
        return row_hash(np.concatenate([start[:, None], digits], axis=1))

    def window(self, rng: np.random.Generator, batch_size: int, context: int, split: str = "train"):
        # Render only the last `context` columns: O(batch * context), whatever the length.
        def draw(r, n):
            start, digits = self.draw(r, n)
            return (start, digits), self.label(digits), self._hash(start, digits)

        (start, digits), _ = self.split_examples(rng, batch_size, split, draw=draw)
        first = max(self.length - context, 0)
        x = truncate_left(self.render(start, digits, first), context, self.pad_id)
        return x, torch.as_tensor(self.label(digits), dtype=torch.long)
