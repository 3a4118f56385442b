"""Multi-query associative recall (MQAR), classification form with a controllable distance.

Recipe: Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models" (MQAR). A sequence stores ``num_pairs`` key-value pairs ``k v`` among filler tokens;
queries ask for the value bound to a key.

Our form (one query, classification): the example ends with ``QUERY k*``; the label is the value
bound to ``k*``. The queried pair is placed uniformly among the pair slots whose key sits at least
``min_distance`` tokens from the end (counting the key itself up to the last token), so a context
shorter than that distance cannot contain the pair and a model can do no better than chance
(``1 / num_values``). Keys are distinct within an example and values are drawn independently,
so neither the visible pairs nor elimination reveal the answer. With the default
``min_distance = length // 2`` accuracy should rise from chance at ``context < length / 2`` to its
ceiling at ``context = length``: this is the task's long-range knob. The other pairs (distractors)
are spread uniformly over the remaining slots, near the end too.

Token layout (``vocab_size = 2 + num_keys + num_values + num_filler``)::

    0 pad | 1 QUERY | keys [2, 2+K) | values [2+K, 2+K+V) | filler [2+K+V, vocab_size)

Example (length 12, 2 pairs; pairs sit on even positions)::

    k3 v7 f f f f k9 v1 f f QUERY k3   ->   label 7

=================  ============================  ==============================================
parameter          this task (default)           Zoology MQAR
=================  ============================  ==============================================
length             512                           64 - 512 (training), up to 2048 in sweeps
num_pairs          16                            4 - 64 key-value pairs
num_keys           64 (distinct per example)     keys drawn from half of an 8192 vocab
num_values         16 (= num_classes)            values from the other half
queries            1, at the end (classify)      many, LM loss at every query's value
query placement    queried pair at distance      queries after the pairs, gaps following a
                   >= min_distance (knob)        power law (alpha = 0.01)
filler             num_filler = 16 random ids    remaining positions random tokens
=================  ============================  ==============================================

``long_range = True``: the answer is exactly the token after the one earlier occurrence of the
query key, which lies at least ``min_distance`` tokens from the end.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_int
from .base import Task, row_hash, truncate_left
from .registry import register

QUERY = 1


@register("mqar")
class MQAR(Task):
    """Associative recall: return the value bound to the key queried at the end.

    Args:
        seed: base seed of every batch.
        length: tokens per example (>= 6).
        num_pairs: key-value pairs per example (1 <= num_pairs <= num_keys, and they must fit).
        num_keys: size of the key vocabulary; keys are distinct within an example.
        num_values: size of the value vocabulary = ``num_classes``.
        num_filler: size of the filler vocabulary for positions outside the pairs.
        min_distance: the queried key lies at least this many tokens from the end (the context
            needed to answer); default ``length // 2``. Must be in ``[4, length]``.
    """

    kind = "classify"
    long_range = True

    def __init__(self, seed: int = 0, length: int = 512, num_pairs: int = 16, num_keys: int = 64,
                 num_values: int = 16, num_filler: int = 16, min_distance: int | None = None):
        super().__init__(seed)
        self.length = check_int("length", length, low=6)
        self.num_keys = check_int("num_keys", num_keys)
        self.num_pairs = check_int("num_pairs", num_pairs, high=self.num_keys)
        self.num_values = check_int("num_values", num_values, low=2)
        self.num_filler = check_int("num_filler", num_filler)
        # Pairs live in 2-token slots before the final "QUERY k*"; an odd remainder is one filler.
        body = self.length - 2
        self._n_slots, self._offset = body // 2, body % 2
        if self.num_pairs > self._n_slots:
            raise ValueError(f"num_pairs ({num_pairs}) must be <= {self._n_slots}, the pair slots "
                             f"that fit in length {length}")
        self.min_distance = min_distance  # as given (None = default), for params()
        #: the resolved minimum distance of the queried key from the end
        self.distance = check_int("min_distance", self.length // 2 if min_distance is None else min_distance,
                                  low=4, high=self.length - self._offset)
        # Slot s has its key at position offset + 2 s, i.e. at distance length - offset - 2 s.
        self._n_eligible = (self.length - self._offset - self.distance) // 2 + 1
        self.key0 = 2
        self.value0 = self.key0 + self.num_keys
        self.filler0 = self.value0 + self.num_values
        self.vocab_size = self.filler0 + self.num_filler
        self.num_classes = self.num_values

    def examples(self, rng: np.random.Generator, batch_size: int):
        b, p = batch_size, self.num_pairs
        full = rng.integers(self.filler0, self.vocab_size, size=(b, self.length))
        # The queried pair (column 0) goes to an eligible slot; the others to distinct other slots.
        query_slot = rng.integers(0, self._n_eligible, size=b)
        order = rng.random((b, self._n_slots))
        order[np.arange(b), query_slot] = -1.0
        slots = np.argsort(order, axis=1)[:, :p]
        keys = np.argsort(rng.random((b, self.num_keys)), axis=1)[:, :p]
        values = rng.integers(0, self.num_values, size=(b, p))
        rows = np.arange(b)[:, None]
        key_pos = self._offset + 2 * slots
        full[rows, key_pos] = self.key0 + keys
        full[rows, key_pos + 1] = self.value0 + values
        full[:, -2] = QUERY
        full[:, -1] = self.key0 + keys[:, 0]
        return full, values[:, 0]


@register("mqar_all")
class MultiQueryAR(Task):
    """MQAR as Zoology trains it: every key is queried, and every query is scored.

    Arora et al. 2023 score the value at each query position, so one sequence carries
    ``num_pairs`` labels instead of one: this is what makes MQAR learnable by small models in
    a few thousand steps (the single-query form above gives one label per sequence).

    Layout: ``num_pairs`` pairs ``k v`` in one block among random filler, then the last
    ``num_pairs`` tokens are the keys again in random order. The target at each of those
    positions is the value bound to that key (``y`` is ``pad_id`` everywhere else, so nothing
    else is scored, and no query's value is ever an input). The block lies entirely at least
    ``min_distance`` tokens from the end and is otherwise placed uniformly, so a context shorter
    than ``min_distance`` sees no pair (chance, ``1 / num_values``) and a full context sees all.
    Because the scored positions are the last ``num_pairs``, every context with
    ``C >= num_pairs`` scores the very same targets.

    Token layout (``vocab_size = 1 + num_keys + num_values + num_filler``)::

        0 pad | keys [1, 1+K) | values [1+K, 1+K+V) | filler [1+K+V, vocab_size)

    Kind ``"lm"`` (a causal model predicts the value at each query position), metric
    ``"accuracy"`` over the query positions.

    Args:
        seed: base seed of every batch.
        length: tokens per example.
        num_pairs: key-value pairs = queries per example (<= num_keys).
        num_keys, num_values, num_filler: sizes of the three vocabularies.
        min_distance: every token of the pair block lies at least this many tokens from the end;
            default ``length // 4``; in ``[num_pairs + 1, length - 2 * num_pairs]``.
    """

    kind = "lm"
    metric = "accuracy"
    long_range = True
    num_classes = None

    def __init__(self, seed: int = 0, length: int = 256, num_pairs: int = 8, num_keys: int = 64,
                 num_values: int = 64, num_filler: int = 16, min_distance: int | None = None):
        super().__init__(seed)
        self.num_keys = check_int("num_keys", num_keys)
        self.num_pairs = check_int("num_pairs", num_pairs, high=self.num_keys)
        self.length = check_int("length", length, low=3 * self.num_pairs + 1)
        self.num_values = check_int("num_values", num_values, low=2)
        self.num_filler = check_int("num_filler", num_filler)
        self.min_distance = min_distance
        self.distance = check_int("min_distance", length // 4 if min_distance is None else min_distance,
                                  low=self.num_pairs + 1, high=self.length - 2 * self.num_pairs)
        self.key0, self.value0 = 1, 1 + self.num_keys
        self.filler0 = self.value0 + self.num_values
        self.vocab_size = self.filler0 + self.num_filler

    def pairs(self, rng: np.random.Generator, n: int):
        """Full inputs x (n, length) and targets y (n, length) (pad where nothing is scored)."""
        p, L = self.num_pairs, self.length
        x = rng.integers(self.filler0, self.vocab_size, size=(n, L))
        keys = np.argsort(rng.random((n, self.num_keys)), axis=1)[:, :p]
        values = rng.integers(0, self.num_values, size=(n, p))
        # Block start: its last token (index start + 2p - 1) at distance >= min_distance from the end.
        start = rng.integers(0, L - self.distance - 2 * p + 2, size=n)
        rows = np.arange(n)[:, None]
        cols = start[:, None] + 2 * np.arange(p)
        x[rows, cols] = self.key0 + keys
        x[rows, cols + 1] = self.value0 + values
        order = np.argsort(rng.random((n, p)), axis=1)
        x[:, L - p:] = self.key0 + np.take_along_axis(keys, order, axis=1)
        y = np.full((n, L), self.pad_id, dtype=np.int64)
        y[:, L - p:] = self.value0 + np.take_along_axis(values, order, axis=1)
        return x, y

    def window(self, rng: np.random.Generator, batch_size: int, context: int, split: str = "train"):
        def draw(r, n):
            x, y = self.pairs(r, n)
            return (x, y), np.zeros(n, dtype=np.int64), row_hash(x)

        (x, y), _ = self.split_examples(rng, batch_size, split, draw=draw)
        return truncate_left(x, context, self.pad_id), truncate_left(y, context, self.pad_id)
