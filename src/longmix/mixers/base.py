"""The TokenMixer contract: every long-sequence model as X~ = P(X) over X of shape (L, D).

A mixer is an ``nn.Module`` with three views of the same operator:

* ``forward(x)``: the fast path users run, x of shape (batch, length, dim).
* ``reference(x)``: the family's formula transcribed literally, every L x L matrix
  (attention matrix, Toeplitz convolution matrix, DFT/Vandermonde matrices, SSM kernel
  matrix) materialized. In float64 it agrees with ``forward`` to < 1e-8 relative error.
* ``mixing_matrix(x)``: the token-mixing operator, shape (batch, groups, L, L), applied along
  the sequence per head or channel group.

Subclasses set the class attribute ``taxonomy`` and implement ``_forward``, ``_reference`` and
``_mixing_matrix``; the public methods validate the input first, so every mixer raises the same
clear errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

FAMILIES = ("attention", "kernel", "sparse", "lowrank", "fourier", "convolution", "ssm", "mlp")


@dataclass(frozen=True)
class Taxonomy:
    """Where a mixer sits in the unified view."""

    family: str
    learned: bool  # are the mixing weights trained (vs. fixed, e.g. the DFT)?
    input_dependent: bool  # does the mixing matrix change with the input?
    causal: bool  # can it run causally (output t sees inputs <= t only)?
    time: str  # forward cost in L, e.g. "O(L log L)"
    memory: str  # activation memory in L, e.g. "O(L)"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a ValueError naming ``owner``'s
    argument ``name``. The one validator of integer options of every mixer (bools are refused:
    ``True`` is an int to Python but never a meaningful size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return value


class TokenMixer(nn.Module):
    """Base class of all mixers. See the module docstring for the contract.

    Args:
        dim: model width D; the last dimension of the input.
        heads: number of heads / channel groups; must divide ``dim``.
        causal: if True, output position t depends only on inputs at positions <= t.
        max_len: the longest sequence accepted (required by mixers with length-sized weights).
    """

    taxonomy: ClassVar[Taxonomy]
    #: Mixers whose weights are sized by the sequence length (Linformer, MLP-Mixer) set this.
    requires_max_len: ClassVar[bool] = False

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None):
        super().__init__()
        name = type(self).__name__
        check_int(name, "dim", dim)
        check_int(name, "heads", heads)
        if dim % heads:
            raise ValueError(f"{name}: dim ({dim}) must be divisible by heads ({heads})")
        if causal and not self.taxonomy.causal:
            raise ValueError(f"{name}: causal=True is not supported: this {self.taxonomy.family} mixer "
                             "mixes every position with every other (use causal=False)")
        if max_len is not None:
            check_int(name, "max_len", max_len)
        if self.requires_max_len and max_len is None:
            raise ValueError(f"{name}: max_len is required (its weights are sized by the sequence length)")
        self.dim, self.heads, self.causal, self.max_len = dim, heads, causal, max_len
        self.head_dim = dim // heads

    # -- public API: validate, then dispatch -------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._forward(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The literal formula with every L x L matrix materialized (slow; for tests and teaching)."""
        self.check_input(x)
        return self._reference(x)

    def mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The token-mixing operator (batch, groups, L, L) that this mixer applies to ``x``."""
        self.check_input(x)
        return self._mixing_matrix(x)

    def check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name}: x must have shape (batch, length, dim={self.dim}), "
                             f"got rank {x.dim()} with shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name}: x's last dim must be dim={self.dim}, got shape {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ValueError(f"{name}: x must have length >= 1, got shape {tuple(x.shape)}")
        if self.max_len is not None and x.shape[1] > self.max_len:
            raise ValueError(f"{name}: x's length {x.shape[1]} exceeds max_len={self.max_len}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, causal={self.causal}, max_len={self.max_len}"

    # -- to implement ------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define a mixing matrix")
