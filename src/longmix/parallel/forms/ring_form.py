"""The ring form of softmax attention: K/V blocks travel around the ranks and partial outputs merge
on the log-sum-exp (zigzag balances causal work); with a sliding window only a halo of
``window - 1`` rows moves."""
from __future__ import annotations

from ..halo import halo_plan, window_attention
from ..layout import all_segments
from ..stats import CommStats
from .cost import FormCost, accumulator_size, element_size
from .shards import Shards


def ring_cost(mixer, seq_len, world, batch, dtype, layout, documents=None) -> FormCost:
    if seq_len is None:
        return FormCost("ring", True)
    # packed documents change no message: whole K/V blocks circulate (only the plan is cut)
    segs = all_segments(seq_len, world, layout, cu_seqlens=documents)
    lengths = [sum(n for _, n in s) for s in segs]
    row = batch * mixer.heads * 2 * mixer.head_dim  # one row of K and V
    size, acc = element_size(dtype), accumulator_size(dtype)
    window = getattr(mixer, "window", None)
    fwd, bwd = [], []
    for r in range(world):
        if window is not None:  # the halo of window - 1 rows per side (left only when causal)
            halo = halo_plan(segs, r, window - 1, 0 if mixer.causal else window - 1)
            fwd.append(halo.rows_sent() * row * size)
            bwd.append(halo.rows_received() * row * size)  # the gradients of what arrived
            continue
        if world == 1:
            fwd.append(0)
            bwd.append(0)
            continue
        # step s sends the block that started on rank r - s (steps 0 .. P-2), if it has rows;
        # the backward sends the K/V blocks again and every block's dK/dV accumulator once
        kv = sum(lengths[(r - s) % world] for s in range(world - 1)) * row * size
        fwd.append(kv)
        bwd.append(kv + sum(lengths) * row * acc)
    return FormCost("ring", True, forward_bytes=tuple(fwd), backward_bytes=tuple(bwd))


def run_ring(mixer, x, shards: Shards, group, stats: CommStats | None):
    """The ring form's forward: K/V blocks around the ranks, or only a halo with a window."""
    from ..attn.ring import ring_attention

    q, k, v = mixer._qkv(x)
    if mixer.window is not None:
        out = window_attention(q, k, v, segments=shards.segments, causal=mixer.causal,
                               window=mixer.window, group=group, scale=mixer.scale,
                               stats=stats)
    else:
        out = ring_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                             segments=shards.segments, causal=mixer.causal, group=group,
                             scale=mixer.scale, stats=stats, documents=shards.documents)
    return mixer._merge(out)
