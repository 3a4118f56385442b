"""`longmix attend`, the main job: exact causal attention over a million tokens on several ranks,
fast on the machine it runs on, verified against float64.

Modules, one concern each:
    workload    the problem (:class:`AttendConfig`) and its regenerable random data
    calibrate   a few seconds of kernel and link measurement; the dtype choice; the cache
    resources   memory per rank predicted, against what the machine has
    verify      which rows, the float64 reference, the tolerance, the verdict
    job         the job on each rank, progress, and the launchers (local ranks, torchrun)
    report      what is printed
"""
from .job import attend_rank, run_local_job, run_torchrun_job
from .report import format_report
from .workload import AttendConfig

__all__ = ["AttendConfig", "attend_rank", "run_local_job", "run_torchrun_job", "format_report"]
