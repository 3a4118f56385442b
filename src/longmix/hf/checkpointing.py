"""Activation checkpointing of a transformers model's decoder layers, with longmix's options.

transformers checkpoints every decoder layer (a ``GradientCheckpointingLayer``) of a model in
training mode once ``model.activation_checkpointing_enable(activation_checkpointing_kwargs=...)``
has been called, running ``torch.utils.checkpoint.checkpoint`` with those options. longmix gives it
its own (:data:`longmix.recompute.RECOMPUTE_OPTIONS`): no reentrancy, the RNG state preserved, and
early stopping off. The last one matters in a model from :func:`longmix.hf.parallelize`: a layer's
recompute reruns its collectives (attention's ring or all-to-all, a mixer's state exchange, the
shard agreement) in backward, and with early stopping a rank could end its recompute as soon as
its own saved tensors are back, before a collective that a peer still runs. Without it every rank
recomputes the whole layer, so every rank runs the same collectives in the same order.
"""
from __future__ import annotations

from torch import nn

from longmix.recompute import RECOMPUTE_OPTIONS


def checkpoint_layers(model: nn.Module, enable: bool, owner: str) -> None:
    """Turn the activation checkpointing of ``model`` (a transformers ``PreTrainedModel``) on,
    every decoder layer with longmix's options, or off. Changes ``model`` (its layers' flags),
    nothing global. ``owner`` names the caller in the error raised for a model that transformers
    cannot checkpoint."""
    if not enable:
        if getattr(model, "is_activation_checkpointing", False):
            model.activation_checkpointing_disable()
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{owner}: {type(model).__name__} does not support activation "
                         f"checkpointing in transformers (supports_gradient_checkpointing is False)")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(RECOMPUTE_OPTIONS))
