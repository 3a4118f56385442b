"""Per-layer planning of sequence-parallel forms, with the bytes each form puts on the wire.

``plan_model(module, seq_len, world_size, batch)`` looks at every token mixer of a module (a
``TokenMixer`` or a ``SequenceModel``), lists the forms it admits (``mixer.parallel_forms``),
drops those that cannot run on ``world_size`` ranks (the shuffle needs a group per rank), predicts
the bytes each remaining form sends per rank, and picks the cheapest. The predictions come from
the same arithmetic as the exchanges (``regroup.regroup_elements``, ``halo.halo_plan``, the ring's
block schedule), and the tests hold the measured ``CommStats`` to them.

Stream widths (features per group and row in and out of the all-to-all, shared features, the
halo a ``_shuffle_prepare`` asks for) are read off a dry run of the mixer's hooks on one token,
so a new mixer needs no entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from longmix.checks import check_int

from ..layout import check_layout, follows_documents, layout_documents
from .cost import FormCost
from .packed import packed_refusal
from .table import FORMS


@dataclass
class LayerPlan:
    name: str           # the mixer's path in the module ("" for a bare mixer)
    mixer: str          # registry name or class name
    form: str | None    # the chosen form; None when no form is feasible
    options: list[FormCost] = field(default_factory=list)

    def cost(self, form: str | None = None) -> FormCost:
        form = self.form if form is None else form
        return next(o for o in self.options if o.form == form)


@dataclass
class ModelPlan:
    seq_len: int | None
    world_size: int
    batch: int
    layers: list[LayerPlan]

    @property
    def forms(self) -> list[str | None]:
        return [layer.form for layer in self.layers]

    def forward_bytes(self) -> list[int]:
        """Predicted bytes each rank sends in one forward pass of all layers."""
        return self._bytes_per_rank("forward_bytes")

    def backward_bytes(self) -> list[int]:
        """Predicted bytes each rank sends in one backward pass of all layers."""
        return self._bytes_per_rank("backward_bytes")

    def _bytes_per_rank(self, which: str) -> list[int]:
        out = [0] * self.world_size
        for layer in self.layers:
            for r, n in enumerate(getattr(layer.cost(), which) or ()):
                out[r] += n
        return out


def mixer_layers(module) -> list[tuple[str, object]]:
    """(name, mixer) of every token mixer in ``module`` in order (the module itself if it is one)."""
    from longmix.mixers import TokenMixer

    if isinstance(module, TokenMixer):
        return [("", module)]
    return [(name, m) for name, m in module.named_modules() if isinstance(m, TokenMixer)]


def mixer_name(mixer) -> str:
    return getattr(type(mixer), "name", type(mixer).__name__)


def layer_options(mixer, seq_len, world, batch, dtype, layout, packed: bool = False,
                  documents=None) -> list[FormCost]:
    supported = mixer.parallel_forms
    options = []
    for form in FORMS.values():
        refusal = None
        if packed and form.name in supported:  # one process runs the mixer itself: any form
            refusal = packed_refusal(mixer, form.name) if world > 1 else mixer.packed_refusal()
        if form.name not in supported:
            options.append(FormCost(form.name, False, f"{mixer_name(mixer)} has no {form.name} form"))
        elif refusal is not None:
            options.append(FormCost(form.name, False, f"no packed documents (cu_seqlens): {refusal}"))
        else:
            options.append(form.cost(mixer, seq_len, world, batch, dtype, layout, documents))
    return options


def _timed(options: list[FormCost], mixer, seq_len, world, timing) -> list[FormCost]:
    """``options`` with each feasible form's predicted step time, where ``timing`` knows it."""
    if timing is None or seq_len is None:
        return options
    cost = mixer.taxonomy.time
    return [replace(o, step_seconds=timing.predict(mixer_name(mixer), o, cost, seq_len, world))
            if o.feasible else o for o in options]


