"""mlp family: token mixing by a multilayer perceptron along the sequence.

``mlpmixer`` (Tolstikhin et al. 2021): the token-mixing MLP of MLP-Mixer,
y[:, c] = W2 GELU(W1 x[:, c] + b1) + b2, shared by all channels c.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from .base import ChannelMixer, Taxonomy
from .registry import register


@register("mlpmixer")
class MLPMixer(ChannelMixer):
    """MLP-Mixer's token-mixing MLP: Linear(max_len -> hidden), GELU, Linear(hidden -> max_len),
    applied along the length of x (batch, L, dim), the same MLP for every channel.

    For L < max_len the first L columns of W1 and the first L rows of W2 (and of b2) are used,
    i.e. the sequence is treated as zero-padded to max_len and the output cropped. ``heads`` is
    accepted but unused.

    No mixing matrix: the GELU between the two length-mixing layers makes y a nonlinear function
    of x, so there is no L x L matrix M with y = M x. The taxonomy marks it input-independent in
    the sense that its weights are static (not computed from x, unlike attention).

    Not causal. A causal token-mixing MLP is possible (lower-triangular W1 and W2 with one hidden
    unit per position), but that ties the hidden width to the length, quadratic in time and
    parameters, so it is not offered.

    Args:
        hidden: width of the token-mixing MLP (D_S in the paper).
    """

    taxonomy = Taxonomy("mlp", learned=True, input_dependent=False, causal=False,
                        time="O(L h)", memory="O(L h)")
    requires_max_len = True
    uses_heads = False  # one token-mixing MLP shared by every channel

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, max_len: int | None = None,
                 hidden: int = 64):
        super().__init__(dim, heads=heads, causal=causal, max_len=max_len)
        check_int("hidden", hidden, owner="MLPMixer")
        self.fc1 = nn.Linear(max_len, hidden)
        self.fc2 = nn.Linear(hidden, max_len)

    def _weights(self, length: int):
        return self.fc1.weight[:, :length], self.fc1.bias, self.fc2.weight[:length], self.fc2.bias[:length]

    def _mix_channels(self, u, groups):  # the same MLP runs on every channel
        w1, b1, w2, b2 = self._weights(u.shape[1])
        h = F.gelu(F.linear(u.mT, w1, b1))  # (b, channels, hidden)
        return F.linear(h, w2, b2).mT

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = self._weights(x.shape[1])
        pre = w1 @ x + b1[:, None]  # (b, hidden, dim): W1 X + b1 1^T
        h = 0.5 * pre * (1 + torch.erf(pre / math.sqrt(2)))  # GELU, exact (erf) form
        return w2 @ h + b2[:, None]  # (b, L, dim)

    def _mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "mlpmixer has no mixing matrix: its token mixing W2 GELU(W1 x + b1) + b2 is nonlinear "
            "in x, so no L x L matrix M gives y = M x")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.fc1.out_features}"
