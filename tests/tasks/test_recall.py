"""MQAR and passkey: the label is recoverable from the full sequence by direct lookup, absent
from any context shorter than the distance to the answer; labels are uniform; passkey scales to
a million tokens."""
import time

import numpy as np
import pytest
import torch

from longmix import tasks
from longmix.tasks.passkey import DIGIT0, KEY, QUERY


def chi2_uniform_ok(y: np.ndarray, classes: int) -> bool:
    """Chi-square test of uniformity at roughly the 1e-4 level (normal approximation)."""
    counts = np.bincount(y, minlength=classes)
    expected = len(y) / classes
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = classes - 1
    return chi2 < dof + 4 * np.sqrt(2 * dof)


def mqar_lookup(row: torch.Tensor, task) -> tuple[int | None, int]:
    """(value bound to the queried key or None, the context needed to see the pair)."""
    seq = row.tolist()
    assert seq[-2] == 1  # QUERY
    key = seq[-1]
    hits = [i for i, t in enumerate(seq[:-2]) if t == key]
    if not hits:
        return None, 0
    assert len(hits) == 1, "keys are distinct within an example"
    return seq[hits[0] + 1] - task.value0, len(seq) - hits[0]


@pytest.mark.parametrize("min_distance", [None, 40])
def test_mqar_answer_by_lookup_and_absent_from_short_context(min_distance):
    task = tasks.build("mqar", seed=1, length=128, num_pairs=8, min_distance=min_distance)
    x, y = task.batch("test", 0, 64, task.length)
    for i, row in enumerate(x):
        value, needed = mqar_lookup(row, task)
        assert value == int(y[i])
        assert needed >= task.distance
    for context in (4, 16, task.distance - 1):
        short, _ = task.batch("test", 0, 64, context)
        for row in short:
            assert mqar_lookup(row, task)[0] is None  # the query key occurs only in the query


def test_mqar_pairs_spread_to_the_maximum_distance():
    task = tasks.build("mqar", length=64, num_pairs=4)
    x, _ = task.batch("train", 0, 256, 64)
    needed = [mqar_lookup(r, task)[1] for r in x]
    assert min(needed) >= 32 and max(needed) == 64


def test_mqar_labels_uniform():
    task = tasks.build("mqar", length=64, num_pairs=4, num_values=8)
    y = torch.cat([task.batch("train", i, 256, 8)[1] for i in range(4)]).numpy()
    assert chi2_uniform_ok(y, 8)


def passkey_lookup(row: torch.Tensor, digits: int):
    seq = row.numpy()
    assert seq[-1] == QUERY
    where = np.flatnonzero(seq == KEY)
    if len(where) == 0:
        return None
    start = int(where[0]) + 1
    key = seq[start:start + digits] - DIGIT0
    if len(key) < digits or (key < 0).any() or (key > 9).any():
        return None
    return int("".join(map(str, key))), len(seq) - start


@pytest.mark.parametrize("depth", [(0.0, 1.0), 0.25])
def test_passkey_answer_by_lookup_and_absent_from_short_context(depth):
    task = tasks.build("passkey", seed=2, length=300, key_digits=3, depth=depth)
    x, y = task.batch("valid", 5, 32, task.length)
    needed = []
    for row, label in zip(x, y):
        key, need = passkey_lookup(row, 3)
        assert key == int(label)
        needed.append(need)
    for i, need in enumerate(needed):
        short, _ = task.batch("valid", 5, 32, need - 1)  # misses the first digit
        digit_tokens = (short[i] >= DIGIT0) & (short[i] < DIGIT0 + 10)
        assert digit_tokens.sum() < 3
    if depth == 0.25:  # the key starts a quarter into the room before the question
        assert all(abs(n - 0.75 * 300) < 4 for n in needed)


def test_passkey_labels_uniform():
    task = tasks.build("passkey", length=64)
    y = torch.cat([task.batch("train", i, 256, 4)[1] for i in range(4)]).numpy()
    assert chi2_uniform_ok(y, 10)


def test_passkey_million_tokens_fast():
    task = tasks.build("passkey", length=2**20, key_digits=5)
    start = time.perf_counter()
    x, y = task.batch("test", 0, 1, 2**20)
    elapsed = time.perf_counter() - start
    assert x.shape == (1, 2**20) and elapsed < 2.0
    key, need = passkey_lookup(x[0], 5)
    assert key == int(y[0])
    # A short window of the same example is rendered without building the whole sequence.
    tail, y_tail = task.batch("test", 0, 1, 1024)
    assert torch.equal(tail, x[:, -1024:]) and torch.equal(y_tail, y)
