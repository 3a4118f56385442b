"""The short causal depthwise convolution that Mamba-2 and Gated DeltaNet put before their
recurrence, in the three settings a mixer runs it: over sequence pieces with their left context
(forward and the shuffle form), continuing from the last inputs of a state (step mode), and as
banded Toeplitz matrices (the literal path). The weights are an ``nn.Conv1d`` (channels,
1, width), as in the reference implementations, so modules built there share their parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.fftconv import toeplitz_matrix
from ..ops.short_conv import short_conv


def _bias(conv: nn.Conv1d, like: torch.Tensor) -> torch.Tensor:
    return conv.bias if conv.bias is not None else like.new_zeros(conv.out_channels)


def conv_window(conv: nn.Conv1d, window: torch.Tensor) -> torch.Tensor:
    """(batch, width - 1 + L, channels) rows -> the L outputs (no padding, no activation)."""
    return short_conv(window, conv.weight[:, 0], _bias(conv, window))


def conv_pieces(conv: nn.Conv1d, t: torch.Tensor, pieces) -> torch.Tensor:
    """The conv of t (batch, l, channels) whose local pieces read ``pieces.left_context`` (see
    ``TokenMixer._shuffle_prepare``): zeros before position 0, other ranks' rows when sharded."""
    parts = [conv_window(conv, piece) for piece in pieces.left_context(t, conv.kernel_size[0] - 1)]
    if not parts:  # an empty shard
        return t
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def conv_matrix(conv: nn.Conv1d, length: int) -> torch.Tensor:
    """The conv as banded lower-triangular Toeplitz matrices (channels, L, L); Conv1d correlates,
    so lag j uses weight[width - 1 - j]. The bias is the caller's."""
    return toeplitz_matrix(conv.weight[:, 0].flip(-1).T, length, causal=True)


def conv_literal(conv: nn.Conv1d, t: torch.Tensor) -> torch.Tensor:
    """The conv of t (batch, L, channels) as the materialized matrices times t, plus the bias."""
    out = torch.einsum("cts,bsc->btc", conv_matrix(conv, t.shape[1]), t)
    return out + conv.bias if conv.bias is not None else out
