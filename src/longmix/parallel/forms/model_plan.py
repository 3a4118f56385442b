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

from dataclasses import dataclass, field

import torch

from longmix.checks import check_int

from ..halo import halo_plan
from ..layout import all_segments, check_layout
from .regroup import group_split, regroup_elements

FORMS = ("shuffle", "state", "ring")


@dataclass(frozen=True)
class FormCost:
    """One form for one layer: feasible or why not, and bytes sent per rank (forward, backward)."""

    form: str
    feasible: bool
    reason: str = ""
    forward_bytes: tuple[int, ...] | None = None   # per rank; None: not predicted
    backward_bytes: tuple[int, ...] | None = None


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


class _Recorder:
    """A ``pieces`` stand-in that records the halos ``_shuffle_prepare`` asks for."""

    def __init__(self):
        self.halos: list[tuple[int, int]] = []  # (rows, features per row)

    def left_context(self, t, rows):
        from longmix.mixers.base import WholeSequence

        self.halos.append((rows, int(t[0, 0].numel())))
        return WholeSequence.left_context(t, rows)


@dataclass(frozen=True)
class StreamWidths:
    groups: int
    feats: int       # per group and row, into the all-to-all
    shared: int      # per row, to every rank
    feats_out: int   # per group and row, back
    halos: tuple[tuple[int, int], ...]  # (rows, features per row) fetched by prepare


def stream_widths(mixer) -> StreamWidths:
    """Widths of the shuffle's streams, by running the hooks on one token (no gradients)."""
    param = next(mixer.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    recorder = _Recorder()
    with torch.no_grad():
        x = torch.zeros(1, 1, mixer.dim, dtype=dtype, device=device)
        streams, shared, _ = mixer._shuffle_prepare(x, recorder)
        mixed = mixer._shuffle_mix(streams[:, :, :1], shared, slice(0, 1))
    return StreamWidths(groups=mixer.shuffle_groups(), feats=streams[0, 0, 0].numel(),
                        shared=0 if shared is None else shared.shape[-1],
                        feats_out=mixed[0, 0, 0].numel(), halos=tuple(recorder.halos))


def _element_size(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _accumulator_size(dtype) -> int:
    return 8 if dtype == torch.float64 else 4


def shuffle_cost(mixer, seq_len, world, batch, dtype, layout) -> FormCost:
    groups = mixer.shuffle_groups()
    if world > groups:
        return FormCost("shuffle", False,
                        f"the shuffle gives every rank at least one of its {groups} "
                        f"{'heads' if mixer_is_qkv(mixer) else 'channels'}, but there are {world} "
                        "ranks")
    if seq_len is None:
        return FormCost("shuffle", True)
    w = stream_widths(mixer)
    segs = all_segments(seq_len, world, layout)
    lengths = [sum(n for _, n in s) for s in segs]
    split = group_split(groups, world)
    size = _element_size(dtype)
    fwd, bwd = [], []
    for r in range(world):
        f, b = regroup_elements(lengths, split, r, batch, w.feats, w.shared, w.feats_out)
        halos = [(halo_plan(segs, r, rows), batch * width) for rows, width in w.halos]
        fwd.append((f + sum(h.rows_sent() * n for h, n in halos)) * size)
        bwd.append((b + sum(h.rows_received() * n for h, n in halos)) * size)
    return FormCost("shuffle", True, forward_bytes=tuple(fwd), backward_bytes=tuple(bwd))


def mixer_is_qkv(mixer) -> bool:
    from longmix.mixers.qkv import QKVMixer

    return isinstance(mixer, QKVMixer)


def ring_cost(mixer, seq_len, world, batch, dtype, layout) -> FormCost:
    if seq_len is None:
        return FormCost("ring", True)
    segs = all_segments(seq_len, world, layout)
    lengths = [sum(n for _, n in s) for s in segs]
    row = batch * mixer.heads * 2 * mixer.head_dim  # one row of K and V
    size, acc = _element_size(dtype), _accumulator_size(dtype)
    window = getattr(mixer, "window", None)
    fwd, bwd = [], []
    for r in range(world):
        if window is not None:  # the halo of window - 1 rows per side (left only when causal)
            halo = halo_plan(segs, r, window - 1, 0 if mixer.causal else window - 1)
            fwd.append(halo.rows_sent() * row * size)
            bwd.append(halo.rows_received() * row * size)  # the gradients of what arrived
            continue
        if world == 1:
            fwd.append(0)
            bwd.append(0)
            continue
        # step s sends the block that started on rank r - s (steps 0 .. P-2), if it has rows;
        # the backward sends the K/V blocks again and every block's dK/dV accumulator once
        kv = sum(lengths[(r - s) % world] for s in range(world - 1)) * row * size
        fwd.append(kv)
        bwd.append(kv + sum(lengths) * row * acc)
    return FormCost("ring", True, forward_bytes=tuple(fwd), backward_bytes=tuple(bwd))


def state_cost(mixer, seq_len, world, batch, dtype, layout) -> FormCost:
    try:
        from . import state_passing
    except ImportError:
        return FormCost("state", False, "longmix.parallel.forms.state_passing is not available")
    if seq_len is None:
        return FormCost("state", True)
    # the same on every rank, and independent of L; parallelize passes the agreed seq_len, so no
    # shape-check record travels
    sent = state_passing.state_passing_bytes(mixer, batch, world, layout, dtype=dtype,
                                             seq_len_known=True)
    back = state_passing.state_passing_backward_bytes(mixer, batch, world, layout, dtype=dtype)
    return FormCost("state", True, forward_bytes=(sent,) * world, backward_bytes=(back,) * world)


_COSTS = {"shuffle": shuffle_cost, "ring": ring_cost, "state": state_cost}


def layer_options(mixer, seq_len, world, batch, dtype, layout) -> list[FormCost]:
    supported = mixer.parallel_forms
    options = []
    for form in FORMS:
        if form not in supported:
            options.append(FormCost(form, False, f"{mixer_name(mixer)} has no {form} form"))
        else:
            options.append(_COSTS[form](mixer, seq_len, world, batch, dtype, layout))
    return options


def _choose(options: list[FormCost]) -> FormCost | None:
    """The feasible form sending the fewest bytes (the busiest rank's); unpredicted forms rank
    after predicted ones, in FORMS order (shuffle first: it runs the mixer's own kernel)."""
    feasible = [o for o in options if o.feasible]
    if not feasible:
        return None
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
               forms=None) -> ModelPlan:
    """Pick a form per mixer layer of ``module`` and predict its bytes.

    Args:
        seq_len: the global length L; None plans without byte predictions (first feasible form).
        forms: None (cheapest feasible per layer), one form name for every layer, or a list with
            one name (or None: choose) per layer. A forced form that cannot run raises.
    Raises ValueError naming the layer when a layer has no feasible (or no forced) form.
    """
    check_layout(layout)
    check_int("world_size", world_size)
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
            raise ValueError(f"forms: unknown form {want!r} for layer {name!r}; forms are {FORMS}")
        options = layer_options(mixer, seq_len, world_size, batch, dtype, layout)
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
