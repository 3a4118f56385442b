"""Positional information, chosen per mixer family.

A token mixer only sees a (batch, length, dim) tensor, so the model adds position to the token
embeddings before the first block. Whether it needs to depends on the family:

==============  =============  ==============================================================
family          default        why
==============  =============  ==============================================================
attention       sinusoidal     softmax(QK^T) is permutation-equivariant: no notion of order
kernel          sinusoidal     phi(Q) phi(K)^T, same as attention
sparse          sinusoidal     the sparsity pattern is positional, but the weights inside a
                               window are still order-blind
lowrank         sinusoidal     the projection E (L x k) is learned per position, but the
                               attention over the k rows is order-blind; kept like attention
fourier         none           the DFT matrix is indexed by position
convolution     none           a Toeplitz kernel k[t - s] is indexed by the offset t - s
ssm             none           the recurrence is ordered: the kernel C A^(t-s) B decays with offset
mlp             none           the token-mixing weight W[t, s] is indexed by absolute position
==============  =============  ==============================================================

Sinusoidal (Vaswani et al. 2017) is the default over learned absolute embeddings because it
needs no maximum length and adds no parameters, so runs at different contexts train the same
number of weights. Rotary embeddings act inside attention (on q and k), which the TokenMixer
contract does not expose, so they are not offered here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("auto", "sinusoidal", "learned", "none")

#: The default for each family of ``longmix.mixers.FAMILIES`` (see the table above).
FAMILY_DEFAULT = {
    "attention": "sinusoidal",
    "kernel": "sinusoidal",
    "sparse": "sinusoidal",
    "lowrank": "sinusoidal",
    "fourier": "none",
    "convolution": "none",
    "ssm": "none",
    "mlp": "none",
}


def resolve(kind: str, family: str) -> str:
    """The positional scheme to use: ``kind`` itself, or the family default when ``kind='auto'``."""
    if kind not in KINDS:
        raise ValueError(f"positional must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    if family not in FAMILY_DEFAULT:
        raise ValueError(f"no positional default for mixer family {family!r}; "
                         f"known families: {sorted(FAMILY_DEFAULT)}")
    return FAMILY_DEFAULT[family]


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The (length, dim) table PE[t, 2i] = sin(t / 10000^(2i/dim)), PE[t, 2i+1] = cos(...)."""
    return sinusoidal_rows(torch.arange(length), dim)


def sinusoidal_rows(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The rows ``positions`` (n,) of :func:`sinusoidal_table`, (n, dim) float64, without the
    table: a shard of a long sequence needs only its own rows (O(L/P) memory, not O(L))."""
    position = positions.to(torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)
                     * (-math.log(10000.0) / dim))
    rows = torch.zeros(positions.shape[0], dim, dtype=torch.float64, device=positions.device)
    rows[:, 0::2] = torch.sin(position * freq)
    rows[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return rows


class Positional(nn.Module):
    """Adds position to embeddings x of shape (batch, length, dim); returns the same shape.

    Positions count from the first token of the window the model sees (0 .. length-1).
    """

    def __init__(self, kind: str, dim: int, max_len: int | None = None):
        super().__init__()
        if kind not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"Positional: kind must be 'sinusoidal', 'learned' or 'none', got {kind!r}")
        if kind == "learned" and max_len is None:
            raise ValueError("Positional: kind='learned' needs max_len (one embedding per position)")
        self.kind, self.dim, self.max_len = kind, dim, max_len
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        # The sinusoidal table depends only on (t, i), so one computed for the longest length seen
        # serves every shorter one; rebuilding it each step cost a float64 (L, dim) table per call.
        # Given positions (a shard, a decode step) beyond it get their own rows instead: a table up
        # to the largest position would cost every rank O(L) memory. Not persistent: checkpoints
        # stay as they were.
        self.register_buffer("_sinusoid", torch.empty(0, dim), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``positions`` (length,): the global index of each row, for a shard of a longer
        sequence (sequence parallelism); default 0 .. length-1."""
        if self.kind == "none":
            return x
        length = x.shape[1] if positions is None or positions.numel() == 0 else int(positions.max()) + 1
        if self.kind == "learned":
            if length > self.max_len:
                raise ValueError(f"Positional: length {length} exceeds max_len={self.max_len} "
                                 "of the learned position table")
            table = self.table
        else:
            cached = (self._sinusoid.shape[0] >= length and self._sinusoid.dtype == x.dtype
                      and self._sinusoid.device == x.device)
            if positions is not None and not cached:
                return x + sinusoidal_rows(positions.to(x.device), self.dim).to(x.dtype)
            if not cached:
                self._sinusoid = sinusoidal_table(length, self.dim).to(dtype=x.dtype, device=x.device)
            table = self._sinusoid
        return x + (table[:x.shape[1]] if positions is None else table[positions.to(x.device)])

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, dim={self.dim}, max_len={self.max_len}"
