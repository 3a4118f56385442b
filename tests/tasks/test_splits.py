"""Disjoint splits: no test (or validation) example of any task ever appears in training.

Every synthetic example belongs to one split by a hash of its content, so the guarantee is
structural: each drawn example hashes to the split it was drawn for, and equal examples hash
alike. The tests check that for every task of every shipped study grid, at the grid's settings,
and check the consequence directly, by comparing whole examples, where the example space is
small enough that random draws would collide (the issue that motivated the hashing: a 1-digit
passkey near the end has ~150 distinct examples).
"""
import pytest
import torch

from longmix import tasks
from longmix.study import GRIDS
from longmix.tasks.base import SPLITS, split_of_hash

GRID_TASKS = sorted({(st.task, repr(sorted(st.params.items()))): st for g in GRIDS.values() for st in g.tasks
                     if st.task != "text"}.values(), key=lambda st: (st.task, repr(st.params)))


def examples(task, split, batches, batch_size=16):
    """The full examples (whole length) of ``batches`` batches, as a set of byte strings."""
    out = set()
    for index in range(batches):
        x, y = task.batch(split, index, batch_size, task.length)
        rows = torch.cat([x, y.reshape(len(x), -1)], dim=1).numpy()
        out.update(r.tobytes() for r in rows)
    return out


@pytest.mark.parametrize("st", GRID_TASKS, ids=lambda st: f"{st.task}-{st.label}")
def test_every_drawn_example_hashes_to_its_own_split(st):
    task = tasks.build(st.task, seed=0, **st.params)
    for split in SPLITS:
        for index in range(2):
            x, _ = task.batch(split, index, 8, task.length)  # the whole examples
            assert (split_of_hash(task.example_hash(x.numpy())) == SPLITS.index(split)).all()


@pytest.mark.parametrize("params", [dict(length=512, depth=[0.97, 1.0]), dict(length=64, key_digits=1)])
def test_small_example_spaces_have_disjoint_test_and_train(params):
    # ~150 (near) and ~600 (length 64) distinct examples: 200 training batches cover them all,
    # so without the hash split most test examples would be training examples.
    task = tasks.build("passkey", seed=0, **params)
    train = examples(task, "train", 200)
    test, valid = examples(task, "test", 8), examples(task, "valid", 8)
    assert len(train) > 5 * len(test) and test and valid
    assert not (train & test) and not (train & valid) and not (test & valid)


@pytest.mark.parametrize("name, params", [("distance", dict(length=64, distance=20)),
                                          ("mqar_all", dict(length=64, num_pairs=4)),
                                          ("mqar", dict(length=64, num_pairs=4)),
                                          ("listops", dict(max_length=24, min_length=4, max_depth=2, max_args=3))])
def test_other_tasks_have_disjoint_test_and_train(name, params):
    task = tasks.build(name, seed=0, **params)
    train, test = examples(task, "train", 100), examples(task, "test", 8)
    assert test and not (train & test)
