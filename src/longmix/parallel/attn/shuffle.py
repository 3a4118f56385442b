"""The head-shuffle strategy (Hè & Kabic 2023; also DeepSpeed-Ulysses): all-to-all, local, all-to-all.

Each of P ranks holds a sequence shard of q, k, v: (batch, local_len, heads, head_dim). An
all-to-all re-partitions them by head: afterwards every rank holds *all* L positions for heads/P
query heads (and the K/V heads those query heads use). Exact attention then runs locally over the
whole sequence, with no communication inside it, and a second all-to-all turns the output back into
sequence shards. All-to-all is linear, so its backward is the reverse all-to-all: the only custom
autograd piece is :class:`Exchange`; autograd does the rest.

Head requirements (``validate.head_split_error``): P must divide ``heads``. K/V heads are split
when P divides ``kv_heads``; under grouped-query attention with fewer K/V heads than ranks
(``kv_heads`` divides P) each rank receives just the one K/V head its query heads share, so that
K/V head travels to P/kv_heads ranks, and no repeated K/V head is ever built or sent otherwise.

Communication per rank and forward, in elements (L the full length, H heads, d head_dim):
q and out each (P-1)/P * L*H*d/P, k and v each (P-1)/P * L*kv_heads*d/P (or (P-1) * L*d/P when
kv_heads < P): about 4*L*H*d/P for multi-head attention, minus the 1/P that stays local.

The exchange helpers take ``peers``, an ordered list of ranks of ``group`` that exchange among
themselves, so the hybrid strategy reuses them inside groups of u ranks without creating
subgroups: the full group uses one ``all_to_all_single``, a proper subset uses point-to-point ops.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange

from longmix.ops.documents import by_documents

from ..exchange import Exchange
from ..layout import Segment, sequence_order
from ..stats import CommStats


def head_selection(heads: int, parts: int) -> torch.Tensor | None:
    """Heads destined to each of ``parts`` ranks, shape (parts, heads_per_rank).

    ``heads`` divisible by ``parts``: rank j gets heads j*heads/parts ... (None: no gather needed).
    Otherwise (``heads`` divides ``parts``, the GQA case of few K/V heads) rank j gets the single
    head j // (parts/heads): the K/V head of query heads j*H/parts ... under GQA's grouping.
    """
    if heads % parts == 0:
        return None
    return torch.arange(parts).div(parts // heads, rounding_mode="floor").unsqueeze(1)


def seq_to_heads(tensors: list[torch.Tensor], lengths: list[int], peers: list[int], group,
                 stats: CommStats | None = None) -> list[torch.Tensor]:
    """Sequence-sharded -> head-sharded among ``peers``, all tensors in one exchange.

    Each tensor is (batch, local_len, heads_i, d_i) on this rank; ``lengths[j]`` is the local
    length of ``peers[j]``. Returns, per tensor, (batch, sum(lengths), heads_i', d_i): the rows of
    all peers concatenated in peer order, for this rank's share of heads (``head_selection``).
    """
    parts = len(peers)
    batch, local_len = tensors[0].shape[:2]
    chunks, shapes = [], []  # per tensor: what goes out, (heads, head_dim) each peer receives
    for x in tensors:
        sel = head_selection(x.shape[2], parts)
        if sel is not None:
            x = x.index_select(2, sel.flatten().to(x.device))  # K/V head per destination
        shapes.append((x.shape[2] // parts, x.shape[3]))
        chunks.append(rearrange(x, "b l (u h) d -> u (b l h d)", u=parts))
    send = torch.cat(chunks, dim=1).flatten()
    per_row = [batch * h * d for h, d in shapes]  # elements per sequence row, per tensor
    send_sizes = [local_len * sum(per_row)] * parts
    recv_sizes = [n * sum(per_row) for n in lengths]
    received = Exchange.apply(send, send_sizes, recv_sizes, peers, group, stats)
    outs: list[list[torch.Tensor]] = [[] for _ in tensors]
    for n, flat in zip(lengths, torch.split(received, recv_sizes)):
        for i, piece in enumerate(torch.split(flat, [n * e for e in per_row])):
            outs[i].append(piece.view(batch, n, *shapes[i]))
    return [torch.cat(o, dim=1) for o in outs]


def heads_to_seq(y: torch.Tensor, lengths: list[int], peers: list[int], group,
                 stats: CommStats | None = None) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads` for one tensor whose heads were split (not replicated).

    ``y`` is (batch, sum(lengths), h, d) in peer-major row order; returns this rank's rows for all
    ``len(peers) * h`` heads: (batch, lengths[me], len(peers) * h, d).
    """
    parts = len(peers)
    me = peers.index(dist.get_rank(group))
    batch, _, h, d = y.shape
    send = torch.cat([piece.flatten() for piece in torch.split(y, lengths, dim=1)])
    send_sizes = [batch * n * h * d for n in lengths]
    recv_sizes = [batch * lengths[me] * h * d] * parts
    received = Exchange.apply(send, send_sizes, recv_sizes, peers, group, stats)
    return rearrange(received, "(u b l h d) -> b l (u h) d", u=parts, b=batch, h=h, d=d)


def shuffle_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      segments: list[list[Segment]], causal: bool, group, scale: float | None = None,
                      window: int | None = None, stats: CommStats | None = None,
                      documents: tuple[int, ...] | None = None) -> torch.Tensor:
    """Exact attention by head shuffle over all ranks of ``group``.

    q: (batch, local_len, heads, d); k, v: (batch, local_len, kv_heads, d): this rank's rows,
    the concatenation of ``segments[rank]`` (``segments[r]`` lists rank r's (start, length)
    pieces, as from ``layout.all_segments``). Returns this rank's output rows, shaped like q.
    ``documents``: packed documents (global bounds): every rank holds whole sequences of its
    heads, so each document attends alone.
    """
    from longmix.ops import attention_with_lse

    world = dist.get_world_size(group)
    peers = list(range(world))
    lengths = [sum(n for _, n in segs) for segs in segments]
    qh, kh, vh = seq_to_heads([q, k, v], lengths, peers, group, stats)
    order = sequence_order(segments)  # zigzag pieces arrive rank-major; attention needs order
    if order is not None:
        order = order.to(q.device)
        qh, kh, vh = (t.index_select(1, order) for t in (qh, kh, vh))
    def attend(q, k, v):
        return attention_with_lse(q, k, v, causal=causal, scale=scale, window=window)[0]

    out = attend(qh, kh, vh) if documents is None else by_documents(attend, documents, qh, kh, vh)
    if order is not None:
        out = out.index_select(1, torch.argsort(order))
    return heads_to_seq(out, lengths, peers, group, stats)
