"""Will the job fit? Memory per rank predicted from the shard sizes, against what the machine has.

A request like ``--seq-len 17179869184`` must be refused before any rank allocates, with the
numbers, not discovered by the OOM killer minutes later.
"""
from __future__ import annotations

from longmix.dtypes import DTYPES
from longmix.machine import available_bytes  # noqa: F401  (read here, so tests can patch it)

#: What a rank holds besides its shard-sized tensors: the torch runtime and the job's code
#: (160-185 MiB resident at a rank's start here) and what the job adds that does not grow with L
#: (communication buffers, threads, the verification's chunks: ~65 MiB at L = 8,192, so about
#: 250 MiB in all); with a margin for other builds of torch.
RUNTIME_BYTES = 320 * 2**20
#: Freed temporaries smaller than glibc's dynamic mmap threshold (it rises to 32 MiB) go back to
#: the heap, not to the system, and stay resident. So the resident peak can exceed the live
#: tensors counted below; this factor covers that retention. The million-token default (bf16,
#: ring) peaked at 1.05x its count above the runtime, and a rerun at up to 1.25x;
#: benchmarks/attend_memory.py measures the ratio (results/attend_memory.md).
ALLOCATOR_SLACK = 1.25


#: What each strategy keeps alive at its peak (see :func:`_live_bytes_at_peak`); hybrid runs a
#: shuffle inside groups and a ring across them, so it is held to the larger of the two.
STRATEGY_PEAKS = {"ring": ("ring",), "shuffle": ("shuffle",), "hybrid": ("ring", "shuffle"),
                  "local": ("ring",)}


def _live_bytes_at_peak(*, strategy: str, rows: int, world: int, heads: int, kv_heads: int,
                        head_dim: int, elem: int, acc: int, batch: int) -> int:
    """The largest set of shard-sized tensors alive at once on one rank running ``strategy``
    (one process, "local", holds fewer than the ring: no messages in flight).

    With u = batch x rows x head_dim (one head's values on this rank), E the element size and
    A the accumulator's (float32, float64 for fp64):

    * ring: q, k, v; the K/V message being sent, the one being worked on and the one arriving
      (2 heads' worth each per K/V head); the kernel's partial output; the accumulator and,
      while merging partials, three more accumulator-sized temporaries:
      E (2H + 8Hk) u + 4 A H u, plus 2 E H u when GQA expands K/V for the kernel;
    * shuffle: q, k, v, and during the all-to-all four copies of what is exchanged (the
      per-destination pieces, the send buffer, the received buffer and the reassembled tensors):
      E (H + 2Hk) u + 4 E (H + 2Hk') u, with Hk' = Hk, or the world size when K/V heads are
      replicated (Hk < P).
    """
    u = batch * rows * head_dim
    ring = elem * (2 * heads + 8 * kv_heads) * u + 4 * acc * heads * u
    if kv_heads != heads:
        ring += 2 * elem * heads * u
    exchanged_kv = kv_heads if kv_heads % world == 0 else world
    shuffle = elem * (heads + 2 * kv_heads) * u + 4 * elem * (heads + 2 * exchanged_kv) * u
    return max({"ring": ring, "shuffle": shuffle}[name] for name in STRATEGY_PEAKS[strategy])


def predicted_bytes_per_rank(*, seq_len: int, world: int, heads: int, kv_heads: int,
                             head_dim: int, dtype: str, batch: int = 1,
                             strategies: tuple[str, ...] = ("ring", "shuffle")) -> int:
    """Peak resident bytes of one rank of the job: the runtime, plus the tensors alive at the
    peak times :data:`ALLOCATOR_SLACK`, for the most demanding of ``strategies`` (the ones the
    job may run). An upper estimate, checked by benchmarks/attend_memory.py."""
    import torch

    elem = torch.empty((), dtype=DTYPES[dtype]).element_size()
    acc = 8 if dtype == "fp64" else 4
    rows = -(-seq_len // world)  # the largest shard
    live = max(_live_bytes_at_peak(strategy=s, rows=rows, world=world, heads=heads,
                                   kv_heads=kv_heads, head_dim=head_dim, elem=elem, acc=acc,
                                   batch=batch) for s in strategies)
    return int(RUNTIME_BYTES + ALLOCATOR_SLACK * live)


def memory_error(*, seq_len: int, world: int, local_ranks: int, heads: int, kv_heads: int,
                 head_dim: int, dtype: str, batch: int = 1,
                 strategies: tuple[str, ...] = ("ring", "shuffle")) -> str | None:
    """Why the job cannot fit in this machine's memory (None when it can, or when unknown)."""
    per_rank = predicted_bytes_per_rank(seq_len=seq_len, world=world, heads=heads,
                                        kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                                        batch=batch, strategies=strategies)
    need = per_rank * local_ranks
    have, source = available_bytes()
    if have is None or need <= have:
        return None
    return (f"needs about {per_rank / 2**30:.3g} GiB per rank x {local_ranks} rank(s) on this "
            f"machine = {need / 2**30:.3g} GiB, but only {have / 2**30:.3g} GiB is available "
            f"({source}); use a smaller --seq-len, more ranks on more machines, or bf16")
