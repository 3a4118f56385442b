"""Data x sequence parallelism: a 2-D grid of ranks, rows of sequence-parallel ranks.

Rank ``r`` of a run of ``data * seq`` ranks sits at ``(r // seq, r % seq)``: the ``seq`` ranks of
a row split the same sequences (their group is what ``parallelize`` takes); the ``data`` rows read
different parts of the batch. This is ``DeviceMesh(..., mesh_dim_names=("data", "seq"))``'s
row-major order, so a user's mesh and :func:`data_seq_groups` agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from longmix.checks import check_int

from .layout import resolve_group

#: The name of the sequence dimension of a ``DeviceMesh`` given to ``parallelize``.
SEQ_DIM = "seq"


def seq_group(group=None, mesh=None):
    """The group that splits each sequence: ``group``, or the ``"seq"`` dimension of ``mesh``."""
    if mesh is None:
        return group
    if group is not None:
        raise ValueError("parallelize: pass group or mesh, not both")
    names = getattr(mesh, "mesh_dim_names", None)
    if not names or SEQ_DIM not in names:
        raise ValueError(f"parallelize: mesh must be a DeviceMesh with a {SEQ_DIM!r} dimension "
                         f"(mesh_dim_names=('data', 'seq')), got mesh_dim_names={names!r}")
    return mesh.get_group(SEQ_DIM)


@dataclass(frozen=True)
class MeshGroups:
    """This rank's place in a data x seq grid, and the groups of its row and its column."""

    data: int           # rows: parts of the batch
    seq: int            # ranks per row: parts of each sequence
    data_rank: int
    seq_rank: int
    seq_group: object   # this rank's row (None with one process)
    data_group: object  # this rank's column: the ranks holding the same rows of other batch parts


def data_seq_groups(group, seq: int) -> MeshGroups:
    """Split the ranks of ``group`` into ``world // seq`` rows of ``seq`` sequence-parallel ranks.

    Every rank of ``group`` must call this with the same ``seq`` (new groups are collective)."""
    group, world, rank = resolve_group(group)
    check_int("seq_parallel", seq)
    if world % seq:
        raise ValueError(f"seq_parallel={seq} must divide the number of ranks ({world}): the "
                         f"ranks form a data x seq grid")
    data = world // seq
    if group is None:
        return MeshGroups(1, 1, 0, 0, None, None)
    if data == 1:
        return MeshGroups(1, seq, 0, rank, group, None)
    members = dist.get_process_group_ranks(group)  # global ranks, in group order
    rows = [dist.new_group([members[d * seq + s] for s in range(seq)]) for d in range(data)]
    cols = [dist.new_group([members[d * seq + s] for d in range(data)]) for s in range(seq)]
    return MeshGroups(data, seq, rank // seq, rank % seq, rows[rank // seq], cols[rank % seq])
