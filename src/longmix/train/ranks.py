"""The processes of one training run, and the few collectives training needs.

A run on P ranks is one run: every rank builds the same model from the same seed, reads the
same batch (batches are indexed by step), and keeps its share of each sequence (``shard``).
Gradients are summed over the ranks, so every rank takes the same optimizer step and the
weights never drift apart. Only rank 0 touches the run folder (lock, checkpoint, results), and
whatever it finds or fails at is broadcast, so every rank returns the same record or raises the
same error -- a rank never waits forever on a peer that gave up.

With one process (``group=None`` and torch.distributed not initialized) every collective here
is a no-op, so the single-process loop is the same code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ..parallel.layout import resolve_group, shard
from ..parallel.mesh import MeshGroups, data_seq_groups
from .errors import TrainingDiverged

T = TypeVar("T")


def error_types() -> dict[str, type[ValueError]]:
    """The errors a run may end with, by name, so that each rank raises the same type."""
    from ..fileio import FolderBusy
    from .checkpoint import CheckpointError

    return {cls.__name__: cls for cls in (ValueError, CheckpointError, FolderBusy, TrainingDiverged)}


def rebuild_error(name: str, message: str) -> ValueError:
    """The error ``name`` (see :func:`error_types`) with ``message``; a ValueError if unknown."""
    return error_types().get(name, ValueError)(message)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` in ``group`` (None: one process).

    With a data x seq ``grid``, the ranks of a row split each sequence and the rows read
    different parts of the batch; losses and gradients are still summed over all of ``group``."""

    group: object | None
    world: int
    rank: int
    layout: str = "contiguous"
    grid: MeshGroups | None = None  # None: every rank splits the sequence

    @classmethod
    def single(cls) -> "Ranks":
        """One process, whatever torch.distributed holds."""
        return cls(None, 1, 0)

    @classmethod
    def of(cls, group=None, layout: str = "contiguous", seq_parallel: int | None = None) -> "Ranks":
        group, world, rank = resolve_group(group)
        grid = None
        if seq_parallel is not None and seq_parallel != world:
            grid = data_seq_groups(group, seq_parallel)
        return cls(group, world, rank, layout, grid)

    @property
    def seq_group(self):
        """The ranks splitting this rank's sequences."""
        return self.group if self.grid is None else self.grid.seq_group

    @property
    def seq_world(self) -> int:
        return self.world if self.grid is None else self.grid.seq

    @property
    def data_world(self) -> int:
        return 1 if self.grid is None else self.grid.data

    @property
    def mesh(self) -> list[int]:
        """[data, seq]: the grid's shape, as records carry it."""
        return [self.data_world, self.seq_world]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- agreement: the same result or the same error on every rank -------------------------
    def _gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def everywhere(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raised a ValueError on any rank, raise that rank's
        error (the lowest such rank's) on every rank."""
        try:
            result, failure = fn(), None
        except ValueError as err:
            result, failure = None, (type(err).__name__, str(err))
        failures = [f for f in self._gather(failure) if f is not None]
        if failures:
            raise rebuild_error(*failures[0])
        return result

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and return its result on every rank (it must pickle); its
        ValueError is raised on every rank. The other ranks wait for it: a barrier."""
        outcome = [None]
        if self.is_main:
            try:
                outcome = [("ok", fn())]
            except ValueError as err:
                outcome = [(type(err).__name__, str(err))]
        if self.world > 1:
            dist.broadcast_object_list(outcome, src=0, group=self.group)
        status, payload = outcome[0]
        if status != "ok":
            raise rebuild_error(status, payload)
        return payload

    # -- data and numbers ---------------------------------------------------------------------
    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's part of x along dim 1 (the sequence)."""
        return x if self.seq_world == 1 else shard(x, self.seq_group, layout=self.layout)

    def batch_part(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's row's part of a batch x (batch, ...): contiguous, equal parts."""
        if self.grid is None:
            return x
        size = x.shape[0] // self.grid.data
        return x[self.grid.data_rank * size:(self.grid.data_rank + 1) * size]

    def sum_over_batch_parts(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over the rows of a value every rank of a row holds alike (a classifier's loss
        of its part of the batch), float64."""
        total = values.detach().to(torch.float64).clone()
        if self.grid is not None:
            dist.all_reduce(total, group=self.grid.data_group)
        return total

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a float tensor (float64: counts and losses stay exact)."""
        total = values.detach().to(torch.float64).clone()
        if self.world > 1:
            dist.all_reduce(total, group=self.group)
        return total

    def check_same(self, x: torch.Tensor, what: str) -> None:
        """ValueError on every rank unless ``x`` is bit-identical on all of them (e.g. a task whose
        batches depend on a per-process random state would silently train on mixed data)."""
        if self.world == 1:
            return
        digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        digests = self._gather(digest)
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise ValueError(f"{what} differs across ranks (ranks {differ} disagree with rank 0); "
                             f"every rank must read the same batch")

    # -- parameters and gradients -------------------------------------------------------------
    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (as DDP does at start)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0, group=self.group)

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Each rank's gradients are its share: sum them, so every rank holds the full gradient.

        A parameter no rank used keeps ``grad=None`` (as in one process, where the optimizer then
        skips it); one that only some ranks used gets zeros on the others before the sum."""
        if self.world == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
        dist.all_reduce(used, op=dist.ReduceOp.MAX, group=self.group)
        params = [p for p, u in zip(params, used.tolist()) if u]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for dtype in sorted({p.grad.dtype for p in params}, key=str):  # one flat all-reduce per dtype
            same = [p for p in params if p.grad.dtype == dtype]
            flat = torch.cat([p.grad.reshape(-1) for p in same])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for p in same:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
