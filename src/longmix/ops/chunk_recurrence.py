"""The recurrence across chunks of a chunked linear recurrence: h_{c+1} = T_c h_c + U_c.

A chunked recurrence (the gated delta rule's WY/UT form, :mod:`longmix.ops.delta_rule`) computes
every chunk's transition T_c and input U_c at once, as batched matmuls; what is left is this
short sequential loop over chunks, one small batched matmul per chunk. Written as an autograd
Function so that the backward is one reverse loop of the same size,

    G_C = dh_C,   G_c = T_c^T G_{c+1} + dh_c,   dU_c = G_{c+1},   dT_c = G_{c+1} h_c^T,

instead of autograd's graph through a Python loop (several nodes and temporaries per chunk);
the dT_c come out of one batched matmul after the loop.

Layouts: T (n, chunks, K, K), U (n, chunks, K, V), h0 (n, K, V), any leading batch n;
returns all states (n, chunks + 1, K, V): h_0 (entering chunk 0) ... h_C (after the last).
"""
from __future__ import annotations

import torch


def chunk_recurrence(T: torch.Tensor, U: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """States h_0 .. h_C of h_{c+1} = T_c h_c + U_c (see the module docstring for layouts)."""
    n, chunks, k, v = U.shape
    if T.shape != (n, chunks, k, k) or h0.shape != (n, k, v):
        raise ValueError(f"chunk_recurrence: with U {tuple(U.shape)}, T must be {(n, chunks, k, k)} and h0 "
                         f"{(n, k, v)}, got {tuple(T.shape)} and {tuple(h0.shape)}")
    return _ChunkRecurrence.apply(T, U, h0)


class _ChunkRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, T, U, h0):
        states = U.new_empty(U.shape[0], U.shape[1] + 1, *U.shape[2:])
        states[:, 0] = h0
        # unbind once: views of each chunk, without an indexing op per step
        for t, u, h, after in zip(T.unbind(1), U.unbind(1), states[:, :-1].unbind(1), states[:, 1:].unbind(1)):
            torch.baddbmm(u, t, h, out=after)
        ctx.save_for_backward(T, states)
        return states

    @staticmethod
    def backward(ctx, d_states):
        T, states = ctx.saved_tensors
        adjoint = torch.empty_like(states)  # G_c: d loss / d h_c through everything after it
        adjoint[:, -1] = d_states[:, -1]
        for t, d_h, g_next, g in zip(reversed(T.mT.unbind(1)), reversed(d_states[:, :-1].unbind(1)),
                                     reversed(adjoint[:, 1:].unbind(1)), reversed(adjoint[:, :-1].unbind(1))):
            torch.baddbmm(d_h, t, g_next, out=g)
        after = adjoint[:, 1:]
        return after @ states[:, :-1].mT, after, adjoint[:, 0]
