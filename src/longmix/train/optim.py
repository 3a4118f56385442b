"""Which parameters take weight decay: AdamW parameter groups.

Weight decay pulls weights toward zero. That is a useful prior for the matrices of linear and
convolution layers, and a harmful one elsewhere:

* biases and normalization gains (decaying a LayerNorm gain toward 0 shrinks the signal);
* embeddings (rare tokens' rows would decay toward 0 between their updates);
* a mixer's dynamics: an SSM's ``log A``, step sizes and output projection of its modes, a
  learned position table. S4 and Mamba exclude these: decay there changes *what* the layer
  computes (e.g. drives decay rates toward a fixed value), not just how large its weights are.

So the rule is a whitelist, as in minGPT's ``configure_optimizers``: only the ``weight`` of
``nn.Linear`` and ``nn.Conv*`` modules decays, minus whatever a module declares through a
``no_decay_parameter_names()`` method (names relative to that module). Every other parameter
(raw ``nn.Parameter`` s of mixers, norms, embeddings, biases) does not decay.
"""
from __future__ import annotations

from torch import nn

#: Modules whose ``weight`` is a plain linear map, the only parameters that decay by default.
DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def declared_no_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules of ``model`` declare as not to decay."""
    out = set()
    for prefix, module in model.named_modules():
        declare = getattr(module, "no_decay_parameter_names", None)
        if callable(declare):
            out.update(f"{prefix}.{name}" if prefix else name for name in declare())
    return out


def decayed_parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters of ``model`` that take weight decay (see module doc)."""
    excluded = declared_no_decay(model)
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, DECAYED_MODULES) and getattr(module, "weight", None) is not None:
            name = f"{prefix}.weight" if prefix else "weight"
            if module.weight.requires_grad and name not in excluded:
                names.append(name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: ``{"params": decayed, "weight_decay": weight_decay}`` and the rest at 0.

    Each group also carries ``"names"`` (ignored by the optimizer) so a record can say which
    parameters decayed. A parameter shared by two modules is listed once.
    """
    decayed = set(decayed_parameter_names(model))
    groups = {True: ([], []), False: ([], [])}
    for name, p in model.named_parameters():  # named_parameters() already skips shared duplicates
        if p.requires_grad:
            params, names = groups[name in decayed]
            params.append(p)
            names.append(name)
    return [{"params": groups[True][0], "names": groups[True][1], "weight_decay": weight_decay},
            {"params": groups[False][0], "names": groups[False][1], "weight_decay": 0.0}]
