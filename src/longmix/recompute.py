"""Activation checkpointing: run a block keeping only its input, recompute the rest in backward.

The one way longmix checkpoints (``SequenceModel(checkpoint_activations=True)``,
``parallelize(..., checkpoint_activations=True)``, ``longmix train --checkpoint-activations``):
``torch.utils.checkpoint`` without reentrancy, the RNG state preserved (a recomputed dropout draws
the same mask), and early stopping off, so that the recompute always runs the whole block. A block
of a sequence-parallel model holds collectives: in backward every rank then runs all of them
again, in the same order, whatever tensors each rank happened to save (early stopping could stop
one rank's recompute before a collective that a peer runs). Those collectives really send their
bytes a second time, and ``CommStats`` counts them.
"""
from __future__ import annotations

import gc
import sys
from typing import Callable

import torch
from torch.utils import checkpoint as _checkpoint


#: The ``torch.utils.checkpoint.checkpoint`` options of every checkpoint in longmix (see above); an
#: HF model's layers are given them too (:mod:`longmix.hf.checkpointing`).
RECOMPUTE_OPTIONS = {"use_reentrant": False, "preserve_rng_state": True, "early_stop": False}


def recomputed(fn: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """``fn(*args, **kwargs)``, its intermediate activations recomputed in backward instead of
    kept; without gradients (evaluation), a plain call."""
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    # checkpoint's first call in a process imports torch._dynamo, and that import leaves
    # reference cycles through finished frames (torch.fx.wrap keeps its own frame) whose f_back
    # chain reaches the caller's frames: every tensor local to the step's stack (a block's
    # input, the all-to-all buffers) would stay alive until a full collection, possibly past the
    # backward's peak. One collection right after that import frees them; importing
    # torch._dynamo eagerly instead would cost every process ~1.5 s.
    importing = "torch._dynamo" not in sys.modules
    out = _checkpoint.checkpoint(fn, *args, **RECOMPUTE_OPTIONS, **kwargs)
    if importing:
        gc.collect()
    return out
