"""The selective scan of Mamba (S6): a diagonal linear recurrence with input-dependent decay.

Per channel d and state n, with a_t = exp(delta_t[d] A[d, n]) in (0, 1]:

    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + delta_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n]  (+ D[d] u_t[d])

Three ways to compute it, which must agree:

* :func:`selective_scan`: the fast path, a chunked scan with its own backward that recomputes
  each chunk's states instead of storing them: O(L) time, O(chunk d n) working memory. On CPU
  it runs the fused kernel of :mod:`longmix.ops.scan_cpu`; elsewhere the PyTorch loop below.
* :func:`selective_scan_sequential`: the plain recurrence, one step per position (reference).
* :func:`selective_scan_matrix`: the materialized (batch, d, L, L) semiseparable matrix
  M[t, s] = sum_n C_t[n] (prod_{r=s+1..t} a_r[n]) delta_s B_s[n], so that y = M u (+ D u).

Layouts: u, delta (batch, length, channels); A (channels, d_state); B, C (batch, length,
d_state); D (channels,); states (batch, channels, d_state).

Stability: every decay is a product of per-step factors exp(delta_t A) <= 1 (or, in the matrix
form, exp of a non-positive segment sum), never a ratio exp(cum_t) / exp(cum_s) of global
cumulative products, which overflows for strongly decaying A over long sequences.
"""
from __future__ import annotations

import torch

from ..checks import check_int

SCAN_BACKENDS = ("auto", "cpu", "torch")


def _check(u, delta, A, B, C, D, initial_state):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, length, channels), got shape {tuple(u.shape)}")
    b, length, d = u.shape
    if length < 1:
        raise ValueError(f"selective_scan: u must have length >= 1, got shape {tuple(u.shape)}")
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
                   initial_state: torch.Tensor | None = None, return_final_state: bool = False,
                   backend: str = "auto"):
    """The selective scan by chunks, with its own backward (see the module docstring for the
    recurrence and layouts).

    The sequence is cut into chunks of ``chunk_size`` positions. Forward: per chunk, the decays
    a_t and inputs x_t are formed for the chunk only, the recurrence runs one position at a time
    (one fused multiply-add over (batch, channels, d_state) per step) and the chunk's states are
    read out with C and dropped; only the state entering each chunk is kept. Backward: chunks in
    reverse order, each chunk's states recomputed from its entering state, then the adjoint
    recurrence G_t = C_t dy_t + a_{t+1} G_{t+1} run backwards through the chunk; every gradient
    is a contraction of G, a and the states of that one chunk.

    Why not autograd: it would keep every intermediate of every position, several tensors of
    O(L d n), and replay one small graph node per op; recomputing one chunk at a time keeps the
    backward's memory at O(chunk_size d n) + O(L d + L n) + O(L / chunk_size d n) and is over an
    order of magnitude faster on CPU (``benchmarks/mamba_step.py``).

    Why not Mamba-2's SSD form (within-chunk matmuls of a decay-masked chunk x chunk matrix): with
    Mamba's A of shape (channels, d_state) the decay differs for every (d, n), so that matrix is
    (chunk, chunk) per (d, n) -- chunk times more work than the recurrence -- and factorizing it as
    exp(cum_t) exp(-cum_s) overflows for strongly decaying channels.

    Time O(L d n), exact (no approximation): the same sums as the sequential recurrence. Half
    precision inputs are scanned in float32 (a long recurrence in bf16 loses the state; mixed
    dtypes, as under autocast, in the widest), and y is returned in u's dtype.

    Two implementations of these sums, the same chunks and the same recomputation:

    * ``"cpu"``: the fused numba kernel of :mod:`longmix.ops.scan_cpu`, one loop over the
      sequence with the state in cache (Mamba's training step in half the time of the PyTorch
      loop, ``benchmarks/mamba_step.py``); CPU tensors only.
    * ``"torch"``: the loop below in PyTorch ops, any device.

    Args:
        chunk_size: positions per chunk; any value >= 1 (L need not be a multiple). Memory vs.
            per-chunk overhead only.
        backend: ``"auto"`` (``"cpu"`` for CPU tensors, ``"torch"`` otherwise), ``"cpu"`` or
            ``"torch"``.
        initial_state: (batch, channels, d_state) state before position 0, default zeros.
        return_final_state: also return the state after the last position.

    Returns:
        y (batch, length, channels), and the final state (batch, channels, d_state, in float32
        or wider) if ``return_final_state``. Both are differentiable w.r.t. u, delta, A, B, C, D and
        ``initial_state``.
    """
    _check(u, delta, A, B, C, D, initial_state)
    check_int("chunk_size", chunk_size, owner="selective_scan")
    scan = _scan_function(backend, u.device)
    b, _, d = u.shape
    work = torch.float32  # the widest of the inputs' dtypes and float32
    for t in (u, delta, A, B, C, D, initial_state):
        work = work if t is None else torch.promote_types(work, t.dtype)
    h0 = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state
    D = u.new_zeros(d) if D is None else D  # the kernels fuse the skip term D u
    y, h = scan.apply(*(t.to(work) for t in (u, delta, A, B, C, D, h0)), chunk_size)
    return (y.to(u.dtype), h) if return_final_state else y.to(u.dtype)


