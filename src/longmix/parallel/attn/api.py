"""``longmix.parallel.attention``: exact multi-head attention over a sequence sharded across ranks."""
from __future__ import annotations

import torch
import torch.distributed as dist

from longmix.ops.documents import by_documents

from ..layout import all_segments
from .plan import plan
from ..stats import CommStats
from .validate import check_strategy, head_split_error, validate


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              group=None, strategy: str = "auto", layout: str = "contiguous",
              scale: float | None = None, window: int | None = None,
              stats: CommStats | None = None, hybrid_size: int | None = None,
              cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Exact softmax attention of a sequence split over the ranks of ``group``.

    Args:
        q: (batch, local_len, heads, head_dim), this rank's rows of the queries.
        k, v: (batch, local_len, kv_heads, head_dim), this rank's rows of keys and values;
            ``kv_heads`` divides ``heads`` (grouped-query attention; K/V are never repeated on
            the wire).
        causal: position t attends to positions <= t of the *global* sequence.
        group: the process group; None means the default group. If torch.distributed is not
            initialized, the call runs on this process alone.
        strategy: ``"shuffle"`` (all-to-all to head shards, local attention, all-to-all back;
            needs P | heads and P | kv_heads or kv_heads | P), ``"ring"`` (K/V blocks circulate,
            any head count), ``"hybrid"`` (shuffle in groups of ``hybrid_size`` ranks, ring across
            groups) or ``"auto"`` (the cost model :func:`longmix.parallel.attn.plan` picks).
        layout: which rows each rank holds: ``"contiguous"``, ``"zigzag"`` or, with
            ``cu_seqlens``, ``"doc_zigzag"`` (a zigzag of every document: balances causal
            attention over packed documents; see :mod:`longmix.parallel.layout`;
            ``shard``/``unshard`` convert).
        scale: softmax scale; default 1/sqrt(head_dim).
        window: sliding-window size (semantics of ``longmix.ops.attention_with_lse``); shuffle,
            or ring, which then exchanges only a halo of ``window - 1`` rows per side of each
            piece (not hybrid).
        stats: a :class:`CommStats` that accumulates the bytes this rank sends and receives,
            in the forward and, when it runs, the backward pass.
        hybrid_size: u for ``strategy="hybrid"`` only (a divisor of P); default: the planner's
            best proper divisor.
        cu_seqlens: packed documents (batch 1): a 1-D int tensor ``[0, l1, l1 + l2, ..., L]``
            over the *global* sequence, the same on every rank; a query attends only to keys of
            its own document. Strategies "shuffle" and "ring" (without a window: its halo is not
            cut at boundaries); "auto" takes the shuffle where the heads split, else the ring.

    Returns:
        (batch, local_len, heads, head_dim): this rank's rows of the output. Differentiable
        with respect to q, k and v under every strategy.

    Every rank checks the arguments of every other rank first (one small all-gather), so bad or
    inconsistent arguments raise the same ``ValueError`` on all ranks instead of hanging. A rank
    that never arrives makes the others fail after the process group's timeout: pass
    ``timeout=`` to ``init_process_group``. Like any collective, the call (and its backward,
    which communicates too) must be made by every rank of the group, in the same order.
    """
    problem = validate(q, k, v, causal=causal, group=group, strategy=strategy, layout=layout,
                       scale=scale, window=window, hybrid_size=hybrid_size, cu_seqlens=cu_seqlens)
    p = problem.world_size
    documents = problem.documents
    if documents is not None:
        strategy = packed_strategy(strategy, problem, window)
    if strategy == "hybrid" and hybrid_size is None and p == 1:
        hybrid_size = 1
    if strategy == "auto" or (strategy == "hybrid" and hybrid_size is None):
        chosen = plan(seq_len=problem.seq_len, heads=problem.heads, kv_heads=problem.kv_heads,
                      head_dim=problem.head_dim, world_size=p, dtype=problem.dtype, causal=causal,
                      layout=layout, batch=problem.batch, window=window,
                      device=problem.device_type)
        if strategy == "auto":
            strategy, hybrid_size = chosen.strategy, chosen.hybrid_size
        else:
            option = chosen.option("hybrid")
            if not option.feasible:
                raise ValueError(f"strategy='hybrid' found no group size: {option.note}; pass "
                                 f"hybrid_size= (a divisor of {p}) or use another strategy")
            hybrid_size = option.hybrid_size
    check_strategy(strategy, problem, window=window, hybrid_size=hybrid_size)
    if p == 1:  # every strategy is the local op on one process
        from longmix.ops import attention_with_lse

        def attend(q, k, v):
            return attention_with_lse(q, k, v, causal=causal, scale=scale, window=window)[0]

        return attend(q, k, v) if documents is None else by_documents(attend, documents, q, k, v)
    group = dist.group.WORLD if group is None else group
    segs = all_segments(problem.seq_len, p, layout, cu_seqlens=documents)
    if strategy == "shuffle":
        from .shuffle import shuffle_attention

        return shuffle_attention(q, k, v, segments=segs, causal=causal, group=group, scale=scale,
                                 window=window, stats=stats, documents=documents)
    if strategy == "ring" and window is not None:  # only the window's halo needs to travel
        from ..halo import window_attention

        return window_attention(q, k, v, segments=segs, causal=causal, window=window, group=group,
                                scale=scale, stats=stats)
    if strategy == "ring":
        from .ring import ring_attention

        return ring_attention(q, k, v, segments=segs, causal=causal, group=group, scale=scale,
                              stats=stats, documents=documents)
    from .hybrid import hybrid_attention

    return hybrid_attention(q, k, v, segments=segs, causal=causal, group=group,
                            hybrid_size=hybrid_size, scale=scale, stats=stats)


def packed_strategy(strategy: str, problem, window) -> str:
    """The strategy for packed documents (the same on every rank: it reads agreed values only).
    "auto" takes the shuffle where the heads split over the ranks (each rank then attends whole
    documents), else the ring; hybrid, and the ring's window halo, are not cut at boundaries."""
    where = "longmix.parallel.attention"
    p = problem.world_size
    if strategy == "auto":
        if p == 1 or head_split_error(problem.heads, problem.kv_heads, p) is None:
            return "shuffle"
        strategy = "ring"
    if strategy == "hybrid":
        raise ValueError(f"{where}: cu_seqlens (packed documents) is supported by strategies "
                         "'shuffle' and 'ring', got strategy='hybrid'")
    if strategy == "ring" and window is not None:
        raise ValueError(f"{where}: cu_seqlens (packed documents) with window={window} needs "
                         "strategy='shuffle' (the ring's window halo is not cut at document "
                         "boundaries)" + ("" if head_split_error(problem.heads, problem.kv_heads, p)
                                          is None else f"; {problem.heads} heads do not split "
                                          f"over {p} ranks"))
    return strategy
