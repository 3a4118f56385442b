"""Calibrate a :class:`StepTiming` on the ranks that will train, so the planner picks by time.

``calibrate_timing(model, group, lengths=[L])`` times one training step (forward and backward)
of each distinct mixer layer of ``model`` in each form it can run on ``group``, at each length,
and fits the planner's time model through those steps (:meth:`StepTiming.calibrate`), with the
group's link measured by :func:`~longmix.parallel.measure_rates`. Timed at the length to be
trained, a form's prediction there is its measured step; at other lengths the fitted line
extrapolates (calibrate near them: ``benchmarks/results/planner_time_calib_short.md``).

Collective: every rank of ``group`` calls it with the same model and lengths. Each step time is
the median of ``repeats`` after a warm-up, and the slowest rank's is kept (all-reduce MAX), so
the rates, and every plan built from them, are the same on every rank of the group (on a data x
seq grid each sequence group times its own ranks; rows that plan different forms still compute
the same, exact, model). The layers are timed on
copies (the model's gradients are untouched), on a forked random stream (the caller's is
untouched).
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import torch
import torch.distributed as dist

from longmix.checks import check_int

from ..attn.plan import measure_rates
from ..layout import check_layout, local_length, resolve_group
from .model_plan import mixer_layers, mixer_name, plan_model
from .timing import StepTiming


def calibrate_timing(module, group=None, lengths=(4096,), *, batch: int = 1,
                     layout: str = "contiguous", repeats: int = 3) -> StepTiming:
    """A :class:`StepTiming` for ``module``'s mixers on ``group``, from steps measured there.

    Args:
        module: a ``TokenMixer`` or ``SequenceModel``; each distinct mixer (by registry name) is
            timed once, on a copy of its first layer, where it has more than one feasible form.
        group: the process group the model will run on (None: the default group).
        lengths: global sequence lengths to time each form at (the training length, or a few
            around the lengths to be planned).
        batch: sequences per step, as in training.
        repeats: timed steps per (form, length); their median is kept.
    """
    lengths = list(lengths)
    if not lengths:
        raise ValueError("calibrate_timing: lengths must name at least one sequence length")
    for length in lengths:
        check_int("lengths", length)
    check_int("batch", batch)
    check_int("repeats", repeats)
    check_layout(layout)
    group, world, rank = resolve_group(group)
    # the link's matmul and the steps' inputs draw random numbers: not from the caller's stream
    with torch.random.fork_rng(devices=None if torch.cuda.is_initialized() else []):
        return _calibrate(module, group, world, rank, lengths, batch, layout, repeats)


def _calibrate(module, group, world, rank, lengths, batch, layout, repeats) -> StepTiming:
    rates = measure_rates(group) if world > 1 else None
    timing = StepTiming(bandwidth_bytes_per_s=rates.bandwidth_bytes_per_s if rates else float("inf"),
                        latency_s=rates.latency_s if rates else 0.0,
                        cores=os.cpu_count() or 1, threads=torch.get_num_threads())
    timed = set()
    for _, mixer in mixer_layers(module):
        name = mixer_name(mixer)
        if name in timed:
            continue
        timed.add(name)
        param = next(mixer.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        options = plan_model(mixer, max(lengths), world, batch, dtype=dtype, layout=layout).layers[0].options
        feasible = [o.form for o in options if o.feasible]
        if len(feasible) < 2:  # nothing to choose between: the planner takes the one form
            continue
        for form in feasible:
            points = []
            for length in lengths:
                cost = plan_model(mixer, length, world, batch, dtype=dtype, layout=layout,
                                  forms=form).layers[0].cost()
                seconds = _step_seconds(mixer, form, group, world, rank, length, batch, layout,
                                        dtype, repeats)
                points.append((cost, mixer.taxonomy.time, length, world, seconds))
            timing.calibrate(name, points)
    return timing


def _step_seconds(mixer, form, group, world, rank, length, batch, layout, dtype, repeats) -> float:
    """The slowest rank's median time of one forward and backward of ``mixer`` in ``form``."""
    from .parallelize import parallelize  # parallelize takes a timing: import it late

    layer = parallelize(copy.deepcopy(mixer), group, layout, forms=form)
    device = next(mixer.parameters(), torch.empty(0)).device
    rows = local_length(length, world, rank, layout)
    x = torch.randn(batch, rows, mixer.dim, dtype=dtype, device=device)
    x.requires_grad_(True)
    times = []
    for _ in range(1 + repeats):  # the first step warms up
        start = time.perf_counter()
        layer(x).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        x.grad = None
    seconds = statistics.median(times[1:])
    if world == 1:
        return seconds
    on = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    slowest = torch.tensor([seconds], dtype=torch.float64, device=on)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
    return float(slowest)
