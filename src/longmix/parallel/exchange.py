"""Exchange primitives shared by both wings of :mod:`longmix.parallel`.

- :func:`exchange` / :class:`Exchange`: an all-to-all of a flat tensor among a list of peers
  (one ``all_to_all_single`` for the whole group, point-to-point ops for a subset). Linear, so
  its backward is the same exchange with the sizes swapped.
- :func:`agree`: the one encoder for agreeing on shapes, options and errors before any
  collective that could otherwise hang on a mismatch: every rank's numbers, or the same
  ValueError on every rank. Numbers name dtypes by their index in :data:`DTYPES`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .layout import resolve_group
from .stats import CommStats

__all__ = ["exchange", "Exchange", "gather_records", "agree", "DTYPES", "dtype_code"]

#: The dtypes records name, by index (one order for every record).
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
#: Room for one rank's error text in a record.
MESSAGE_BYTES = 400


def exchange(x: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], peers: list[int],
              group, stats: CommStats | None) -> torch.Tensor:
    """All-to-all of a flat tensor among ``peers``: chunk j of ``x`` goes to ``peers[j]``.

    ``x`` is 1-D with ``sum(send_sizes)`` elements; returns the 1-D concatenation of the chunks
    received from ``peers[0], peers[1], ...`` (``recv_sizes`` elements each).
    """
    me = peers.index(dist.get_rank(group))
    out = x.new_empty(sum(recv_sizes))
    if stats is not None:
        size = x.element_size()
        stats.add(sent=(sum(send_sizes) - send_sizes[me]) * size,
                  received=(sum(recv_sizes) - recv_sizes[me]) * size)
    if peers == list(range(dist.get_world_size(group))):
        dist.all_to_all_single(out, x, recv_sizes, send_sizes, group=group)
        return out
    sends = torch.split(x, send_sizes)
    recvs = torch.split(out, recv_sizes)  # views into ``out``
    ops = []
    for j, peer in enumerate(peers):
        if j == me:
            recvs[j].copy_(sends[j])
            continue
        peer_global = dist.get_global_rank(group, peer) if group is not dist.group.WORLD else peer
        if send_sizes[j]:
            ops.append(dist.P2POp(dist.isend, sends[j], peer_global, group))
        if recv_sizes[j]:
            ops.append(dist.P2POp(dist.irecv, recvs[j], peer_global, group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return out


class Exchange(torch.autograd.Function):
    """Differentiable :func:`exchange`; the backward is the same exchange with sizes swapped."""

    @staticmethod
    def forward(ctx, x, send_sizes, recv_sizes, peers, group, stats):
        ctx.args = (send_sizes, recv_sizes, peers, group, stats)
        return exchange(x.contiguous(), send_sizes, recv_sizes, peers, group, stats)

    @staticmethod
    def backward(ctx, grad):
        send_sizes, recv_sizes, peers, group, stats = ctx.args
        return (exchange(grad.contiguous(), recv_sizes, send_sizes, peers, group, stats),
                None, None, None, None, None)


def gather_records(record: list[int], group) -> list[list[int]]:
    """Every rank's integer record, in rank order (an all-gather of small CPU or CUDA int64 tensors)."""
    backend = dist.get_backend(group)
    # NCCL only moves CUDA tensors; every other backend (gloo, mpi) takes this CPU record
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    mine = torch.tensor(record, dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [t.tolist() for t in out]


def dtype_code(dtype) -> int:
    """The index of ``dtype`` in :data:`DTYPES`, -1 if it has none."""
    return DTYPES.index(dtype) if dtype in DTYPES else -1


def agree(numbers: list[int], errors: list[str], group, where: str) -> list[list[int]]:
    """Every rank's ``numbers`` (the same count on every rank), in rank order, after one small
    all-gather; if any rank found ``errors``, the same ValueError on every rank instead, naming
    the ranks and their messages. One process (``group`` None, or torch.distributed not
    initialized) communicates nothing. These records are not counted in ``CommStats``: one per
    call, whatever L."""
    text = "; ".join(errors).encode()[:MESSAGE_BYTES]
    record = [*numbers, len(text), *text, *[0] * (MESSAGE_BYTES - len(text))]
    group, world, _ = resolve_group(group)
    records = gather_records(record, group) if world > 1 else [record]
    n = len(numbers)
    bad = {r: bytes(rec[n + 1:n + 1 + rec[n]]).decode(errors="replace")
           for r, rec in enumerate(records) if rec[n] > 0}
    if bad:
        if len(set(bad.values())) == 1:  # the usual case: every bad rank made the same mistake
            detail = next(iter(bad.values()))
        else:
            detail = "; ".join(f"rank {r}: {msg}" for r, msg in bad.items())
        raise ValueError(f"{where}: invalid arguments on rank(s) {sorted(bad)}: {detail}")
    return [rec[:n] for rec in records]
