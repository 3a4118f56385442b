"""Models that take any token mixer by name.

    >>> from longmix.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig(vocab_size=12, mixer="s4d", head="classify", num_classes=10))
    >>> logits = model(tokens)        # tokens (B, L) long -> (B, 10)
"""
from .model import HEADS, POOLS, MLP, Block, ModelConfig, SequenceModel, build_model
from .positional import FAMILY_DEFAULT, KINDS, Positional, resolve, sinusoidal_table

__all__ = ["HEADS", "POOLS", "MLP", "Block", "ModelConfig", "SequenceModel", "build_model",
           "FAMILY_DEFAULT", "KINDS", "Positional", "resolve", "sinusoidal_table"]
