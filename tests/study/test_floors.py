"""Sanity floors: the n-gram model against a dictionary-counting Witten-Bell written from the
formula, the scored positions against the trainer's, and the label floors on a known task."""
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from longmix import tasks
from longmix.study.floors import NGram, beats, floors, label_floors, scored_ngram_rows
from longmix.train import TrainConfig
from longmix.train.loss import UNSCORED, scored_targets


def witten_bell(tokens, order, history, target):
    """P(target | history) by the recursive formula, with plain dict counts (float64)."""
    p = 1.0 / 256
    for k in range(1, order + 1):
        h = tuple(history[len(history) - (k - 1):]) if k > 1 else ()
        if len(h) != k - 1:
            break
        counts = Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))
        after = defaultdict(Counter)
        for gram, c in counts.items():
            after[gram[:-1]][gram[-1]] += c
        c_h, n_h = sum(after[h].values()), len(after[h])
        if c_h:
            p = (after[h][target] + n_h * p) / (c_h + n_h)
    return p


def test_ngram_matches_the_formula():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 6, size=400)  # a small alphabet: many repeated histories
    model = NGram(tokens, 3)
    hist = rng.integers(1, 6, size=(50, 4))
    target = rng.integers(1, 7, size=50)  # 6 never occurs: only the uniform base gives it mass
    usable = rng.integers(0, 5, size=50)
    got = model.log2prob(hist, target, usable)
    for i in range(50):
        h = hist[i, hist.shape[1] - min(usable[i], 2):] if usable[i] else hist[i, :0]
        want = witten_bell(tokens.tolist(), 3, h.tolist(), int(target[i]))
        assert got[i] == pytest.approx(math.log2(want), abs=1e-10)


def test_ngram_rows_are_the_positions_the_trainer_scores():
    task = tasks.build("text", seed=0, max_bytes=50_000)
    hist, target, usable = scored_ngram_rows(task, "test", 2, 4, 16, 8)
    ys = [task.batch("test", i, 4, 16)[1] for i in range(2)]
    scored = sum(int((scored_targets(y, "lm", task.pad_id, last=8) != UNSCORED).sum()) for y in ys)
    assert len(target) == scored
    # targets in order: batch, then position, then row
    first = ys[0][:, -8]
    assert (target[:4] == first[first != 0].numpy()).all()
    # the window starts 8 positions before the first scored one: 4 previous tokens usable
    assert (usable[:4] == 4).all()


def test_text_floors_order_and_fit():
    task = tasks.build("text", seed=0, max_bytes=300_000)
    cfg = TrainConfig(task="text", mixer="softmax", context=32, steps=50, batch_size=8, eval_batches=2,
                      eval_last=16, train_last=16)
    f = floors(task, cfg)
    assert f["ngram_bytes"] == 50 * 8 * 16
    assert f["unigram"] > f["bigram"]  # more history helps a counter on source code
    assert f["ngram_full"] < f["ngram"]  # more data too
    assert f["floor"] == f["ngram"] and not f["higher_is_better"]


def test_label_floors_of_passkey():
    task = tasks.build("passkey", seed=0, length=64)
    cfg = TrainConfig(task="passkey", mixer="softmax", context=64, batch_size=16, eval_batches=4)
    f = label_floors(task, cfg)
    assert f["chance"] == 0.1
    labels = np.concatenate([task.batch("test", i, 16, 64)[1].numpy() for i in range(4)])
    train = np.concatenate([task.batch("train", i, 16, 64)[1].numpy() for i in range(32)])
    majority = Counter(train.tolist()).most_common(1)[0][0]
    assert f["majority"] == pytest.approx(float(np.mean(labels == majority)))


def test_beats_needs_more_than_the_spread():
    assert beats(0.5, 0.1, 0.3, True) and not beats(0.35, 0.1, 0.3, True)
    assert beats(2.0, 0.05, 2.2, False) and not beats(2.2, 0.0, 2.2, False)
