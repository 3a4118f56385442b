"""The selective scan of Mamba (S6): a diagonal linear recurrence with input-dependent decay.

Per channel d and state n, with a_t = exp(delta_t[d] A[d, n]) in (0, 1]:

    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + delta_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n]  (+ D[d] u_t[d])

Three ways to compute it, which must agree:

* :func:`selective_scan`: the fast path, a chunked two-level scan with O(L) time and memory
  bounded by a block of chunks, independent of L.
* :func:`selective_scan_sequential`: the plain recurrence, one step per position (reference).
* :func:`selective_scan_matrix`: the materialized (batch, d, L, L) semiseparable matrix
  M[t, s] = sum_n C_t[n] (prod_{r=s+1..t} a_r[n]) delta_s B_s[n], so that y = M u (+ D u).

Layouts: u, delta (batch, length, channels); A (channels, d_state); B, C (batch, length,
d_state); D (channels,); states (batch, channels, d_state).

Stability: every decay is formed as exp of a non-positive sum of log-decays taken relative to
a chunk start (or a segment start), never as a ratio exp(cum_t) / exp(cum_s) of global
cumulative products, which overflows for strongly decaying A over long sequences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def _check(u, delta, A, B, C, D, initial_state):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, length, channels), got shape {tuple(u.shape)}")
    b, length, d = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (channels={d}, d_state), got shape {tuple(A.shape)}")
    n = A.shape[1]
    for label, t in (("B", B), ("C", C)):
        if t.shape != (b, length, n):
            raise ValueError(f"selective_scan: {label} must be (batch, length, d_state) = "
                             f"{(b, length, n)}, got {tuple(t.shape)}")
    if D is not None and D.shape != (d,):
        raise ValueError(f"selective_scan: D must be (channels={d},), got shape {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, d, n):
        raise ValueError(f"selective_scan: initial_state must be (batch, channels, d_state) = "
                         f"{(b, d, n)}, got {tuple(initial_state.shape)}")


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None, *, chunk_size: int = 64,
                   block_chunks: int = 64, initial_state: torch.Tensor | None = None,
                   return_state: bool = False):
    """The selective scan by chunks (see the module docstring for the recurrence and layouts).

    The sequence is cut into chunks of ``chunk_size`` positions, processed ``block_chunks`` at a
    time:

    1. a local scan inside every chunk of the block from a zero state, all chunks in parallel
       (``chunk_size`` vectorized steps);
    2. a short recurrence over chunk states: the state entering chunk k+1 is the state entering
       chunk k decayed over the whole chunk plus chunk k's local final state;
    3. every state = its local state + exp(cumulative log-decay since the chunk start) x the
       state entering the chunk; the decay factor is <= 1, so nothing overflows.

    With Mamba's A of shape (channels, d_state) the intra-chunk decay differs for every (d, n),
    so the intra-chunk part is not a single matmul as in Mamba-2's SSD (scalar A per head); the
    chunk-parallel local scan costs O(chunk) steps instead of an O(chunk^2) masked product.

    Time O(L d n); memory O(chunk_size * block_chunks * d * n) for the states of one block plus
    O(L d) for the output. Autograd works through it (saving the states of every block).

    Args:
        chunk_size: positions per chunk; any value >= 1 (L need not be a multiple).
        block_chunks: chunks held in memory at once.
        initial_state: (batch, channels, d_state) state before position 0, default zeros.
        return_state: also return the state after the last position.

    Returns:
        y (batch, length, channels), and the final state if ``return_state``.
    """
    _check(u, delta, A, B, C, D, initial_state)
    for label, value in (("chunk_size", chunk_size), ("block_chunks", block_chunks)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"selective_scan: {label} must be a positive int, got {value!r}")
    b, length, d = u.shape
    n = A.shape[1]
    T = min(chunk_size, length)
    block = T * block_chunks
    h = u.new_zeros(b, d, n) if initial_state is None else initial_state
    y = u.new_empty(b, length, d)
    # Inputs are sliced per block, so nothing but the output is O(L) in size.
    for start in range(0, length, block):
        sl = slice(start, start + block)
        du, dl, Bb, Cb = delta[:, sl] * u[:, sl], delta[:, sl], B[:, sl], C[:, sl]
        pad = (-du.shape[1]) % T
        if pad:  # padding has delta = 0: decay 1 and no input, so the state passes unchanged
            du, dl, Bb, Cb = (F.pad(t, (0, 0, 0, pad)) for t in (du, dl, Bb, Cb))
        y_block, h = _scan_block(du, dl, A, Bb, Cb, h, T)
        y[:, sl] = y_block[:, :y_block.shape[1] - pad]
    if D is not None:
        y = y + u * D
    return (y, h) if return_state else y


def _scan_block(du, delta, A, B, C, h, T):
    """One block of whole chunks; du = delta * u. Returns (y (b, len, d), state after the block)."""
    # (t, b, g, d, n): position t inside chunk g; leading t makes each step's slice contiguous.
    log_a = rearrange(delta, "b (g t) d -> t b g d 1", t=T) * A
    x = rearrange(du, "b (g t) d -> t b g d 1", t=T) * rearrange(B, "b (g t) n -> t b g 1 n", t=T)
    # 1. local scans, all chunks at once
    a = log_a.exp()
    local = torch.empty_like(x)
    s = torch.zeros_like(x[0])
    for t in range(T):
        s = torch.addcmul(x[t], a[t], s)  # a_t * s + x_t in one pass
        local[t] = s
    # 2. recurrence over chunk states
    cum = log_a.cumsum(0)  # log decay from the chunk start through t (<= 0)
    chunk_decay = cum[-1].exp()  # (b, g, d, n)
    entering = []
    for k in range(chunk_decay.shape[1]):
        entering.append(h)
        h = chunk_decay[:, k] * h + local[-1, :, k]
    entering = torch.stack(entering, dim=1)  # (b, g, d, n)
    # 3. add the entering state, decayed from the chunk start, and read out with C
    states = local + cum.exp() * entering
    y = torch.einsum("tbgdn,tbgn->bgtd", states, rearrange(C, "b (g t) n -> t b g n", t=T))
    return rearrange(y, "b g t d -> b (g t) d"), h


def selective_scan_sequential(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: torch.Tensor | None = None, *,
                              initial_state: torch.Tensor | None = None, return_state: bool = False):
    """The recurrence one position at a time: the plain reference for :func:`selective_scan`."""
    _check(u, delta, A, B, C, D, initial_state)
    b, length, d = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state
    ys = []
    for t in range(length):
        abar = torch.exp(delta[:, t, :, None] * A)  # (b, d, n)
        bbar_u = (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        h = abar * h + bbar_u
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D
    return (y, h) if return_state else y


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Segment sums S[..., t, s] = sum_{r=s+1..t} x[..., r] for s <= t, -inf for s > t.

    x: (..., L) -> (..., L, L). Each entry is summed directly over its own segment (a masked
    cumulative sum, as in Mamba-2's ``ssd_minimal``), not as a difference of two prefix sums,
    so exp(S) is exact and stable for strongly negative x.
    """
    length = x.shape[-1]
    x = x.unsqueeze(-1).expand(*x.shape, length)  # x[..., r, s] = x_r
    strictly_lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=-1)
    sums = x.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device))
    return sums.masked_fill(~lower, float("-inf"))


def selective_scan_matrix(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The scan as a matrix: M (batch, channels, L, L), lower-triangular, so that
    ``selective_scan(u, delta, A, B, C)[b, :, d] == M[b, d] @ u[b, :, d]``.

    M[b, d, t, s] = sum_n C[b, t, n] exp(sum_{r=s+1..t} delta[b, r, d] A[d, n]) delta[b, s, d] B[b, s, n].
    Memory O(batch d n L^2): for references, tests and plots at small L.
    """
    log_a = torch.einsum("bld,dn->bdnl", delta, A)
    decay = segsum(log_a).exp()  # (b, d, n, t, s), exactly 0 above the diagonal
    return torch.einsum("btn,bdnts,bsn,bsd->bdts", C, decay, B, delta)
