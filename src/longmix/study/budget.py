"""How long a study will take on this machine: time a few steps of every cell, then multiply.

The estimate is measured, not assumed: for every (task, mixer, context) of the grid it builds
the run's task and model, takes ``warm`` untimed and ``timed`` timed training steps (batch
generation, forward, backward, optimizer) and one timed evaluation batch, on one thread as the
grids train. Times are this process's CPU time, not wall time: on a machine shared with other
work they still say what the study costs one idle core. A run then costs
``steps x step + evaluations x eval_batches x eval_batch``, where the evaluations are every
``eval_every`` steps (validation) plus the final test.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import tasks
from ..models import SequenceModel
from ..train.loop import model_config
from ..train.loss import scored_targets, training_loss_sum
from ..train.optim import param_groups
from .grid import Grid


@dataclass
class Estimate:
    sweep_runs: int
    grid_runs: int  # grid runs still to train (those equal to a sweep run are not counted)
    sweep_s: float
    grid_s: float
    per_cell: dict  # (label, mixer, context) -> seconds per training step

    @property
    def total_s(self) -> float:
        return self.sweep_s + self.grid_s

    def lines(self, jobs: int = 1) -> list[str]:
        hours = self.total_s / 3600
        return [f"sweep: {self.sweep_runs} runs, ~{self.sweep_s / 60:.0f} min of one core",
                f"grid: {self.grid_runs} runs, ~{self.grid_s / 60:.0f} min of one core",
                f"total: ~{hours:.1f} h of one core; ~{hours / jobs:.1f} h wall with --jobs {jobs} "
                "(if the cores are otherwise idle)"]


def time_step(cfg, warm: int = 1, timed: int = 2) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluation batch) of ``cfg`` on this machine."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads or threads)
        task = tasks.build(cfg.task, seed=cfg.seed, **cfg.task_params)
        model = SequenceModel(model_config(cfg, task))
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
        last = None if cfg.train_last is None else min(cfg.train_last, cfg.context)

        def step(i):
            x, y = task.batch("train", i, cfg.batch_size, cfg.context)
            total, n = training_loss_sum(model, x, scored_targets(y, task.kind, task.pad_id, last=last),
                                         task.kind)
            opt.zero_grad()
            (total / max(n, 1)).backward()
            opt.step()

        for i in range(warm):
            step(i)
        t0 = time.process_time()
        for i in range(timed):
            step(warm + i)
        per_step = (time.process_time() - t0) / timed
        t0 = time.process_time()
        with torch.no_grad():
            x, _ = task.batch("valid", 0, cfg.batch_size, cfg.context)
            model(x)
        return per_step, time.process_time() - t0
    finally:
        torch.set_num_threads(threads)


def run_seconds(cfg, per_step: float, per_eval: float) -> float:
    evaluations = cfg.steps // cfg.eval_every + 1  # validation points + the final test
    return cfg.steps * per_step + evaluations * cfg.eval_batches * per_eval


def estimate(grid: Grid, log=None) -> Estimate:
    """Time every (task, mixer, context) of ``grid`` (a few seconds per cell) and estimate."""
    per_cell, sweep_s, grid_s, grid_runs = {}, 0.0, 0.0, 0
    sweep = grid.sweep_runs()
    for st, mixer in grid.cells():
        dim = grid.matched(st, mixer)["dim"]
        cand = grid.candidates(mixer)[0]
        for context in grid.contexts_of(st):
            cfg = grid.base_config(st, mixer, context, 0, dim=dim, **cand)
            per_step, per_eval = time_step(cfg)
            per_cell[(st.label, mixer, context)] = per_step
            seconds = run_seconds(cfg, per_step, per_eval)
            is_sweep_context = context == grid.contexts_of(st)[-1]
            n_grid = len(grid.seeds) - (1 if is_sweep_context else 0)  # seed 0 there reuses the sweep's run
            grid_s += n_grid * seconds
            grid_runs += n_grid
            if is_sweep_context:
                sweep_s += len(grid.candidates(mixer)) * seconds
            if log:
                log(f"  {st.label:14s} {mixer:8s} C={context:<5d} {per_step * 1e3:7.1f} ms/step, "
                    f"~{seconds:5.0f} s/run")
    return Estimate(sweep_runs=len(sweep), grid_runs=grid_runs, sweep_s=sweep_s, grid_s=grid_s,
                    per_cell=per_cell)
