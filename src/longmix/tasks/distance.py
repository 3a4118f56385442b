"""Key at a controlled distance: the control for a context sweep.

A key of ``key_digits`` digits sits at EXACTLY ``distance`` tokens from the end of the example,
among random filler; the example ends with ``QUERY``; the label is the key. Its first digit is
the ``distance``-th token from the end (the QUERY is the 1st) and its digits follow, so a
context ``C`` sees the whole key iff ``C >= distance``, and none of it iff
``C <= distance - key_digits``.

What to expect: accuracy at chance (``10**-key_digits``) for ``C < distance - key_digits + 1``
(no digit visible) and at its ceiling for ``C >= distance``: a jump where C crosses ``distance``.
A mixer that fails to jump, or jumps elsewhere, is telling something about its training, not
about the value of context, which is why the study runs it next to the tasks whose key position
varies (passkey-far).

Unlike passkey's fixed cycle, the filler is random (``num_filler`` ids): the position of the key
is fixed, so the filler is what makes the example space large enough for disjoint splits.

Token layout (``vocab_size = 13 + num_filler``)::

    0 pad | 1 KEY | 2 QUERY | digits 0-9 -> [3, 13) | filler [13, 13 + num_filler)

``long_range = True`` when ``distance`` is large compared with the contexts swept: the answer
lies exactly ``distance`` tokens back.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_int
from .base import Task
from .registry import register

KEY, QUERY, DIGIT0, FILLER0 = 1, 2, 3, 13


@register("distance")
class KeyAtDistance(Task):
    """Return the key whose first digit is exactly ``distance`` tokens from the end.

    Args:
        seed: base seed of every batch.
        length: tokens per example (> distance).
        distance: the key's first digit is the ``distance``-th token from the end (QUERY is the
            1st); ``key_digits < distance < length``.
        key_digits: digits of the key (1..4); ``num_classes = 10**key_digits``.
        num_filler: size of the random filler vocabulary.
    """

    kind = "classify"
    long_range = True

    def __init__(self, seed: int = 0, length: int = 256, distance: int = 100, key_digits: int = 1,
                 num_filler: int = 16):
        super().__init__(seed)
        self.key_digits = check_int("key_digits", key_digits, high=4)
        self.length = check_int("length", length, low=self.key_digits + 3)
        self.distance = check_int("distance", distance, low=self.key_digits + 1, high=self.length - 1)
        self.num_filler = check_int("num_filler", num_filler)
        self.vocab_size = FILLER0 + self.num_filler
        self.num_classes = 10 ** self.key_digits

    def examples(self, rng: np.random.Generator, batch_size: int):
        full = rng.integers(FILLER0, self.vocab_size, size=(batch_size, self.length))
        digits = rng.integers(0, 10, size=(batch_size, self.key_digits))
        first = self.length - self.distance  # index of the first digit
        full[:, first - 1] = KEY
        full[:, first:first + self.key_digits] = DIGIT0 + digits
        full[:, -1] = QUERY
        return full, digits @ (10 ** np.arange(self.key_digits - 1, -1, -1))
