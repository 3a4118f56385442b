"""The main job's steps, in one place, for both launchers (local ranks, or torchrun's group).

    report = run_job(AttendConfig(seq_len=2**14, heads=2), procs=2)
    print(format_report(report)); report["passed"]

1. refuse a strategy the world size cannot run;
2. refuse what cannot fit in memory, at the cheapest dtype the request allows (bf16 for "auto"),
   before spending anything;
3. calibrate: kernel rates per dtype and the link (cached per machine on local ranks; measured
   on torchrun's group, whose ranks may span machines);
4. choose the dtype (:func:`longmix.attend.calibrate.choose_dtype`);
5. check memory again at the chosen dtype (calibration may pick fp32, twice bf16's bytes);
6. run the job on every rank (:func:`longmix.attend.job.attend_rank`).

On torchrun every rank takes these steps inside the group and the refusals are agreed (any
rank's reason stops all of them), so no rank waits on a peer that refused.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from .config import DEFAULT_PROCS, AttendConfig


class Refused(ValueError):
    """The job was refused before any attention ran; ``argument`` names the flag at fault."""

    def __init__(self, argument: str, reason: str):
        super().__init__(f"{argument}: {reason}")
        self.argument, self.reason = argument, reason


def _dtypes_to_measure(requested: str) -> tuple[str, ...]:
    return ("fp32", "bf16") if requested == "auto" else (requested,)


def _memory_reason(cfg: AttendConfig, dtype: str, world: int, local_ranks: int) -> str | None:
    from .job import possible_strategies
    from .resources import memory_error

    why = memory_error(seq_len=cfg.seq_len, world=world, local_ranks=local_ranks,
                       heads=cfg.heads, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                       dtype=dtype, batch=cfg.batch, strategies=possible_strategies(cfg, world))
    return None if why is None else f"L={cfg.seq_len:,} in {dtype} {why}"


def settle(cfg: AttendConfig, world: int, local_ranks: int, *,
           calibrate: Callable[[tuple[str, ...]], dict],
           agree: Callable[[str | None], str | None] = lambda why: why,
           ) -> tuple[AttendConfig, dict, str]:
    """Steps 1-5: return ``(cfg with its dtype resolved, calibration, why that dtype)``.

    ``calibrate(dtypes)`` measures (or loads) the calibration; ``agree(reason)`` turns this
    process's refusal reason into the one every rank acts on (the identity for local ranks,
    whose checks run once, in the parent). Raises :class:`Refused`.
    """
    from .calibrate import choose_dtype
    from .job import strategy_error

    why = agree(strategy_error(cfg, world))
    if why:
        raise Refused("--strategy", why)
    cheapest = "bf16" if cfg.dtype == "auto" else cfg.dtype  # bf16 halves what fp32 needs
    why = agree(_memory_reason(cfg, cheapest, world, local_ranks))
    if why:
        raise Refused("--seq-len", why)
    calibration = calibrate(_dtypes_to_measure(cfg.dtype))
    dtype, reason = choose_dtype(cfg.dtype, calibration["rates"])
    cfg = dataclasses.replace(cfg, dtype=dtype)
    if dtype != cheapest:
        why = agree(_memory_reason(cfg, dtype, world, local_ranks))
        if why:
            raise Refused("--seq-len", why)
    return cfg, calibration, reason


def run_job(cfg: AttendConfig, *, procs: int | None = None, progress: bool = True,
            recalibrate: bool = False) -> dict:
    """Run `longmix attend`'s job: on ``procs`` local gloo ranks (default
    :data:`~longmix.attend.config.DEFAULT_PROCS`), or, in a process torchrun started, on
    torchrun's group (then ``procs``, if given, must equal its world size). Returns the report
    (on every torchrun rank). Raises :class:`Refused` before any work it can predict will fail,
    and :class:`longmix.parallel.launch.RankFailure` when a local rank fails.
    """
    from longmix.parallel.launch import torchrun_world_size

    if cfg.device == "cuda":
        from .cuda import cuda_refusal, run_cuda_job

        refusal = cuda_refusal(cfg, procs)
        if refusal:
            raise Refused(*refusal)
        return run_cuda_job(cfg, progress)
    try:
        torchrun_world = torchrun_world_size(procs)
    except ValueError as err:
        raise Refused("--procs", str(err)) from None
    if torchrun_world is not None:
        return _run_torchrun(cfg, torchrun_world, progress)
    return _run_local(cfg, procs or DEFAULT_PROCS, progress, recalibrate)


def _run_local(cfg: AttendConfig, procs: int, progress: bool, recalibrate: bool) -> dict:
    from . import job

    def calibrate(dtypes):
        return job.local_calibration(procs, heads=cfg.heads, kv_heads=cfg.kv_heads,
                                     head_dim=cfg.head_dim, dtypes=dtypes,
                                     recalibrate=recalibrate)

    cfg, calibration, reason = settle(cfg, procs, procs, calibrate=calibrate)
    return job.run_local_job(cfg, procs=procs, progress=progress, calibration=calibration,
                             dtype_reason=reason)


def _run_torchrun(cfg: AttendConfig, world: int, progress: bool) -> dict:
    from longmix.parallel.launch import torchrun_group

    from . import job

    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    with torchrun_group(cfg.timeout) as group:  # gloo: the job's tensors live on the CPU
        def calibrate(dtypes):
            from .calibrate import calibrate_rank

            return {**calibrate_rank(group, cfg.heads, cfg.kv_heads, cfg.head_dim, dtypes),
                    "cached": False}

        cfg, calibration, reason = settle(cfg, world, local_ranks, calibrate=calibrate,
                                          agree=lambda why: _agree(why, group))
        report = job.attend_rank(group, cfg, progress, calibration, reason)
    report["launch"] = (f"torchrun, {world} rank(s) "
                        f"({os.environ.get('LOCAL_WORLD_SIZE', '?')} on this node), gloo")
    return report


def _agree(reason: str | None, group) -> str | None:
    """The first refusal reason any rank of ``group`` has (None when none has); collective."""
    import torch.distributed as dist

    reasons = [None] * dist.get_world_size(group)
    dist.all_gather_object(reasons, reason, group=group)
    return next((why for why in reasons if why), None)
