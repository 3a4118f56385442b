"""Vandermonde products: the convolution kernel of a diagonal state space model (S4D).

A diagonal SSM with discrete poles z_n = exp(dt A_n) and folded coefficients v_n = C_n Bbar_n
has the convolution kernel

    K[l] = 2 Re( sum_n v_n z_n^l ),        l = 0 .. L-1,

i.e. the product of the coefficient row ``v`` with the Vandermonde matrix V[n, l] = z_n^l
(the factor 2 Re accounts for the conjugate half of the poles, as in S4D). Following S4 we
take the poles in log form, x_n = log z_n = dt A_n, and evaluate z_n^l = exp(x_n * l): with
Re(x_n) < 0 the powers decay and underflow to 0 instead of overflowing, however long L is.
"""
from __future__ import annotations

import math

import torch

from ..checks import check_int


def log_vandermonde(v: torch.Tensor, x: torch.Tensor, length: int, block: int | None = None) -> torch.Tensor:
    """K[..., l] = 2 Re(sum_n v[..., n] exp(x[..., n] l)) for l in [0, length).

    Evaluated blockwise: writing l = block * i + j with 0 <= j < block,

        K[block i + j] = 2 Re( sum_n (v_n z_n^(block i)) z_n^j ),

    one (blocks, N) x (N, block) matrix product per leading index. With block ~ sqrt(L) this
    takes O(N sqrt L) exponentials instead of the O(N L) of the full Vandermonde matrix, and the
    O(N L) multiply-adds run as a matmul; memory is O(L + N sqrt L) per leading index.

    Args:
        v: complex coefficients, shape (..., N).
        x: complex log-poles (dt A), shape (..., N), broadcastable with ``v``. Re(x) <= 0 keeps
            every power <= 1 in modulus (long kernels underflow to 0, never overflow).
        length: number of kernel taps L.
        block: taps per block, default the power of two nearest above sqrt(L).

    Returns:
        The real kernel, shape (broadcast of the leading dims, L).
    """
    if not (v.is_complex() and x.is_complex()):
        raise ValueError(f"log_vandermonde: v and x must be complex, got {v.dtype} and {x.dtype}")
    if v.shape[-1] != x.shape[-1]:
        raise ValueError(f"log_vandermonde: v and x must share the last (state) dim, got "
                         f"{tuple(v.shape)} and {tuple(x.shape)}")
    check_int("length", length, owner="log_vandermonde")
    if block is None:
        block = 1 << math.ceil(math.log2(length) / 2)
    else:
        block = check_int("block", block, owner="log_vandermonde")
    real_dtype = torch.empty((), dtype=x.dtype).real.dtype
    j = torch.arange(block, device=x.device, dtype=real_dtype)
    starts = torch.arange(0, length, block, device=x.device, dtype=real_dtype)
    powers = torch.exp(x.unsqueeze(-1) * j)  # (..., N, block): z^j
    coeffs = v.unsqueeze(-2) * torch.exp(x.unsqueeze(-2) * starts.unsqueeze(-1))  # (..., blocks, N)
    k = 2 * torch.matmul(coeffs, powers).real  # (..., blocks, block)
    return k.flatten(-2)[..., :length]


def log_vandermonde_transpose(u: torch.Tensor, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """s[..., n] = sum_l u[..., l] exp(x[..., n] (L - 1 - l)): the transposed product.

    This is the state a diagonal SSM with log-poles ``x`` reaches after reading the inputs
    ``u`` (already scaled by Bbar) from a zero state, h_{L-1} = sum_l z^(L-1-l) u_l, the
    counterpart of :func:`log_vandermonde` (which reads a state out over L steps). Blockwise as
    there: with r = L-1-l = block i + j, s = sum_i z^(block i) sum_j u_r z^j, so the O(N L)
    multiply-adds run as one matmul and only O(N sqrt L) exponentials are taken.

    Args:
        u: real or complex inputs, shape (..., L).
        x: complex log-poles, shape (..., N); the leading dims broadcast with u's.
        block: taps per block, default the power of two nearest above sqrt(L).

    Returns:
        Complex, shape (broadcast of the leading dims, N).
    """
    if not x.is_complex():
        raise ValueError(f"log_vandermonde_transpose: x must be complex, got {x.dtype}")
    length = u.shape[-1]
    if length < 1:
        raise ValueError(f"log_vandermonde_transpose: u must have at least one entry, got {tuple(u.shape)}")
    if block is None:
        block = 1 << math.ceil(math.log2(length) / 2)
    else:
        block = check_int("block", block, owner="log_vandermonde_transpose")
    real_dtype = torch.empty((), dtype=x.dtype).real.dtype
    blocks = math.ceil(length / block)
    reversed_u = torch.nn.functional.pad(u.flip(-1), (0, blocks * block - length))  # r = L-1-l
    reversed_u = reversed_u.unflatten(-1, (blocks, block)).to(x.dtype)  # (..., blocks, block)
    j = torch.arange(block, device=x.device, dtype=real_dtype)
    starts = torch.arange(blocks, device=x.device, dtype=real_dtype) * block
    powers = torch.exp(x.unsqueeze(-2) * j.unsqueeze(-1))  # (..., block, N): z^j
    inner = torch.matmul(reversed_u, powers)  # (..., blocks, N)
    return (inner * torch.exp(x.unsqueeze(-2) * starts.unsqueeze(-1))).sum(-2)


def vandermonde_matrix(z: torch.Tensor, length: int) -> torch.Tensor:
    """The literal Vandermonde matrix V[..., n, l] = z[..., n] ** l, shape (..., N, L).

    Built by repeated multiplication (a cumulative product), independently of the log form
    used by :func:`log_vandermonde`; for references and tests at small L.
    """
    check_int("length", length, owner="vandermonde_matrix")
    ones = torch.ones_like(z).unsqueeze(-1)
    if length == 1:
        return ones
    steps = z.unsqueeze(-1).expand(*z.shape, length - 1)
    return torch.cat([ones, torch.cumprod(steps, dim=-1)], dim=-1)
