"""Mamba's short depthwise convolution over a window of rows, with its own backward.

    out[b, t, d] = bias[d] + sum_j window[b, t + j, d] weight[d, j],   t = 0 .. L - 1,

for a window of L + width - 1 rows (the rows before the first output come from the previous
chunk, another rank or zero padding): ``F.conv1d(window.mT, weight[:, None], bias,
groups=channels).mT`` in the (batch, L, channels) layout, as ``width`` in-place multiply-adds.

Why not ``F.conv1d``: on CPU its depthwise backward (oneDNN) took 10% of a Mamba training
step; why not the same sum written with autograd: each shifted slice's backward allocates and
zero-fills a window-sized gradient. Here the backward is ``width`` multiply-adds into one
gradient, ``width`` products summed for the weight, one sum for the bias.
"""
from __future__ import annotations

import torch


def short_conv(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """window (batch, L + width - 1, channels), weight (channels, width), bias (channels,) ->
    (batch, L, channels); see the module docstring."""
    if window.dim() != 3 or weight.dim() != 2 or weight.shape[0] != window.shape[-1]:
        raise ValueError(f"short_conv: expected window (batch, rows, channels) and weight (channels, width), "
                         f"got {tuple(window.shape)} and {tuple(weight.shape)}")
    if window.shape[1] < weight.shape[1] - 1:
        raise ValueError(f"short_conv: the window needs at least width - 1 = {weight.shape[1] - 1} rows, "
                         f"got {window.shape[1]}")
    return _ShortConv.apply(window, weight, bias)


class _ShortConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, window, weight, bias):
        width = weight.shape[1]
        length = window.shape[1] - width + 1
        out = torch.addcmul(bias, window[:, :length], weight[:, 0])
        for j in range(1, width):
            out.addcmul_(window[:, j:j + length], weight[:, j])
        ctx.save_for_backward(window, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        window, weight = ctx.saved_tensors
        width = weight.shape[1]
        length = window.shape[1] - width + 1
        d_window = torch.empty_like(window)
        torch.mul(grad, weight[:, 0], out=d_window[:, :length])
        d_window[:, length:] = 0
        for j in range(1, width):
            d_window[:, j:j + length].addcmul_(grad, weight[:, j])
        d_weight = torch.stack([(window[:, j:j + length] * grad).sum((0, 1)) for j in range(width)], dim=1)
        return d_window, d_weight, grad.sum((0, 1))
