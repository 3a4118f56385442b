"""The selective scan's fused CPU kernel (numba): one pass over the sequence forward, one back.

The PyTorch scan in :mod:`longmix.ops.scan` runs one tensor op per position, and each op reads
and writes a (batch, channels, d_state) state through memory; at Mamba's sizes that costs more
than the arithmetic. Here each thread keeps one batch row's state, (d_state, channels), in
cache for the whole sequence and does every position's update, read-out and gradient in one
loop, vectorized over channels: Mamba's training step takes half the time it takes with the
PyTorch scan (``benchmarks/mamba_step.py --scan-backends cpu torch``). Compiled on first use,
cached on disk.

Layouts inside the kernels: A transposed to (d_state, channels) and states as (batch, d_state,
channels), so that the innermost loop runs over contiguous channels. The backward recomputes
each chunk's states from the state entering it, as the PyTorch scan does.

Float32 uses :func:`_exp32`, a polynomial exp that vectorizes (numba's ``math.exp`` is one
scalar call per element, which would dominate), within 2 ulp of the exact exp. Float64 uses
``math.exp``, so the float64 kernel agrees with the reference to rounding.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

_JIT = dict(fastmath=True, cache=True)
_KERNEL = dict(nogil=True, **_JIT)  # threads run kernels side by side (see _run_jobs)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (a reinterpretation, not a cast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(inline="always", **_JIT)
def _exp32(x):
    """exp(x) in float32 as 2^k p(r), x = k ln2 + r, |r| <= ln2 / 2 (Cephes' expf polynomial).

    k is rounded by truncation plus a sign-matched half, not ``math.floor`` (which returns a
    Python int in numba and stops vectorization); 2^k is built from its exponent bits. So 2^k
    must be a normal float32, -126 <= k <= 127: exp(x) is 0 for x < -87.68 (where it is below
    1.2e-38) and inf for x > 88.37 (exactly from 88.73 on; a scan with exp(delta A) > 1e38 has
    overflowed anyway, and Mamba's delta A is <= 0)."""
    if x < np.float32(-87.68):  # k < -126: 2^k is not a normal float32; exp(x) < 1.1e-38
        return np.float32(0.0)
    if x > np.float32(88.37):
        return np.float32(np.inf)
    t = x * np.float32(1.4426950408889634)
    k_int = np.int32(t + (np.float32(0.5) if t >= 0 else np.float32(-0.5)))
    k = np.float32(k_int)
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)  # ln2 in two parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _f32_from_bits((k_int + np.int32(127)) << np.int32(23))


def _exp(x):
    """exp for the kernels: :func:`_exp32` in float32, ``math.exp`` in float64."""
    return math.exp(x)


@overload(_exp, inline="always", jit_options=_JIT)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


# -- one position of one state index n, over a block of channels (contiguous 1-D rows) -------
# The rows are separate arguments so that numba sees plain 1-D arrays: indexing 4-D arrays in
# the innermost loop keeps LLVM from vectorizing it.

@numba.njit(inline="always", **_JIT)
def _advance(h, A, delta, x, y, b_n, c_n):
    """h <- exp(delta A) h + x B_n (x = delta u), and y += C_n h."""
    for i in range(h.shape[0]):
        h_new = _exp(delta[i] * A[i]) * h[i] + x[i] * b_n
        h[i] = h_new
        y[i] += c_n * h_new


@numba.njit(inline="always", **_JIT)
def _recompute(h_prev, h_next, decay, A, delta, x, b_n):
    """The forward step again, keeping the decay exp(delta A) for the adjoint pass."""
    for i in range(h_prev.shape[0]):
        a = _exp(delta[i] * A[i])
        decay[i] = a
        h_next[i] = a * h_prev[i] + x[i] * b_n


@numba.njit(inline="always", **_JIT)
def _adjoint(dy, delta, x, A, carry, h_now, h_prev, decay, dx, d_log_decay_A, dA, c_n, b_n):
    """One adjoint step: G = C_n dy + carry is dL/dh_t; carry <- exp(delta A) G for t - 1.

    Accumulates dx = sum_n G B_n, d_log_decay_A = sum_n (dL/dlog a) A and dA += (dL/dlog a)
    delta over channels; returns (dC_n, dB_n) for this position, summed over the channels."""
    dc_n = c_n * 0
    db_n = c_n * 0
    for i in range(dy.shape[0]):
        G = dy[i] * c_n + carry[i]
        dc_n += dy[i] * h_now[i]
        db_n += G * x[i]
        dx[i] += G * b_n
        P = G * decay[i]
        d_log_decay = P * h_prev[i]
        d_log_decay_A[i] += d_log_decay * A[i]
        dA[i] += d_log_decay * delta[i]
        carry[i] = P
    return dc_n, db_n


@numba.njit(**_KERNEL)
def _forward(jobs, u, delta, A_T, B, C, D, h0, chunk, per_block, y, entering, h_final):
    """Jobs are (batch row, block of channels), ``jobs`` a range of them; each scans its block
    through the sequence, writing y and the state entering every chunk. h0, entering, h_final:
    (.., n, channels)."""
    length, d = u.shape[1], u.shape[2]
    n = A_T.shape[0]
    blocks = (d + per_block - 1) // per_block
    for job in range(jobs[0], jobs[1]):
        b = job // blocks
        lo = (job % blocks) * per_block
        hi = min(d, lo + per_block)
        h = h0[b, :, lo:hi].copy()
        x = np.empty(hi - lo, dtype=u.dtype)
        for t in range(length):
            if t % chunk == 0:
                entering[t // chunk, b, :, lo:hi] = h
            y[b, t, lo:hi] = D[lo:hi] * u[b, t, lo:hi]
            x[:] = delta[b, t, lo:hi] * u[b, t, lo:hi]
            for k in range(n):
                _advance(h[k], A_T[k, lo:hi], delta[b, t, lo:hi], x, y[b, t, lo:hi], B[b, t, k], C[b, t, k])
        h_final[b, :, lo:hi] = h


@numba.njit(**_KERNEL)
def _backward(jobs, dy, dh_final, u, delta, A_T, B, C, D, entering, chunk, per_block,
              du, d_delta, dA, dB, dC, dD, dh0):
    """Chunks in reverse: recompute the chunk's states, then run the adjoint through it.

    dA (batch, n, channels), dD (batch, channels) and dB, dC (blocks, batch, L, n) are per job,
    summed by the caller, so no two jobs write the same entry."""
    length, d = u.shape[1], u.shape[2]
    n = A_T.shape[0]
    blocks = (d + per_block - 1) // per_block
    for job in range(jobs[0], jobs[1]):
        b = job // blocks
        block = job % blocks
        lo = block * per_block
        hi = min(d, lo + per_block)
        width = hi - lo
        states = np.empty((chunk + 1, n, width), dtype=u.dtype)
        decay = np.empty((chunk, n, width), dtype=u.dtype)
        carry = dh_final[b, :, lo:hi].copy()
        dA_job = np.zeros((n, width), dtype=u.dtype)
        dD_job = np.zeros(width, dtype=u.dtype)
        dx = np.empty(width, dtype=u.dtype)
        x = np.empty((chunk, width), dtype=u.dtype)  # delta u of the chunk's positions
        d_log_decay_A = np.empty(width, dtype=u.dtype)
        for c in range((length + chunk - 1) // chunk - 1, -1, -1):
            start = c * chunk
            stop = min(length, start + chunk)
            states[0] = entering[c, b, :, lo:hi]
            for t in range(start, stop):
                x[t - start] = delta[b, t, lo:hi] * u[b, t, lo:hi]
                for k in range(n):
                    _recompute(states[t - start, k], states[t - start + 1, k], decay[t - start, k],
                               A_T[k, lo:hi], delta[b, t, lo:hi], x[t - start], B[b, t, k])
            for t in range(stop - 1, start - 1, -1):
                dx[:] = 0
                d_log_decay_A[:] = 0
                for k in range(n):
                    dc_n, db_n = _adjoint(dy[b, t, lo:hi], delta[b, t, lo:hi], x[t - start], A_T[k, lo:hi],
                                          carry[k], states[t - start + 1, k], states[t - start, k],
                                          decay[t - start, k], dx, d_log_decay_A, dA_job[k], C[b, t, k], B[b, t, k])
                    dC[block, b, t, k] = dc_n
                    dB[block, b, t, k] = db_n
                for i in range(width):  # x = delta u: dL/du = dx delta + dy D, dL/ddelta = dx u + (via a)
                    du[b, t, lo + i] = dx[i] * delta[b, t, lo + i] + dy[b, t, lo + i] * D[lo + i]
                    d_delta[b, t, lo + i] = d_log_decay_A[i] + dx[i] * u[b, t, lo + i]
                    dD_job[i] += dy[b, t, lo + i] * u[b, t, lo + i]
        dh0[b, :, lo:hi] = carry
        dA[b, :, lo:hi] = dA_job
        dD[b, lo:hi] = dD_job


def _channels_per_block(batch: int, channels: int, threads: int) -> int:
    """Split channels only as far as needed to give every thread a job: batch x blocks >= threads."""
    blocks = max(1, min(channels, -(-threads // max(batch, 1))))
    return max(1, -(-channels // blocks))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid that made it, workers, pool): a fork makes its own


def _flush_denormals() -> None:
    """Treat subnormal floats as zero on this (pool) thread. On x86 they cost ~100x a normal
    operation, and the backward meets them whenever the adjoint decays over a long stretch without
    gradient (a loss on the last positions only, a state summary): there it ran 6x slower."""
    torch.set_flush_denormal(True)


def _run_jobs(kernel, jobs: int, threads: int, *args) -> None:
    """``kernel(job_range, *args)`` over jobs 0..jobs-1 in ``threads`` contiguous ranges at once.

    Python threads rather than numba's ``parallel=True``: numba's OpenMP layer resets the
    OpenMP thread count that ``torch.set_num_threads`` sets, and its workqueue layer aborts on
    concurrent calls; the kernels release the GIL (``nogil``), so plain threads run them side
    by side, and as many as torch uses."""
    global _pool
    threads = max(1, min(threads, jobs))
    bounds = [jobs * i // threads for i in range(threads + 1)]
    ranges = [np.array(bounds[i:i + 2], dtype=np.int64) for i in range(threads)]
    # Even one job goes to the pool: only its threads flush denormals (the caller's mode is the user's).
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < threads:
        _pool = (os.getpid(), threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="longmix-scan",
                                                          initializer=_flush_denormals))
    for future in [_pool[2].submit(kernel, r, *args) for r in ranges]:
        future.result()


class FusedScan(torch.autograd.Function):
    """y (batch, L, channels), with the D u term, and the final state (batch, channels, n).

    Inputs are CPU tensors of one dtype, float32 or float64; h0 (batch, channels, n). Runs on
    ``torch.get_num_threads()`` threads."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, chunk_size):
        (batch, length, d), n = u.shape, A.shape[1]
        threads = torch.get_num_threads()
        chunk = min(chunk_size, length)
        per_block = _channels_per_block(batch, d, threads)
        y = u.new_empty(batch, length, d)
        entering = u.new_empty(-(-length // chunk), batch, n, d)
        h_final = u.new_empty(batch, n, d)
        _run_jobs(_forward, batch * -(-d // per_block), threads, *map(_numpy, (u, delta, A.mT, B, C, D, h0.mT)),
                  chunk, per_block, y.numpy(), entering.numpy(), h_final.numpy())
        ctx.save_for_backward(u, delta, A, B, C, D, entering)
        ctx.chunk = chunk
        return y, h_final.mT

    @staticmethod
    def backward(ctx, dy, dh_final):
        u, delta, A, B, C, D, entering = ctx.saved_tensors
        (batch, length, d), n = u.shape, A.shape[1]
        threads = torch.get_num_threads()
        per_block = _channels_per_block(batch, d, threads)
        blocks = -(-d // per_block)
        du, d_delta = torch.empty_like(u), torch.empty_like(u)
        dA, dh0, dD = u.new_empty(batch, n, d), u.new_empty(batch, n, d), u.new_empty(batch, d)
        dB, dC = u.new_empty(blocks, batch, length, n), u.new_empty(blocks, batch, length, n)
        _run_jobs(_backward, batch * blocks, threads,
                  *map(_numpy, (dy, dh_final.mT, u, delta, A.mT, B, C, D, entering)), ctx.chunk, per_block,
                  du.numpy(), d_delta.numpy(), dA.numpy(), dB.numpy(), dC.numpy(), dD.numpy(), dh0.numpy())
        return du, d_delta, dA.sum(0).mT, dB.sum(0), dC.sum(0), dD.sum(0), dh0.mT, None
