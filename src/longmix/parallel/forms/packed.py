"""Packed documents (``cu_seqlens``, agreed in ``Shards.documents``) in the parallel forms.

No token may read, or carry state across, a document boundary; the result must equal each
document run alone. Generic for every mixer, through the hooks it already has:

* shuffle: after the all-to-all a rank holds whole sequences of its groups, so ``_shuffle_mix``
  runs once per document (a mixer whose ``_shuffle_prepare`` reads left context across rows,
  a short convolution's halo, is refused: that halo is not cut here);
* state: a chunk's summary is the summary of its part after its last document start, computed
  from a fresh state, and the fold restarts from a fresh state there (the flag needs no wire:
  every rank knows the global bounds); the incoming state applies up to the chunk's first
  boundary, every later document of the chunk starts fresh. Summaries keep their size.
* ring: the block plan cuts every segment at document starts and pairs only pieces of one
  document (``attn.ring``), so blocks a boundary fully masks are never computed.
"""
from __future__ import annotations

import torch

from longmix.ops.documents import by_documents, cuts_within


def packed_refusal(mixer, form: str) -> str | None:
    """Why ``mixer`` cannot run packed documents in ``form``, or None."""
    reason = mixer.packed_refusal()
    if reason is not None:
        return reason
    if form == "shuffle":
        from .shuffle_form import stream_widths

        if stream_widths(mixer).halos:
            return ("its _shuffle_prepare reads left context (a short convolution's halo) from "
                    "the rows before each shard, which the shuffle form does not cut at document "
                    "boundaries")
    if form == "ring" and getattr(mixer, "window", None) is not None:
        return ("a sliding window moves only a halo, which the ring form does not cut at "
                "document boundaries")
    return None


def check_packed_form(mixer, form: str, where: str) -> None:
    """Raise the ValueError of :func:`packed_refusal` (the same on every rank: it reads only the
    mixer and the form)."""
    reason = packed_refusal(mixer, form)
    if reason is not None:
        raise ValueError(f"{where} ({type(mixer).__name__}): cu_seqlens (packed documents) is not "
                         f"supported in the {form!r} form: {reason}. Plan the layers with "
                         "parallelize(..., packed=True), which picks a form that supports it")


# -- shuffle ---------------------------------------------------------------------------------------
def shuffle_mix(mixer, streams, shared, groups: slice, documents):
    """``_shuffle_mix`` over the whole sequence, once per document when ``documents`` is set."""
    if documents is None:
        return mixer._shuffle_mix(streams, shared, groups)
    return by_documents(lambda s, sh: mixer._shuffle_mix(s, sh, groups), documents, streams, shared)


# -- state passing ---------------------------------------------------------------------------------
def starts_fresh(documents, start: int, stop: int) -> bool:
    """Does a document start in the rows [start, stop) (so nothing before them reaches past it)?"""
    return documents is not None and bool(cuts_within(documents, start - 1, stop))


def after_last_start(piece: torch.Tensor, start: int, documents) -> torch.Tensor:
    """The rows of ``piece`` (global rows start ..) from its last document start on (all of
    them when none starts inside)."""
    if documents is None:
        return piece
    cuts = cuts_within(documents, start - 1, start + piece.shape[1])
    return piece[:, cuts[-1] - start:] if cuts else piece


def continue_by_documents(mixer, piece: torch.Tensor, state: dict, start: int, documents,
                          fresh) -> torch.Tensor:
    """``forward_with_state`` of ``piece`` (global rows start ..): ``state`` up to the first
    document start inside it, a ``fresh()`` state for every document from there."""
    if documents is None:
        return mixer.forward_with_state(piece, state)[0]
    stop = start + piece.shape[1]
    cuts = cuts_within(documents, start - 1, stop)
    edges = [start] + [c for c in cuts if c > start] + [stop]
    outs = []
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        begin_fresh = i > 0 or (cuts and cuts[0] == start)
        outs.append(mixer.forward_with_state(piece[:, a - start:b - start],
                                             fresh() if begin_fresh else state)[0])
    return torch.cat(outs, 1)
