"""Cross-rank argument checks for :func:`longmix.parallel.attention`: one clear error, on every rank.

A distributed call with bad arguments on one rank usually *hangs*: that rank raises and the
others wait forever in a collective. Here every rank first checks its own arguments, then all
ranks all-gather a small metadata record (shapes, dtype, device, options and any local error
text) and run the same checks on the same gathered data. So every rank raises the same
``ValueError`` (naming the rank(s) and the argument) or none does, after exactly one collective.

What cannot be caught this way is a rank that never arrives (it died, or raised before calling
us): the others then wait in the all-gather until the process group's timeout. Pass
``timeout=`` to ``torch.distributed.init_process_group`` to bound that wait
(``longmix.parallel.launch.run_local`` does).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from longmix.checks import check_optional_int
from longmix.vocabulary import STRATEGIES

from ..documents import RECORD_FIELDS, agree_documents, documents_record, local_documents
from ..exchange import DTYPES, agree, dtype_code
from ..layout import (KNOWN_LAYOUTS, all_segments, follows_documents, missing_documents_error,
                      resolve_group)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what attention takes
_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta", "other")


def head_split_error(heads: int, kv_heads: int, parts: int) -> str | None:
    """Why ``heads`` query heads and ``kv_heads`` K/V heads cannot be split over ``parts`` ranks.

    The head-shuffle gives each of ``parts`` ranks ``heads/parts`` query heads, so ``parts`` must
    divide ``heads``. K/V heads are either split too (``parts`` divides ``kv_heads``) or, under
    GQA with fewer K/V heads than ranks (``kv_heads`` divides ``parts``), each rank receives the
    single K/V head its query heads share. Returns None when the split works.
    """
    if heads % parts:
        return f"heads={heads} must be divisible by {parts}"
    if kv_heads % parts and parts % kv_heads:
        return f"kv_heads={kv_heads} must divide or be divisible by {parts}"
    return None


@dataclass(frozen=True)
class Problem:
    """The validated, rank-consistent description of one distributed attention call."""

    seq_len: int
    world_size: int
    rank: int
    lengths: tuple[int, ...]  # local length per rank
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device_type: str
    #: packed documents: the bounds of ``cu_seqlens``, agreed by every rank, or None
    documents: tuple[int, ...] | None = None


def _code(value, options) -> int:
    return options.index(value) if value in options else -1


def _local_errors(q, k, v, *, causal, strategy, layout, scale, window, hybrid_size) -> list[str]:
    """Problems visible from this rank's arguments alone."""
    errors = []
    if strategy not in STRATEGIES:
        errors.append(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if layout not in KNOWN_LAYOUTS:
        errors.append(f"layout must be one of {KNOWN_LAYOUTS}, got {layout!r}")
    if not isinstance(causal, bool):
        errors.append(f"causal must be a bool, got {causal!r}")
    for name, value in (("window", window), ("hybrid_size", hybrid_size)):
        try:
            check_optional_int(name, value)
        except ValueError as error:  # collected, not raised: every rank must raise the same error
            errors.append(str(error))
    if hybrid_size is not None and strategy != "hybrid":
        errors.append(f"hybrid_size applies to strategy='hybrid' only, got strategy={strategy!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        errors.append(f"scale must be None or a positive finite number, got {scale!r}")
    tensors = {"q": q, "k": k, "v": v}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            errors.append(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        elif t.dim() != 4:
            errors.append(f"{name} must be 4-D (batch, local_len, heads, head_dim), "
                          f"got shape {tuple(t.shape)}")
        elif not t.is_floating_point():
            errors.append(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if errors:
        return errors
    shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in tensors.items())
    if len({t.dtype for t in tensors.values()}) > 1:
        errors.append(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if len({t.device for t in tensors.values()}) > 1:
        errors.append(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        errors.append(f"q, k, v must share the batch size (dim 0); got {shapes}")
    if not q.shape[1] == k.shape[1] == v.shape[1]:
        errors.append(f"q, k, v must hold the same local rows (dim 1); got {shapes}")
    if not q.shape[3] == k.shape[3] == v.shape[3]:
        errors.append(f"q, k, v must share head_dim (dim 3); got {shapes}")
    if k.shape[2] != v.shape[2]:
        errors.append(f"k and v must have the same number of heads (dim 2); got {shapes}")
    elif k.shape[2] == 0 or q.shape[2] % k.shape[2]:
        errors.append(f"kv_heads={k.shape[2]} must divide heads={q.shape[2]} "
                      f"(grouped-query attention); got {shapes}")
    if min(q.shape[0], q.shape[2], q.shape[3]) < 1:
        errors.append(f"q must have batch, heads and head_dim >= 1; got {shapes}")
    if q.dtype not in _DTYPES:
        errors.append(f"dtype must be one of {[str(d) for d in _DTYPES]}, got {q.dtype}")
    return errors


_FIELDS = ("batch", "local_len", "heads", "kv_heads", "head_dim", "dtype", "device", "strategy",
           "layout", "causal", "window", "hybrid_size", "scale")


def _record(q, k, v, *, causal, strategy, layout, scale, window, hybrid_size, errors) -> list[int]:
    if errors:
        return [-1] * len(_FIELDS)
    # the scale travels as the int64 with the same bits as its float64
    scale_bits = -1 if scale is None else struct.unpack("<q", struct.pack("<d", float(scale)))[0]
    return [q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3], dtype_code(q.dtype),
            _code(q.device.type if q.device.type in _DEVICES else "other", _DEVICES),
            _code(strategy, STRATEGIES), _code(layout, KNOWN_LAYOUTS), int(causal),
            -1 if window is None else window, -1 if hybrid_size is None else hybrid_size,
            scale_bits]


def _decode(name: str, value: int):
    if name == "dtype":
        return str(DTYPES[value]) if value >= 0 else "?"
    if name == "device":
        return _DEVICES[value] if value >= 0 else "?"
    if name == "strategy":
        return STRATEGIES[value] if value >= 0 else "?"
    if name == "layout":
        return KNOWN_LAYOUTS[value] if value >= 0 else "?"
    if name == "scale":
        return None if value == -1 else struct.unpack("<d", struct.pack("<q", value))[0]
    if name == "causal":
        return bool(value)
    if name in ("window", "hybrid_size"):
        return None if value == -1 else value
    return value


def validate(q, k, v, *, causal, group, strategy, layout, scale, window, hybrid_size,
             cu_seqlens=None) -> Problem:
    """Check the call's arguments on every rank of ``group``; raise the same ValueError everywhere.
    ``cu_seqlens`` (packed documents, global) is checked and agreed in the same all-gather.

    ``group=None`` means the default group; if torch.distributed is not initialized the call is
    treated as a single process (world size 1) and nothing is communicated.
    """
    opts = dict(causal=causal, strategy=strategy, layout=layout, scale=scale, window=window,
                hybrid_size=hybrid_size)
    errors = _local_errors(q, k, v, **opts)
    bounds, documents_error = local_documents(cu_seqlens, "longmix.parallel.attention")
    if documents_error:
        errors.append(documents_error)
    _, world, rank = resolve_group(group)
    records = agree(_record(q, k, v, errors=errors, **opts) + documents_record(cu_seqlens, bounds),
                    errors, group, "longmix.parallel.attention")
    documents = [rec[-RECORD_FIELDS:] for rec in records]
    records = [rec[:-RECORD_FIELDS] for rec in records]

    fields = [dict(zip(_FIELDS, rec)) for rec in records]
    for name in _FIELDS:
        if name == "local_len":
            continue
        values = [f[name] for f in fields]
        if len(set(values)) > 1:
            per_rank = ", ".join(f"rank {r}: {_decode(name, x)!r}" for r, x in enumerate(values))
            raise ValueError(f"longmix.parallel.attention: {name} must agree across ranks, got {per_rank}")

    lengths = [f["local_len"] for f in fields]
    seq_len = sum(lengths)
    layout_name = _decode("layout", fields[0]["layout"])
    if seq_len < 1:
        raise ValueError("longmix.parallel.attention: the sequence is empty (every rank has local_len 0)")
    f = fields[0]
    bounds = agree_documents(documents, bounds, seq_len=seq_len, batch=f["batch"],
                             owner="longmix.parallel.attention")
    if bounds is None and follows_documents(layout_name):
        raise missing_documents_error(layout_name, "longmix.parallel.attention")
    expected = [sum(n for _, n in member)
                for member in all_segments(seq_len, world, layout_name, cu_seqlens=bounds)]
    if lengths != expected:
        wrong = [r for r in range(world) if lengths[r] != expected[r]]
        raise ValueError(
            f"longmix.parallel.attention: shard lengths (dim 1) {lengths} do not match the "
            f"{layout_name!r} layout of a length-{seq_len} sequence over {world} ranks: expected "
            f"{expected}; rank(s) {wrong} differ. Use longmix.parallel.shard(x, layout={layout_name!r}"
            f"{', cu_seqlens=...' if bounds is not None else ''}).")
    return Problem(documents=bounds, seq_len=seq_len, world_size=world, rank=rank, lengths=tuple(lengths),
                   batch=f["batch"], heads=f["heads"], kv_heads=f["kv_heads"],
                   head_dim=f["head_dim"], dtype=DTYPES[f["dtype"]],
                   device_type=_DEVICES[f["device"]])


def check_strategy(strategy: str, problem: Problem, *, window, hybrid_size) -> None:
    """Raise a ValueError if ``strategy`` cannot run ``problem`` (same outcome on every rank)."""
    p, h, hk = problem.world_size, problem.heads, problem.kv_heads
    where = "longmix.parallel.attention"
    if strategy == "shuffle":
        why = head_split_error(h, hk, p)
        if why:
            raise ValueError(f"{where}: strategy='shuffle' splits heads over the {p} ranks: "
                             f"{why}. Use strategy='ring' (any head count) or 'hybrid' with a "
                             "smaller group.")
    elif strategy in ("ring", "hybrid"):
        if window is not None and strategy == "hybrid":
            raise ValueError(f"{where}: window={window} is supported by strategies 'shuffle' "
                             f"and 'ring' (a halo exchange), got strategy={strategy!r}")
        if strategy == "hybrid":
            if hybrid_size is None or p % hybrid_size:
                raise ValueError(f"{where}: hybrid_size must divide the world size {p}, "
                                 f"got {hybrid_size!r}")
            why = head_split_error(h, hk, hybrid_size)
            if why:
                raise ValueError(f"{where}: strategy='hybrid' splits heads over groups of "
                                 f"hybrid_size={hybrid_size} ranks: {why}. Pick a hybrid_size "
                                 f"that divides heads={h}, or strategy='ring'.")
