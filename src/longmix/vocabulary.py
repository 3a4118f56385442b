"""The names that longmix's command line, jobs, records and libraries share, defined once.

Kept free of torch so that building a command-line parser (`longmix --help`) stays fast: the
modules that use these names with torch (``longmix.dtypes``, ``longmix.parallel``) import them from here.
"""
from __future__ import annotations

#: Strategies of ``longmix.parallel.attention``.
STRATEGIES = ("auto", "shuffle", "ring", "hybrid")
#: Which rows of a sharded sequence each rank holds (``longmix.parallel.layout``).
LAYOUTS = ("contiguous", "zigzag")
#: Layouts that place rows by packed documents: they need ``cu_seqlens`` wherever a layout is
#: resolved (``shard``, ``unshard``, ``attention``, a parallelized forward), so the command line,
#: which packs nothing yet, offers only ``LAYOUTS``.
DOCUMENT_LAYOUTS = ("doc_zigzag",)

#: Sequence-parallel forms of whole mixers (``longmix.parallel.forms.table.FORMS`` has the rows).
FORMS = ("shuffle", "state", "ring")
#: How ``longmix train`` picks each layer's form when none is forced: by the bytes it sends, or
#: by its step time measured on the run's ranks (``longmix.parallel.forms.calibration``).
PLANS = ("bytes", "time")
#: The short dtype names of jobs, benchmarks and records.
DTYPE_NAMES = ("fp32", "bf16", "fp64")
#: Long spellings a user may type; mapped to the short names, never stored.
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float64": "fp64"}
