"""Linear (not circular) convolution along the sequence by FFT, and its Toeplitz matrix.

Layout: signals are sequence-first and channel-last, ``u`` of shape (..., L, C), the layout of
the mixers. A kernel holds one filter per channel, indexed by lag:

* causal (one-sided): ``kernel`` (K, C) holds lags 0 .. K-1, and
  ``y[t, c] = sum_{s <= t} kernel[t - s, c] * u[s, c]``;
* two-sided: ``kernel`` (2K-1, C) holds lags -(K-1) .. K-1, lag ``l`` at row ``l + K - 1``, and
  ``y[t, c] = sum_s kernel[t - s + K - 1, c] * u[s, c]`` over the lags the kernel covers.

Lags beyond the kernel are zero, so a short kernel (K < L) is a banded convolution. The FFT is
zero-padded to at least L + K - 1 points, the length at which circular wrap-around cannot reach
the L outputs kept, so the result is exactly the linear convolution in O((L + K) log(L + K)).
"""
from __future__ import annotations

import torch

from .masked import reads_any

__all__ = ["fft_conv", "toeplitz_matrix", "next_fast_len"]


def next_fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT size pocketfft/cuFFT handle at full speed."""
    if n < 1:
        raise ValueError(f"next_fast_len: n must be >= 1, got {n}")
    best = 1 << (n - 1).bit_length()  # the next power of two is always a candidate
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:  # multiply by 2 until >= n
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _kernel_reach(kernel: torch.Tensor, causal: bool, name: str) -> int:
    """K, the number of non-negative lags the kernel covers; checks its shape."""
    if kernel.dim() != 2:
        raise ValueError(f"{name}: kernel must have shape (lags, channels), got {tuple(kernel.shape)}")
    n = kernel.shape[0]
    if causal:
        return n
    if n % 2 == 0:
        raise ValueError(f"{name}: a two-sided kernel must have an odd number of lags 2K-1 "
                         f"(lags -(K-1)..K-1), got {n}")
    return (n + 1) // 2


def fft_conv(u: torch.Tensor, kernel: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Convolve ``u`` (..., L, C) with a per-channel ``kernel`` along the sequence, by FFT.

    Args:
        u: the signal, (..., L, C), real.
        kernel: (K, C) lags 0..K-1 if ``causal``, else (2K-1, C) lags -(K-1)..K-1 (see module doc).
        causal: one-sided (output t sees inputs <= t) or two-sided kernel.

    Returns:
        (..., L, C), the linear convolution, in the promoted dtype of ``u`` and ``kernel``.
        A non-finite entry of ``u`` makes NaN exactly the outputs whose sum reads it (for a causal
        kernel, never an earlier one), not every output of its channel as a bare FFT would.
    """
    if u.dim() < 2:
        raise ValueError(f"fft_conv: u must have shape (..., L, C), got {tuple(u.shape)}")
    reach = _kernel_reach(kernel, causal, "fft_conv")
    if kernel.shape[1] != u.shape[-1]:
        raise ValueError(f"fft_conv: kernel has {kernel.shape[1]} channels, u has {u.shape[-1]} "
                         f"(u: {tuple(u.shape)}, kernel: {tuple(kernel.shape)})")
    if u.numel() == 0:  # the FFT libraries refuse empty transforms
        return u.new_zeros(u.shape, dtype=torch.promote_types(u.dtype, kernel.dtype))
    nonfinite = ~torch.isfinite(u)
    if not nonfinite.any():
        return _fft_conv(u, kernel, causal, reach)
    # The FFT spreads every input over every output, so a NaN or inf would reach outputs the
    # convolution never reads (the past, for a causal kernel). Convolve the finite part instead
    # and mark as NaN exactly the outputs whose window reads a non-finite input.
    y = _fft_conv(u.masked_fill(nonfinite, 0), kernel, causal, reach)
    return y.masked_fill(reads_any(nonfinite, before=reach - 1, after=0 if causal else reach - 1),
                         float("nan"))


def _fft_conv(u: torch.Tensor, kernel: torch.Tensor, causal: bool, reach: int) -> torch.Tensor:
    length = u.shape[-2]
    n = next_fast_len(length + reach - 1)  # >= L + K - 1: no wrap-around into kept outputs
    u_f = torch.fft.rfft(u, n=n, dim=-2)
    k_f = torch.fft.rfft(kernel, n=n, dim=-2)
    y = torch.fft.irfft(u_f * k_f, n=n, dim=-2)
    # Causal: lag 0 sits at row 0, outputs are rows 0..L-1. Two-sided: lag 0 sits at row K-1.
    start = 0 if causal else reach - 1
    return y[..., start:start + length, :]


def toeplitz_matrix(kernel: torch.Tensor, length: int, causal: bool = True) -> torch.Tensor:
    """Materialize the convolution as Toeplitz matrices T (C, L, L) with y[:, c] = T[c] @ u[:, c].

    ``T[c, t, s] = kernel[lag(t - s), c]`` where the kernel covers that lag, else 0; causal
    kernels give lower-triangular T. Same kernel layout as :func:`fft_conv`. O(C L^2) memory:
    for references and plots.
    """
    reach = _kernel_reach(kernel, causal, "toeplitz_matrix")
    pos = torch.arange(length, device=kernel.device)
    lag = pos[:, None] - pos[None, :]  # (L, L), t - s
    low = 0 if causal else -(reach - 1)
    valid = (lag >= low) & (lag <= reach - 1)
    rows = (lag - low).clamp(0, kernel.shape[0] - 1)
    t = kernel.T[:, rows]  # (C, L, L)
    return t * valid.to(t.dtype)
