"""The job's progress counter: the useful flops of the kernel calls it watches, counted once."""
from __future__ import annotations

import threading

import torch

from longmix.attend.progress import WorkCounter
from longmix.ops import attention_forward
from longmix.ops.attention import attention_flops


def _qkv(length: int, heads: int = 2, head_dim: int = 8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, length, heads, head_dim, generator=g) for _ in range(3)]


def test_counts_the_useful_flops_of_the_calls_inside_the_block():
    q, k, v = _qkv(64)
    with WorkCounter() as counter:
        attention_forward(q, k, v, causal=True)
        attention_forward(q, k, v, causal=False)
    assert counter.flops == attention_flops(1, 2, 64, 8, True) + attention_flops(1, 2, 64, 8, False)
    attention_forward(q, k, v)  # outside the block: not counted
    assert counter.flops == 3 * attention_flops(1, 2, 64, 8, True)


def test_a_causal_call_split_into_blocks_counts_as_one(monkeypatch):
    """On more than one thread the op splits causal attention into full blocks and causal leaves
    (several kernel calls): together they count exactly the causal formula."""
    from longmix.ops import attention as op

    monkeypatch.setattr(op, "_CAUSAL_LEAF", 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = _qkv(100)
        with WorkCounter() as counter:
            attention_forward(q, k, v, causal=True)
    finally:
        torch.set_num_threads(threads)
    # leaves count half their square, full blocks their whole rectangle: m^2/2 + (n-m)^2/2 +
    # m(n-m) = n^2/2 at every split
    assert counter.flops == attention_flops(1, 2, 100, 8, True)


def test_other_threads_are_not_counted_and_may_read_it():
    q, k, v = _qkv(32)
    seen = []
    with WorkCounter() as counter:
        other = threading.Thread(target=lambda: (attention_forward(q, k, v),
                                                 seen.append(counter.flops)))
        other.start()
        other.join()
    assert seen == [0.0] and counter.flops == 0.0