def check_backend(backend: str, owner: str = "selective_scan", name: str = "backend") -> None:
    """ValueError unless ``backend`` is one of :data:`SCAN_BACKENDS`."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"{owner}: {name} must be one of {SCAN_BACKENDS}, got {backend!r}")


def _scan_function(backend: str, device: torch.device) -> type[torch.autograd.Function]:
    check_backend(backend)
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"selective_scan: backend='cpu' needs CPU tensors, got tensors on {device}")
    if backend == "torch" or device.type != "cpu":
        return _ChunkedScan
    from .scan_cpu import FusedScan  # numba compiles on first use: import only when needed
    return FusedScan


def _time_major(t: torch.Tensor) -> torch.Tensor:
    """(batch, chunk, k) -> contiguous (chunk, batch, k): each step's slice is then contiguous, so
    the in-place ``out=`` updates below write straight into it instead of through a copy."""
    return t.transpose(0, 1).contiguous()


def _contract_n(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_n x[t, b, d, n] w[t, b, n] -> (t, b, d), as a batched matmul over (t, b) that reads x
    in place (an einsum with the output in another order would first copy x)."""
    return (x @ w.unsqueeze(-1)).squeeze(-1)


def _contract_d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_d x[t, b, d, n] w[t, b, d] -> (t, b, n), likewise without copying x."""
    return (x.transpose(-1, -2) @ w.unsqueeze(-1)).squeeze(-1)


class _ChunkBuffers:
    """Work tensors (chunk, batch, d, n) allocated once per call and reused by every chunk: fresh
    allocations of this size cost page faults on every chunk."""

    def __init__(self, count: int, chunk: int, b: int, d: int, n: int, like: torch.Tensor):
        self.full = [like.new_empty(chunk, b, d, n) for _ in range(count)]

    def take(self, steps: int) -> list[torch.Tensor]:
        return [t[:steps] for t in self.full]


def _chunk_states(delta, du, A, B, h, a, states):
    """States of one chunk from the state ``h`` entering it; delta, du, B time-major (t, b, .).

    Fills a_t = exp(delta_t A) into ``a`` and H_t = a_t H_{t-1} + du_t B_t into ``states``, both
    (t, b, d, n).
    """
    torch.mul(delta.unsqueeze(-1), A, out=a).exp_()
    torch.mul(du.unsqueeze(-1), B.unsqueeze(-2), out=states)
    for t in range(states.shape[0]):
        h = torch.addcmul(states[t], a[t], h, out=states[t])


class _ChunkedScan(torch.autograd.Function):
    """y (with the D u term) and the final state of the scan, with a backward that recomputes
    states."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, chunk_size):
        (b, length, d), n = u.shape, A.shape[1]
        du = delta * u
        y = u * D
        buffers = _ChunkBuffers(2, min(chunk_size, length), b, d, n, u)
        entering = []  # the state entering each chunk: all the backward needs to recompute
        h = h0
        for start in range(0, length, chunk_size):
            sl = slice(start, start + chunk_size)
            a, states = buffers.take(min(chunk_size, length - start))
            entering.append(h)
            _chunk_states(*map(_time_major, (delta[:, sl], du[:, sl])), A, _time_major(B[:, sl]), h, a, states)
            y[:, sl] += _contract_n(states, _time_major(C[:, sl])).transpose(0, 1)
            h = states[-1].clone()  # a copy: the buffer is overwritten by the next chunk
        ctx.save_for_backward(u, delta, A, B, C, D, torch.stack(entering))
        ctx.chunk_size = chunk_size
        return y, h

    @staticmethod
    def backward(ctx, dy, dh_final):
        u, delta, A, B, C, D, entering = ctx.saved_tensors
        chunk_size, (b, length, d), n = ctx.chunk_size, u.shape, A.shape[1]
        du = delta * u
        d_du, d_delta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        buffers = _ChunkBuffers(3, min(chunk_size, length), b, d, n, u)
        carry = dh_final  # dL/dh at the chunk's last position from everything after it
        starts = list(range(0, length, chunk_size))
        for k in reversed(range(len(starts))):
            sl = slice(starts[k], starts[k] + chunk_size)
            a, states, G = buffers.take(min(chunk_size, length - starts[k]))
            delta_k, du_k, B_k, C_k, dy_k = map(_time_major, (delta[:, sl], du[:, sl], B[:, sl], C[:, sl],
                                                             dy[:, sl]))
            _chunk_states(delta_k, du_k, A, B_k, entering[k], a, states)
            dC[:, sl] = _contract_d(states, dy_k).transpose(0, 1)
            # adjoint states G_t = C_t dy_t + a_{t+1} G_{t+1}; a is overwritten by P_t = a_t G_t
            for t in reversed(range(G.shape[0])):
                torch.addcmul(carry, dy_k[t].unsqueeze(-1), C_k[t].unsqueeze(-2), out=G[t])
                carry = torch.mul(a[t], G[t], out=a[t])
            carry = carry.clone()  # P_0 = dL/dh entering the chunk, before the buffer is reused
            d_du[:, sl] = _contract_n(G, B_k).transpose(0, 1)
            dB[:, sl] = _contract_d(G, du_k).transpose(0, 1)
            # dL/dlog a_t = G_t a_t H_{t-1} = P_t H_{t-1}
            P = a
            P[1:] *= states[:-1]
            P[0] *= entering[k]
            d_delta[:, sl] = torch.linalg.vecdot(P, A).transpose(0, 1)
            dA += P.mul_(delta_k.unsqueeze(-1)).sum((0, 1))  # as a product over (t, b), no permute copy
        d_delta += d_du * u
        return torch.addcmul(d_du * delta, dy, D), d_delta, dA, dB, dC, (dy * u).sum((0, 1)), carry, None


def selective_scan_sequential(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: torch.Tensor | None = None, *,
                              initial_state: torch.Tensor | None = None, return_final_state: bool = False):
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
    return (y, h) if return_final_state else y


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
