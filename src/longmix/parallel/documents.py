"""``cu_seqlens`` across ranks: every rank passes the same global document bounds (over the whole
packed sequence, also where it holds only its shard of x). The agreements that already gather a
small record from every rank before any data moves (``forms.shards.agree_on_shards``,
``attn.validate``, through ``exchange.agree``) carry two more integers from here: whether
``cu_seqlens`` was given, and a digest of it; a rank's local error travels with its other errors. So a bad ``cu_seqlens`` on one rank, or different ones on different ranks, raise
the same ValueError on every rank, and no rank waits in a collective the others skip.
"""
from __future__ import annotations

import hashlib

from longmix.ops.documents import check_cu_seqlens, check_ends_at

#: Integers a rank appends to its agreement record: given, digest.
RECORD_FIELDS = 2


def local_documents(cu_seqlens, owner: str) -> tuple[tuple[int, ...] | None, str]:
    """(bounds or None, error text or ""): the checks one rank can make before the ranks agree
    on the packed length."""
    if cu_seqlens is None:
        return None, ""
    try:
        return check_cu_seqlens(cu_seqlens, None, owner=owner), ""
    except ValueError as error:
        return None, str(error)


def documents_record(cu_seqlens, bounds: tuple[int, ...] | None) -> list[int]:
    """[given, digest] for the agreement record (digest: 62 bits of blake2b of the bounds)."""
    digest = 0
    if bounds is not None:
        digest = int.from_bytes(hashlib.blake2b(repr(bounds).encode(), digest_size=8).digest(),
                                "little") >> 2
    return [int(cu_seqlens is not None), digest]


def agree_documents(records: list[list[int]], bounds: tuple[int, ...] | None, *, seq_len: int,
                    batch: int, owner: str) -> tuple[int, ...] | None:
    """Given every rank's ``documents_record`` (in rank order), once the ranks agreed on the
    packed length and batch (and on no rank's local error): the same bounds on every rank, or the
    same ValueError on every rank."""
    given = [rec[0] for rec in records]
    if len(set(given)) > 1:
        raise ValueError(f"{owner}: cu_seqlens must be given on every rank or on none; given on "
                         f"ranks {[r for r, g in enumerate(given) if g]}, not on "
                         f"{[r for r, g in enumerate(given) if not g]}")
    if not given[0]:
        return None
    digests = [rec[1] for rec in records]
    if len(set(digests)) > 1:
        groups: dict[int, list[int]] = {}
        for r, d in enumerate(digests):
            groups.setdefault(d, []).append(r)
        raise ValueError(f"{owner}: cu_seqlens must be the same global tensor on every rank; ranks "
                         f"{' vs '.join(str(g) for g in groups.values())} passed different ones")
    check_ends_at(bounds, seq_len, batch=batch, owner=owner)
    return bounds