def _choose(options: list[FormCost]) -> FormCost | None:
    """The feasible form predicted fastest when every feasible form has a predicted time (a
    calibrated ``StepTiming``), else the one sending the fewest bytes (the busiest rank's);
    unpredicted forms rank after predicted ones, in FORMS order (shuffle first: it runs the
    mixer's own kernel)."""
    feasible = [o for o in options if o.feasible]
    if not feasible:
        return None
    if all(o.step_seconds is not None for o in feasible):
        return min(feasible, key=lambda o: o.step_seconds)
    predicted = [o for o in feasible if o.forward_bytes is not None]
    if predicted:
        return min(predicted, key=lambda o: max(o.forward_bytes))

    return feasible[0]


def no_form_error(name: str, mixer, options: list[FormCost], world: int) -> ValueError:
    where = f"layer {name!r} ({mixer_name(mixer)})" if name else mixer_name(mixer)
    reasons = "; ".join(f"{o.form}: {o.reason}" for o in options)
    return ValueError(f"{where} has no exact sequence-parallel form on {world} ranks: {reasons}."
                      f"{_hint(options)}")


def _hint(options: list[FormCost]) -> str:
    if any(o.form == "shuffle" and o.reason.endswith("ranks") for o in options):
        return (" Use fewer ranks, more heads/channels, or the 'state' form where the mixer has "
                "one (state passing needs no group per rank).")
    return ""


def plan_model(module, seq_len: int | None, world_size: int, batch: int = 1, *,
               dtype: torch.dtype = torch.float32, layout: str = "contiguous",
               forms=None, packed: bool = False, cu_seqlens=None, timing=None) -> ModelPlan:
    """Pick a form per mixer layer of ``module`` and predict its bytes (and, with ``timing``, its
    step time).

    Args:
        seq_len: the global length L; None plans without byte predictions (first feasible form).
        forms: None (cheapest feasible per layer), one form name for every layer, or a list with
            one name (or None: choose) per layer. A forced form that cannot run raises.
        packed: only forms that run packed documents (``cu_seqlens``; ``forms.packed``).
        cu_seqlens: the packed documents to predict bytes for; needed with ``seq_len`` by a
            layout that follows documents (``doc_zigzag``: its rows per rank, and the state
            form's summaries, depend on them), ignored by the others.
        timing: a calibrated :class:`~longmix.parallel.forms.timing.StepTiming`: a layer whose
            feasible forms all have calibrated rates gets the form predicted fastest; others
            the fewest bytes.
    Raises ValueError naming the layer when a layer has no feasible (or no forced) form.
    """
    check_layout(layout)
    check_int("world_size", world_size)
    if follows_documents(layout) and not packed:
        raise ValueError(f"plan_model: layout {layout!r} places rows by packed documents: plan "
                         "with packed=True")
    documents = None
    if seq_len is not None:
        documents = layout_documents(layout, seq_len, cu_seqlens, "plan_model")
    layers = mixer_layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} holds no TokenMixer to parallelize")
    if forms is None or isinstance(forms, str):
        forced = [forms] * len(layers)
    else:
        forced = list(forms)
        if len(forced) != len(layers):
            raise ValueError(f"forms must name one form per mixer layer ({len(layers)}), got "
                             f"{len(forced)}: {forms!r}")
    plans = []
    for (name, mixer), want in zip(layers, forced):
        if want is not None and want not in FORMS:
            raise ValueError(f"forms: unknown form {want!r} for layer {name!r}; forms are {tuple(FORMS)}")
        options = _timed(layer_options(mixer, seq_len, world_size, batch, dtype, layout, packed,
                                       documents), mixer, seq_len, world_size, timing)
        if want is None:
            choice = _choose(options)
            if choice is None:
                raise no_form_error(name, mixer, options, world_size)
            form = choice.form
        else:
            cost = next(o for o in options if o.form == want)
            if not cost.feasible:
                where = f"layer {name!r} ({mixer_name(mixer)})" if name else mixer_name(mixer)
                raise ValueError(f"{where} cannot run the {want!r} form on {world_size} ranks: "
                                 f"{cost.reason}. Its forms: {mixer.parallel_forms}."
                                 f"{_hint([cost])}")
            form = want
        plans.append(LayerPlan(name=name, mixer=mixer_name(mixer), form=form, options=options))
    return ModelPlan(seq_len=seq_len, world_size=world_size, batch=batch, layers=plans)
