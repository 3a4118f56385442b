"""Mamba-2's state space duality (SSD): a selective SSM whose decay is one scalar per head.

Per head h, with a_t = exp(dt_t A_h) in (0, 1], state S (head_dim P, d_state N):

    S_t = a_t S_{t-1} + dt_t x_t B_t^T,     y_t = S_t C_t

As one matrix, y = M x with the 1-semiseparable

    M[t, s] = (C_t . B_s) exp(sum_{r=s+1..t} dt_r A) dt_s   for s <= t, 0 above,

a decay mask applied elementwise to C B^T: linear attention with a causal, input-dependent decay.

Three ways to compute it, which must agree:

* :func:`ssd`: the chunked algorithm of Mamba-2 (after ``ssd_minimal_discrete`` in
  state-spaces/mamba): within a chunk the masked C B^T matrix (a matmul), across chunks the
  state recurrence, one step per chunk. O(L chunk) time, mostly matmuls.
* :func:`ssd_sequential`: the recurrence one position at a time (reference).
* :func:`ssd_matrix`: the materialized (batch, heads, L, L) matrix M.

Layouts: x (batch, L, heads, P); dt (batch, L, heads), > 0 (already softplus'd); A (heads,), < 0;
B, C (batch, L, groups, N), groups dividing heads (head h reads group h // (heads / groups), as
Mamba-2's ``ngroups``); states (batch, heads, P, N). The skip term D x is the caller's.
"""
from __future__ import annotations

import torch

from ..checks import check_int
from .chunks import from_chunks, nan_from_first, nonfinite_heads, to_chunks, zero_where
from .scan import segsum


def _check(x, dt, A, B, C, initial_state):
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be (batch, length, heads, head_dim), got shape {tuple(x.shape)}")
    b, length, h, p = x.shape
    if dt.shape != (b, length, h):
        raise ValueError(f"ssd: dt must be (batch, length, heads) = {(b, length, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"ssd: A must be (heads={h},), got shape {tuple(A.shape)}")
    if B.dim() != 4 or B.shape != C.shape or B.shape[:2] != (b, length) or h % B.shape[2]:
        raise ValueError(f"ssd: B and C must be (batch, length, groups, d_state) with groups dividing "
                         f"heads={h}, got {tuple(B.shape)} and {tuple(C.shape)}")
    n = B.shape[-1]
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise ValueError(f"ssd: initial_state must be (batch, heads, head_dim, d_state) = {(b, h, p, n)}, "
                         f"got {tuple(initial_state.shape)}")


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """B or C (batch, L, groups, N) -> (batch, L, heads, N)."""
    return t if t.shape[2] == heads else t.repeat_interleave(heads // t.shape[2], dim=2)


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
        chunk_size: int = 64, initial_state: torch.Tensor | None = None, return_final_state: bool = False):
    """The SSD by chunks (see the module docstring for the recurrence and layouts).

    Returns y (batch, L, heads, P), and the final state (batch, heads, P, N) if
    ``return_final_state``. ``chunk_size`` need not divide L (the last chunk is zero-padded).
    Every decay is exp of a non-positive sum over a segment inside one chunk, or a per-chunk
    factor <= 1: never a ratio of global cumulative products, which overflows for long L.
    """
    _check(x, dt, A, B, C, initial_state)
    check_int("chunk_size", chunk_size)
    heads, length = x.shape[2], x.shape[1]
    B, C = _per_head(B, heads), _per_head(C, heads)
    bad = nonfinite_heads(x, dt, B, C)
    if bad is not None:
        x, dt, B, C = (zero_where(t, bad) for t in (x, dt, B, C))
    xc, Bc, Cc = (to_chunks(t, chunk_size) for t in (x * dt.unsqueeze(-1), B, C))  # (b, c, l, h, .)
    log_a = to_chunks(dt * A, chunk_size).permute(0, 3, 1, 2)  # (b, h, c, l), <= 0
    cum = log_a.cumsum(-1)
    # 1. within each chunk: the decay-masked C B^T applied to the inputs (quadratic in the chunk)
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * segsum(log_a).exp()
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xc)
    # 2. each chunk's state from zero: inputs decayed to the chunk's end
    to_end = (cum[..., -1:] - cum).exp()  # (b, h, c, l)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, xc)
    # 3. the recurrence across chunks, one step per chunk: the state entering each chunk
    chunk_decay = cum[..., -1].exp()  # (b, h, c)
    state = (x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1]) if initial_state is None
             else initial_state.to(x.dtype))
    entering = []
    # unbind once: indexing chunk c inside the loop would give each step a backward that fills a
    # whole-sequence gradient (quadratic in L)
    for decay, added in zip(chunk_decay[..., None, None].unbind(2), chunk_states.unbind(1)):
        entering.append(state)
        state = decay * state + added
    entering = torch.stack(entering, 1)  # (b, c, h, p, n)
    # 4. the entering state read out by C, decayed from the chunk's start
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, cum.exp())
    y = from_chunks(y, length)
    if bad is not None:
        y = nan_from_first(y, bad)
        state = state.masked_fill(bad.any(1)[..., None, None], float("nan"))
    return (y, state) if return_final_state else y


def ssd_sequential(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                   initial_state: torch.Tensor | None = None, return_final_state: bool = False):
    """The recurrence one position at a time: the plain reference for :func:`ssd`."""
    _check(x, dt, A, B, C, initial_state)
    heads = x.shape[2]
    B, C = _per_head(B, heads), _per_head(C, heads)
    state = x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (b, h, 1, 1)
        state = decay * state + torch.einsum("bhp,bhn->bhpn", dt[:, t, :, None] * x[:, t], B[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, 1)
    return (y, state) if return_final_state else y


def ssd_matrix(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The SSD as a matrix: M (batch, heads, L, L), lower-triangular, with
    ``ssd(x, dt, A, B, C)[b, :, h] == M[b, h] @ x[b, :, h]``: the 1-semiseparable decay mask
    exp(segsum(dt A)) times C B^T, times dt_s per column."""
    heads = dt.shape[2]
    B, C = _per_head(B, heads), _per_head(C, heads)
    decay = segsum((dt * A).transpose(1, 2)).exp()  # (b, h, t, s), exactly 0 above the diagonal
    return torch.einsum("bthn,bshn->bhts", C, B) * decay * dt.transpose(1, 2).unsqueeze(-2)
