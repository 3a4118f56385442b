"""Sanity floors: what a model must beat before its numbers say anything about context.

A trained model that does no better than counting has learned nothing a reading can rest on.
So every cell of the study is compared with a floor computed on EXACTLY the targets the trainer
scores (the same test batches, the same last positions, the same context window):

* classification, and language tasks scored by accuracy (MQAR's queries): chance
  (1 / classes) and the majority label of the training split (a constant guess);
* text: count-based n-gram models of order 1..5 (Witten-Bell interpolation, which needs no
  tuning), fitted on the training stream. The history of an n-gram at a scored position is cut
  where the model's window starts, as the model's own is. Two fits are reported: one on as many
  training bytes as the run trained on (its scored targets: the budget-matched floor that flags
  cells), and one on the first ``FULL_BYTES`` of the training split (a stronger reference).
  The order of each is chosen on the validation split, never on test.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

#: Cap on the training bytes of the reference n-gram (counting cost grows with it).
FULL_BYTES = 4_000_000
MAX_ORDER = 5
_BASE = 257  # token ids 0..256 (bytes + 1, pad 0)


# -- classification -----------------------------------------------------------------------------
def scored_labels(task, split: str, batches: int, batch_size: int, context: int, last: int) -> np.ndarray:
    """The labels the trainer scores on ``batches`` batches of ``split`` (flattened)."""
    out = []
    for index in range(batches):
        _, y = task.batch(split, index, batch_size, context)
        if task.kind == "lm":
            y = y[:, -min(last, context):]
            y = y[(y != task.pad_id) & (y >= 0)]
        out.append(y.reshape(-1).numpy())
    return np.concatenate(out)


def label_floors(task, cfg, train_batches: int = 32) -> dict:
    """{"chance": ..., "majority": ...} test accuracies of a uniform and a constant guess.

    ``cfg`` gives the evaluation's batch_size, eval_batches, eval_last and context. The
    majority label comes from ``train_batches`` training batches.
    """
    train = scored_labels(task, "train", train_batches, cfg.batch_size, cfg.context, cfg.eval_last)
    test = scored_labels(task, "test", cfg.eval_batches, cfg.batch_size, cfg.context, cfg.eval_last)
    majority = Counter(train.tolist()).most_common(1)[0][0]
    classes = task.num_classes if task.num_classes else getattr(task, "num_values", task.vocab_size)
    return {"chance": 1.0 / classes, "majority": float(np.mean(test == majority))}


# -- n-grams ------------------------------------------------------------------------------------
class NGram:
    """Witten-Bell interpolated n-gram model over token ids < 257, orders 1..``order``.

    P_k(w | h) = (c(h w) + N(h) P_{k-1}(w | h')) / (c(h) + N(h)), with c the counts, N(h) the
    number of distinct tokens seen after h, and h' the history shortened by one; P_0 is uniform
    over the 256 byte tokens. Histories never seen fall back to the lower order.
    """

    def __init__(self, tokens: np.ndarray, order: int):
        tokens = np.asarray(tokens, dtype=np.int64)
        self.order = order
        self.tables = []  # per k: (sorted n-gram keys, counts, sorted history keys, c(h), N(h))
        for k in range(1, order + 1):
            keys = np.zeros(len(tokens) - k + 1, dtype=np.int64)
            for j in range(k):
                keys = keys * _BASE + tokens[j:len(tokens) - k + 1 + j]
            grams, counts = np.unique(keys, return_counts=True)
            hist = grams // _BASE
            starts = np.flatnonzero(np.r_[True, hist[1:] != hist[:-1]])
            self.tables.append((grams, counts, hist[starts], np.add.reduceat(counts, starts),
                                np.diff(np.r_[starts, len(hist)])))

    @staticmethod
    def _lookup(sorted_keys, values, queries):
        i = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
        return np.where(sorted_keys[i] == queries, values[i], 0)

    def log2prob(self, history: np.ndarray, target: np.ndarray, usable: np.ndarray, order: int | None = None):
        """log2 P(target | history) per row. history (n, order-1) holds the previous tokens
        (last column = the token just before the target); ``usable[i]`` is how many of them
        row i may use (the window start or padding cuts it)."""
        order = self.order if order is None else order
        p = np.full(len(target), 1.0 / 256)
        hkey = np.zeros(len(target), dtype=np.int64)
        for k in range(1, order + 1):
            grams, counts, hists, c_h, n_h = self.tables[k - 1]
            if k > 1:
                hkey = hkey + history[:, -(k - 1)] * _BASE ** (k - 2)
            c_hw = self._lookup(grams, counts, hkey * _BASE + target)
            ch = self._lookup(hists, c_h, hkey)
            nh = self._lookup(hists, n_h, hkey)
            ok = (ch > 0) & (usable >= k - 1)
            p = np.where(ok, (c_hw + nh * p) / np.maximum(ch + nh, 1), p)
        return np.log2(p)


def scored_ngram_rows(task, split: str, batches: int, batch_size: int, context: int, last: int):
    """(history (n, MAX_ORDER-1), target (n,), usable (n,)) of the positions the trainer scores."""
    hist, tgt, use = [], [], []
    width = MAX_ORDER - 1
    for index in range(batches):
        x, y = task.batch(split, index, batch_size, context)
        x, y = x.numpy(), y.numpy()
        padded = np.concatenate([np.zeros((len(x), width), np.int64), x], axis=1)
        for t in range(context - min(last, context), context):
            keep = y[:, t] != task.pad_id
            h = padded[:, t + 1:t + 1 + width]  # x[t - width + 1 .. t]
            # usable: how many of the previous tokens lie in the window and are not padding
            inside = np.minimum(t + 1, width)
            real = np.cumprod((h[:, ::-1] != task.pad_id), axis=1).sum(axis=1)
            hist.append(h[keep])
            tgt.append(y[keep, t])
            use.append(np.minimum(inside, real)[keep])
    return np.concatenate(hist), np.concatenate(tgt), np.concatenate(use)


_FITTED: dict = {}  # (task, stream length, bytes) -> NGram: a study asks for the same fit per context


def _fitted(task, stream: np.ndarray, nbytes: int) -> NGram:
    key = (repr(task), len(stream), nbytes)
    if key not in _FITTED:
        _FITTED[key] = NGram(stream[:nbytes].astype(np.int64) + 1, MAX_ORDER)
    return _FITTED[key]


def ngram_floors(task, cfg, trained_targets: int) -> dict:
    """Bits per byte on the test targets the trainer scores, for n-grams of order 1..3 and the
    best order (chosen on validation) of a budget-matched fit (``trained_targets`` training
    bytes) and of a fit on up to ``FULL_BYTES`` bytes. Keys: ``"unigram"``, ``"bigram"``,
    ``"trigram"``, ``"ngram"`` (budget-matched, best order), ``"ngram_order"``,
    ``"ngram_full"`` (full fit, best order), ``"ngram_full_order"``, ``"ngram_bytes"``."""
    stream = task.stream("train")
    last = cfg.eval_last
    rows = {s: scored_ngram_rows(task, s, cfg.eval_batches, cfg.batch_size, cfg.context, last)
            for s in ("valid", "test")}

    def bits(model, split, order):
        h, t, u = rows[split]
        return float(-model.log2prob(h, t, u, order).mean())

    def best(model):
        order = min(range(1, MAX_ORDER + 1), key=lambda k: bits(model, "valid", k))
        return bits(model, "test", order), order

    matched_bytes = int(min(max(trained_targets, 1000), len(stream)))
    matched = _fitted(task, stream, matched_bytes)
    full = _fitted(task, stream, int(min(FULL_BYTES, len(stream))))
    out = {name: bits(matched, "test", k) for k, name in ((1, "unigram"), (2, "bigram"), (3, "trigram"))}
    out["ngram"], out["ngram_order"] = best(matched)
    out["ngram_full"], out["ngram_full_order"] = best(full)
    out["ngram_bytes"] = matched_bytes
    return out


def floors(task, cfg) -> dict:
    """The floors of one (task, context) evaluation; see the module docstring.

    Returns ``{"floor": the value a trained model must beat, "floor_name": which one,
    "higher_is_better": bool, ...every floor...}``.
    """
    if task.metric == "accuracy":
        out = label_floors(task, cfg)
        name = "majority" if out["majority"] >= out["chance"] else "chance"
        return {**out, "floor": out[name], "floor_name": name, "higher_is_better": True}
    last = cfg.train_last if cfg.train_last is not None else cfg.context
    out = ngram_floors(task, cfg, trained_targets=cfg.steps * cfg.batch_size * min(last, cfg.context))
    return {**out, "floor": out["ngram"], "floor_name": f"{out['ngram_order']}-gram", "higher_is_better": False}


def beats(value: float, spread: float, floor: float, higher_is_better: bool) -> bool:
    """Does a cell (mean ``value``, ``spread``) beat ``floor`` by more than its spread?"""
    margin = value - floor if higher_is_better else floor - value
    return margin > max(spread, 1e-12)
