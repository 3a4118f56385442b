"""ListOps: evaluate a nested prefix expression of list operators over the digits 0-9.

Recipe: Nangia & Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning", in the
variant of the Long Range Arena (Tay et al. 2021, ``lra_benchmarks/data/listops.py``). A tree is
grown top-down: at depth ``< max_depth`` a node is an operator over 2..``max_args`` subtrees with
probability ``VALUE_P`` = 0.25 (LRA's name for it), otherwise a digit; at ``max_depth`` it is
always a digit. Trees whose token count falls outside ``[min_length, max_length]`` are
rejected. The label is the value of the expression (10 classes).

Operators: ``[MAX``, ``[MIN``, ``[MED`` (median, rounded down: ``int(np.median)`` as in LRA) and
``[SM`` (sum modulo 10); ``]`` closes a list. Example (11 tokens)::

    [MAX 2 9 [MIN 4 7 ] 0 ]   ->   9

We emit no parentheses: LRA's generator writes ``( ... )`` around every partial application, but
its length filter counts tokens without them and the usual LRA input pipelines (e.g. S4's) strip
them, so sequences are exactly the counted tokens.

Token layout (``vocab_size = 16``)::

    0 pad | digits 0-9 -> [1, 11) | [MAX 11 | [MIN 12 | [MED 13 | [SM 14 | ] 15

Examples vary in length; they are right-aligned (left-padded with ``pad_id``) so that the last
token of every example is the last column, like every other task (``Task.batch`` keeps the last
``context`` tokens). LRA right-pads instead.

=============  ========================  =====================================
parameter      this task (default)       LRA ListOps
=============  ========================  =====================================
max_length     512 (set 2000 for LRA)    2000 (strict: length < 2000)
min_length     max_length // 4           500 (strict: length > 500)
max_depth      10                        10
max_args       10                        10
operators      MAX MIN MED SM            MAX MIN MED SM
parentheses    none                      written, then stripped by pipelines
split sizes    unbounded stream          96K train / 2K valid / 2K test
=============  ========================  =====================================

``long_range = True``: the label depends on every token; the outermost operator is the first
token, so any left truncation removes information the answer needs (though the last operand
lists often dominate MAX/MIN, which makes short contexts better than chance).

Generation is pure Python (a recursive tree walk that aborts as soon as a tree exceeds
``max_length``): about 1 ms per example at ``max_length = 512``.
"""
from __future__ import annotations

import random

import numpy as np

from ..checks import check_int
from .base import Task
from .registry import register

VALUE_P = 0.25  # LRA: a node below max_depth is an operator with probability VALUE_P
MAX_TRIES = 100_000  # rejection-sampling guard against ranges that are (almost) never hit
DIGIT0 = 1
MAX, MIN, MED, SM, END = 11, 12, 13, 14, 15
OPERATORS = (MAX, MIN, MED, SM)
NAMES = {MAX: "[MAX", MIN: "[MIN", MED: "[MED", SM: "[SM", END: "]"} | {DIGIT0 + d: str(d) for d in range(10)}


class _TooLong(Exception):
    pass


def _apply(op: int, args: list[int]) -> int:
    if op == MAX:
        return max(args)
    if op == MIN:
        return min(args)
    if op == SM:
        return sum(args) % 10
    s = sorted(args)  # MED: int(np.median(args)), i.e. the lower mean of the middle pair
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


def _grow(rnd: random.Random, depth: int, max_depth: int, max_args: int, out: list[int], budget: int) -> int:
    """Append the tokens of a random tree to ``out``; return its value. Raises _TooLong once
    ``len(out)`` would exceed ``budget`` (the tree is rejected anyway, so stop growing it)."""
    if depth >= max_depth or rnd.random() > VALUE_P:
        value = rnd.randrange(10)
        out.append(DIGIT0 + value)
    else:
        op = rnd.choice(OPERATORS)
        out.append(op)
        args = [_grow(rnd, depth + 1, max_depth, max_args, out, budget) for _ in range(rnd.randint(2, max_args))]
        out.append(END)
        value = _apply(op, args)
    if len(out) > budget:
        raise _TooLong
    return value


def detokenize(tokens) -> str:
    """Readable expression for a row of token ids (padding dropped)."""
    return " ".join(NAMES[int(t)] for t in tokens if int(t) != 0)


@register("listops")
class ListOps(Task):
    """Evaluate a nested MAX/MIN/MED/SM expression; 10 classes.

    Args:
        seed: base seed of every batch.
        max_length: longest example in tokens (inclusive); also ``length``.
        min_length: shortest example in tokens (inclusive); default ``max_length // 4``.
        max_depth: deepest nesting of operators (the root is depth 1, as in LRA).
        max_args: most operands of one operator (>= 2).
    """

    kind = "classify"
    long_range = True
    vocab_size = 16
    num_classes = 10

    def __init__(self, seed: int = 0, max_length: int = 512, min_length: int | None = None,
                 max_depth: int = 10, max_args: int = 10):
        super().__init__(seed)
        self.max_length = check_int("max_length", max_length, low=5)
        self.min_length = min_length
        self._min = check_int("min_length", max_length // 4 if min_length is None else min_length,
                              low=1, high=self.max_length)
        self.max_depth = check_int("max_depth", max_depth, low=2)
        self.max_args = check_int("max_args", max_args, low=2)
        self.length = self.max_length
        longest = 1  # the largest tree the depth/arity limits allow
        for _ in range(self.max_depth - 1):
            longest = 2 + self.max_args * longest
        if self._min > longest:
            raise ValueError(f"min_length ({self._min}) exceeds the longest tree that max_depth="
                             f"{self.max_depth} and max_args={self.max_args} allow ({longest})")

    def sample(self, rnd: random.Random) -> tuple[list[int], int]:
        """One accepted example: (tokens, label), by rejection like LRA."""
        for _ in range(MAX_TRIES):
            out: list[int] = []
            try:
                value = _grow(rnd, 1, self.max_depth, self.max_args, out, self.max_length)
            except _TooLong:
                continue
            if len(out) >= self._min:
                return out, value
        raise RuntimeError(f"no ListOps tree with {self._min} <= length <= {self.max_length} in "
                           f"{MAX_TRIES} tries; widen the length range")

    def examples(self, rng: np.random.Generator, batch_size: int):
        rnd = random.Random(int(rng.integers(2**63)))
        full = np.zeros((batch_size, self.length), dtype=np.int64)
        labels = np.empty(batch_size, dtype=np.int64)
        for i in range(batch_size):
            tokens, labels[i] = self.sample(rnd)
            full[i, self.length - len(tokens):] = tokens
        return full, labels
