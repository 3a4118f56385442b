"""Test-only mixers and task, registered on demand (never at import, so that other test modules
that enumerate ``mixers.available()`` at collection time do not see them).

* ``toy_attention``: causal-capable softmax attention (attention family).
* ``toy_global``: adds the sequence mean to every position; cannot be causal (fourier family).
* ``toy_lowrank``: weights sized by max_len (``requires_max_len``), like Linformer.
* ``toy_causal_lowrank``: the same, masked causal: a causal mixer that cannot pack documents.
* task ``toy_copy``: a tiny byte-like LM task: predict the token seen ``lag`` positions ago.
* task ``toy_docs``: the same rule in documents of 1 .. ``length`` tokens, mostly short (to pack).

Run as a script to use the CLI with the toys registered (for subprocess tests)::

    python tests/train/toys.py train --task passkey --mixer toy_attention ...
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from longmix import mixers, tasks
from longmix.mixers import Taxonomy, TokenMixer
from longmix.mixers import registry as mixer_registry
from longmix.tasks import Task
from longmix.tasks import registry as task_registry


class ToyAttention(TokenMixer):
    taxonomy = Taxonomy("attention", learned=True, input_dependent=True, causal=True,
                        time="O(L^2)", memory="O(L^2)")

    def __init__(self, dim, heads=1, causal=False, max_len=None):
        super().__init__(dim, heads, causal, max_len)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(rearrange(o, "b h l d -> b l (h d)"))

    _reference = _forward


class ToyGlobal(TokenMixer):
    taxonomy = Taxonomy("fourier", learned=False, input_dependent=False, causal=False,
                        time="O(L)", memory="O(L)")

    def _forward(self, x):
        return x.mean(1, keepdim=True).expand_as(x)

    _reference = _forward


class ToyLowRank(TokenMixer):
    taxonomy = Taxonomy("lowrank", learned=True, input_dependent=False, causal=False,
                        time="O(L)", memory="O(L)")
    requires_max_len = True

    def __init__(self, dim, heads=1, causal=False, max_len=None, rank=4):
        super().__init__(dim, heads, causal, max_len)
        self.down = nn.Parameter(torch.randn(rank, max_len) / max_len ** 0.5)
        self.up = nn.Parameter(torch.randn(max_len, rank) / rank ** 0.5)

    def _forward(self, x):
        L = x.shape[1]
        return torch.einsum("lr,rs,bsd->bld", self.up[:L], self.down[:, :L], x)

    _reference = _forward


class ToyCausalLowRank(ToyLowRank):
    taxonomy = Taxonomy("lowrank", learned=True, input_dependent=False, causal=True,
                        time="O(L^2)", memory="O(L^2)")

    def _forward(self, x):
        L = x.shape[1]
        return torch.einsum("ls,bsd->bld", torch.tril(self.up[:L] @ self.down[:, :L]), x)

    _reference = _forward


class ToyCopy(Task):
    """LM task: a random block of `lag` tokens, repeated; token t equals token t-lag; tokens in [1, vocab). Deterministic per batch."""

    kind = "lm"
    long_range = False

    def __init__(self, seed=0, length=64, lag=2, vocab=8):
        super().__init__(seed)
        self.length, self.lag, self.vocab = length, lag, vocab
        self.vocab_size = vocab

    def batch(self, split, index, batch_size, context):
        split, index, batch_size, context = self.check_batch_args(split, index, batch_size, context)
        rng = self.rng(split, index, batch_size)
        period = rng.integers(1, self.vocab, size=(batch_size, self.lag))
        seq = np.tile(period, self.length // self.lag + 2)[:, : self.length + 1]  # periodic: x[t] = x[t-lag]
        seq = torch.as_tensor(seq, dtype=torch.long)
        x, y = seq[:, :-1], seq[:, 1:]
        return tasks.truncate_left(x, context), tasks.truncate_left(y, context)


class ToyDocs(Task):
    """LM task of variable-length documents: lengths 1 .. `length`, skewed short (a squared
    uniform); each a random period of `lag` tokens repeated. Rendered left-padded to `length`
    (the Task contract), so Task.documents strips the padding. Deterministic per batch."""

    kind = "lm"
    long_range = False

    def __init__(self, seed=0, length=12, lag=2, vocab=8):
        super().__init__(seed)
        self.length, self.lag, self.vocab = length, lag, vocab
        self.vocab_size = vocab

    def window(self, rng, batch_size, context, split="train"):
        n = self.length
        sizes = 1 + np.floor(n * rng.random(batch_size) ** 2).astype(np.int64).clip(max=n - 1)
        period = rng.integers(1, self.vocab, size=(batch_size, self.lag))
        seq = np.tile(period, n // self.lag + 2)[:, : n + 1]
        x, y = seq[:, :-1].copy(), seq[:, 1:].copy()
        padding = np.arange(n)[None, :] < (n - sizes)[:, None]
        x[padding], y[padding] = self.pad_id, self.pad_id
        return tasks.truncate_left(x, context), tasks.truncate_left(y, context)


MIXERS = {"toy_attention": ToyAttention, "toy_global": ToyGlobal, "toy_lowrank": ToyLowRank,
          "toy_causal_lowrank": ToyCausalLowRank}
TASKS = {"toy_copy": ToyCopy, "toy_docs": ToyDocs}


def register_toys() -> None:
    for name, cls in MIXERS.items():
        if name not in mixers.available():
            mixer_registry.register(name)(cls)
    for name, cls in TASKS.items():
        if name not in tasks.available():
            task_registry.register(name)(cls)


def unregister_toys() -> None:
    # Test-only: the registries have no public removal API (nothing in the library needs one).
    for name in MIXERS:
        mixer_registry._REGISTRY.pop(name, None)
    for name in TASKS:
        task_registry._REGISTRY.pop(name, None)


if __name__ == "__main__":
    from longmix.cli import main

    register_toys()
    sys.exit(main(sys.argv[1:]))
