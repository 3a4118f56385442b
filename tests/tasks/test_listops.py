"""ListOps: labels agree with an independent evaluator of the detokenized expression; lengths
respect the bounds; every class occurs."""
import numpy as np
import pytest

from longmix import tasks
from longmix.tasks.listops import detokenize


def evaluate(text: str) -> int:
    """Recursive-descent evaluation of a ListOps string, written apart from the generator."""
    words = text.split()
    ops = {"[MAX": max, "[MIN": min, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}

    def parse(i):
        w = words[i]
        if w.isdigit():
            return int(w), i + 1
        args, i = [], i + 1
        while words[i] != "]":
            value, i = parse(i)
            args.append(value)
        return ops[w](args), i + 1

    value, end = parse(0)
    assert end == len(words), "trailing tokens after the expression"
    return value


def test_evaluator_on_known_expressions():
    assert evaluate("[MAX 2 9 [MIN 4 7 ] 0 ]") == 9
    assert evaluate("[MED 1 2 3 4 ]") == 2  # int(2.5)
    assert evaluate("[SM 8 [MAX 5 6 ] ]") == 4


@pytest.mark.parametrize("params", [dict(max_length=128), dict(max_length=64, max_depth=4, max_args=5)])
def test_labels_match_independent_evaluator(params):
    task = tasks.build("listops", seed=3, **params)
    x, y = task.batch("valid", 0, 64, task.length)
    lengths = (x != task.pad_id).sum(1)
    assert int(lengths.max()) <= task.length and int(lengths.min()) >= task.max_length // 4
    for row, label in zip(x, y):
        assert evaluate(detokenize(row)) == int(label)


def test_every_class_occurs():
    task = tasks.build("listops", max_length=128)
    y = np.concatenate([task.batch("train", i, 64, 128)[1].numpy() for i in range(8)])
    freq = np.bincount(y, minlength=10) / len(y)
    # ListOps labels are not uniform (MAX favours 9, MIN favours 0) but every class is common.
    assert freq.min() > 0.02 and freq.max() < 0.35, freq


def test_unreachable_length_range_fails_clearly():
    task = tasks.build("listops", max_length=187, min_length=180, max_depth=4, max_args=5)
    with pytest.raises(RuntimeError, match="widen the length range"):
        task.batch("train", 0, 1, 8)
