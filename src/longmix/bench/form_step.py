"""One mixer layer in one sequence-parallel form on P local ranks: a measured step.

Shared by the benchmarks that time forms (``benchmarks/sequence_parallel.py``,
``benchmarks/planner_time.py``): the mixer is built the same way, the step is the same (forward,
or forward and backward), and the time, the peak memory per rank and the bytes sent against the
planner's prediction are measured the same way.
"""
from __future__ import annotations

import statistics
import time

MIXER_OPTIONS = {"linformer": {"proj_len": 64}, "mlpmixer": {"hidden": 64}}


def build_mixer(name: str, dim: int, heads: int, length: int, dtype):
    """The benchmarks' mixer: seeded, causal where it can be, sized options fixed."""
    import torch

    from longmix import mixers

    torch.manual_seed(0)
    cls = mixers.get_class(name)
    options = dict(MIXER_OPTIONS.get(name, {}))
    if cls.requires_max_len:
        options["max_len"] = length
    return mixers.build(name, dim, heads=heads, causal=cls.taxonomy.causal, **options).to(dtype).eval()


def rank_worker(group, spec: dict) -> dict:
    """One forward (with ``backward``: forward and backward) of one mixer in one form on this
    rank's rows; time, memory and bytes (sent by the forward; with ``backward``, both)."""
    import torch

    import longmix.parallel as ld
    from longmix.dtypes import DTYPES
    from longmix.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    dtype = DTYPES[spec["dtype"]]
    world = torch.distributed.get_world_size(group)
    rank = torch.distributed.get_rank(group)
    length = spec["length"]
    mixer = build_mixer(spec["mixer"], spec["dim"], spec["heads"], length, dtype)
    stats = ld.CommStats()
    pmixer = ld.parallelize(mixer, group, spec["layout"], forms=spec["form"], stats=stats)
    local = ld.local_length(length, world, rank, spec["layout"])
    x = torch.randn(spec["batch"], local, spec["dim"], dtype=dtype)  # only this rank's rows
    plan = ld.plan_model(mixer, length, world, spec["batch"], dtype=dtype, layout=spec["layout"],
                         forms=spec["form"])
    cost = plan.layers[0].cost()
    predicted = cost.forward_bytes
    if spec.get("backward") and predicted is not None:  # the backward's bytes come on top
        predicted = None if cost.backward_bytes is None else tuple(
            f + b for f, b in zip(predicted, cost.backward_bytes))
    # memory from the first forward at this length: later ones reuse pages the allocator kept,
    # which hides their peak from VmHWM. A short forward first pays the one-time costs (thread
    # pools, gloo's buffers: ~100 MB) that are not activations.
    backward = spec.get("backward", False)
    if backward:  # a training step's memory: the activations autograd keeps, then the gradients
        x.requires_grad_(True)

    def step(inputs):
        y = pmixer(inputs)
        if backward:
            y.float().sum().backward()
        return y

    times = []
    with torch.set_grad_enabled(backward):
        short = ld.local_length(64 * world, world, rank, spec["layout"])
        step(torch.randn(spec["batch"], short, spec["dim"], dtype=dtype, requires_grad=backward))
        mixer.zero_grad(set_to_none=True)
        before = current_rss_bytes()
        reset_peak_rss()
        for i in range(1 + spec["repeats"]):
            stats.bytes_sent = 0
            start = time.perf_counter()
            y = step(x)
            times.append(time.perf_counter() - start)
            if i == 0:
                peak, sent = peak_rss_bytes(), stats.bytes_sent
            del y
            x.grad = None
            if sum(times) > spec["quick_s"]:
                break
    return {"rank": rank, "time_s": statistics.median(times[1:] or times),
            "memory_mb": (peak - before) / 2 ** 20, "sent": sent,
            "predicted": None if predicted is None else predicted[rank],
            "threads": torch.get_num_threads()}


def forms_of(name: str, world: int, dim: int, heads: int) -> list[str]:
    """Forms the mixer can run on ``world`` ranks (``plan_model`` feasibility)."""
    import torch

    import longmix.parallel as ld

    mixer = build_mixer(name, dim, heads, 16, torch.float32)
    options = ld.plan_model(mixer, None, world).layers[0].options
    return [o.form for o in options if o.feasible]


def measure(spec: dict, world: int, timeout: float) -> dict:
    from longmix.parallel.launch import RankFailure, run_local

    row = {**spec, "world": world}
    try:
        ranks = run_local(rank_worker, world, (spec,), timeout=timeout,
                          collective_timeout=max(60.0, timeout))
    except RankFailure as exc:
        return {**row, "status": "failed", "error": exc.summary()}
    sent = max(r["sent"] for r in ranks)
    predicted = [r["predicted"] for r in ranks]
    return {**row, "status": "ok", "time_s": max(r["time_s"] for r in ranks),
            "memory_mb": max(r["memory_mb"] for r in ranks), "sent": sent,
            "predicted": None if None in predicted else max(predicted),
            "bytes_ratio": (None if None in predicted or not max(predicted) else
                            max(r["sent"] / p if p else 1.0 for r, p in zip(ranks, predicted))),
            "threads": ranks[0]["threads"]}


