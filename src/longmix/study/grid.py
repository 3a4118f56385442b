"""Study grids: which (task x mixer x context x seed) runs to train, and how.

A grid is data: a list of :class:`StudyTask` (a registry task plus parameters, under a label),
mixer names, context lengths, seeds, shared training settings and a validation sweep. A study
has two phases:

1. **Sweep** (:meth:`Grid.sweep_runs`): for every (task, mixer) cell, one run per learning rate
   of ``lrs`` (and, for attention-like mixers, per positional scheme of ``positionals``), at the
   task's longest context, seed 0. :func:`choose` picks, per cell, the candidate with the best
   metric on the VALIDATION split; test never takes part in a choice.
2. **Grid** (:meth:`Grid.runs`): every context and seed with the cell's chosen settings.

Within a task every mixer gets the reference mixer's parameter count (+-10%, by width; see
:mod:`longmix.study.matching`).

Classification runs read the prediction from the LAST position (``pool="last"``), where the
question is. Mean pooling would itself mix every position with every other, so a model could
answer passkey without any long-range token mixing; reading one position makes the mixer carry
the information there, which is what the study measures. Language tasks train and score the
same last ``train_last = eval_last`` positions at every context (see ``TrainConfig.train_last``),
so a longer context adds history, never targets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import mixers, tasks
from ..checks import check_int
from ..train import TrainConfig
from .matching import matched_dim, parameter_count

#: Families whose mixers are order-blind without positions: the sweep tries each scheme listed.
POSITIONAL_FAMILIES = ("attention", "kernel", "sparse", "lowrank")


@dataclass(frozen=True)
class StudyTask:
    """A task of the study: registry ``task`` with ``params``, reported under ``label``.

    ``expect``: what the study's hypothesis says context should do here, "rises" (the answer
    depends on distant tokens), "flat" (local information suffices) or "jump" (a control whose
    answer lies at a known distance: accuracy should jump where the context crosses it).
    """

    label: str
    task: str
    params: dict = field(default_factory=dict)
    expect: str = "rises"
    note: str = ""
    train: dict = field(default_factory=dict)  # per-task TrainConfig overrides
    max_context: int | None = None  # skip longer contexts (all padding beyond the examples' length)
    jump_at: int | None = None  # "jump" tasks: the context from which the answer is visible


@dataclass(frozen=True)
class Run:
    """One run of a study: its id (also its directory name under ``runs/``), label, config and
    phase ("sweep" or "grid")."""

    run_id: str
    label: str
    config: TrainConfig
    phase: str = "grid"


@dataclass
class Grid:
    name: str
    tasks: list[StudyTask]
    mixers: list[str]
    contexts: list[int]
    seeds: list[int]
    train: dict = field(default_factory=dict)  # TrainConfig overrides shared by every run
    mixer_options: dict = field(default_factory=dict)  # mixer name -> constructor options
    lrs: list[float] = field(default_factory=lambda: [1e-3])  # the validation sweep's learning rates
    positionals: list[str] = field(default_factory=lambda: ["sinusoidal"])  # swept for POSITIONAL_FAMILIES
    reference: str | None = None  # the mixer whose parameter count the others match; None: no matching
    #: Steps per run of the tasks (by label) that need another budget than ``train["steps"]``.
    task_steps: dict = field(default_factory=dict)

    def select(self, tasks_: list[str] | None = None, mixers_: list[str] | None = None,
               contexts: list[int] | None = None, seeds: int | None = None) -> "Grid":
        """A copy restricted or extended: ``tasks_`` by label (or plain registry task names),
        any registered ``mixers_``, any ``contexts``, seeds ``0 .. seeds-1``."""
        grid = replace(self)
        if tasks_:
            by_label = {t.label: t for t in self.tasks}
            chosen = []
            for name in tasks_:
                if name in by_label:
                    chosen.append(by_label[name])
                elif name in tasks.available():
                    chosen.append(StudyTask(label=name, task=name, expect="rises" if tasks.get_class(name)
                                            .long_range else "flat"))
                else:
                    raise ValueError(f"--tasks: unknown task {name!r}; grid {self.name!r} has "
                                     f"{sorted(by_label)}, the registry has {tasks.available()}")
            grid.tasks = chosen
        if mixers_:
            for name in mixers_:
                mixers.get_class(name)  # ValueError listing the valid names
            grid.mixers = list(mixers_)
            if grid.reference not in grid.mixers:
                grid.reference = grid.mixers[0] if self.reference is not None else None
        if contexts:
            grid.contexts = sorted({check_int("--contexts", c) for c in contexts})
        if seeds is not None:
            grid.seeds = list(range(check_int("--seeds", seeds)))
        return grid

    def compatible(self, study_task: StudyTask, mixer: str) -> str | None:
        """None if ``mixer`` can run ``study_task``; otherwise the reason it is skipped."""
        kind = tasks.get_class(study_task.task).kind
        if kind == "lm" and not mixers.get_class(mixer).taxonomy.causal:
            return f"{mixer} cannot run causally, which language modeling needs"
        return None

    def contexts_of(self, st: StudyTask) -> list[int]:
        return [c for c in self.contexts if st.max_context is None or c <= st.max_context]

    def cells(self) -> list[tuple[StudyTask, str]]:
        """Every (task, mixer) pair that runs, tasks outermost."""
        return [(st, m) for st in self.tasks for m in self.mixers
                if not self.compatible(st, m) and self.contexts_of(st)]

    def task_train(self, st: StudyTask) -> dict:
        """The settings in which task ``st``'s runs differ from ``train``: its own, and its steps."""
        steps = {"steps": self.task_steps[st.label]} if st.label in self.task_steps else {}
        return {**st.train, **steps}

    def base_config(self, st: StudyTask, mixer: str, context: int, seed: int, **overrides) -> TrainConfig:
        """The run's config before matching: grid, task and ``overrides`` settings, in that order."""
        return TrainConfig(task=st.task, mixer=mixer, context=context, seed=seed, task_params=dict(st.params),
                           mixer_options=dict(self.mixer_options.get(mixer, {})),
                           **{**self.train, **self.task_train(st), **overrides})

    def with_steps(self, steps: int) -> "Grid":
        """A copy whose every run trains ``steps`` steps (warmup, evaluations and checkpoints
        capped to fit), e.g. a smoke test."""
        check_int("--steps", steps)
        train = self.train
        return replace(self, task_steps={}, train={
            **train, "steps": steps, "warmup": min(train.get("warmup") or 0, steps),
            "eval_every": min(train.get("eval_every", 100), steps),
            "checkpoint_every": min(train.get("checkpoint_every", 50), steps)})

    def matched(self, st: StudyTask, mixer: str) -> dict:
        """``{"dim": ..., "parameters": ..., "reference": ...}`` of the cell (at the task's
        longest context); the grid's width when the grid matches nothing."""
        longest = self.contexts_of(st)[-1]
        cfg = self.base_config(st, mixer, longest, 0)
        if self.reference is None or self.compatible(st, self.reference):
            return {"dim": cfg.dim, "parameters": parameter_count(cfg), "reference": None}
        target = parameter_count(self.base_config(st, self.reference, longest, 0))
        dim = cfg.dim if mixer == self.reference else matched_dim(cfg, target)[0]
        return {"dim": dim, "parameters": parameter_count(replace(cfg, dim=dim)), "reference": target}

    def candidates(self, mixer: str) -> list[dict]:
        """The sweep's settings for ``mixer``: every lr, times every positional scheme for the
        families that need positions."""
        family = mixers.get_class(mixer).taxonomy.family
        positionals = self.positionals if family in POSITIONAL_FAMILIES else ["auto"]
        return [{"lr": lr, "positional": pos} for pos in positionals for lr in self.lrs]

    def sweep_runs(self) -> list[Run]:
        """Phase 1: each cell's candidates at its task's longest context, seed 0."""
        out = []
        for st, mixer in self.cells():
            dim = self.matched(st, mixer)["dim"]
            for cand in self.candidates(mixer):
                cfg = self.base_config(st, mixer, self.contexts_of(st)[-1], 0, dim=dim, **cand)
                run_id = (f"sweep--{_slug(st.label)}--{mixer}--lr{cand['lr']:g}--{cand['positional']}--"
                          f"{cfg.run_id()[:6]}")
                out.append(Run(run_id=run_id, label=st.label, config=cfg, phase="sweep"))
        return out

    def runs(self, choices: dict | None = None) -> list[Run]:
        """Phase 2: every context and seed of every cell with its ``choices[(label, mixer)]``
        settings (from :func:`choose`); a cell without a choice is left out (its sweep has not
        finished). Tasks outermost, then mixers, contexts and seeds."""
        out = []
        for st, mixer in self.cells():
            chosen = (choices or {}).get((st.label, mixer))
            if chosen is None:
                continue
            dim = self.matched(st, mixer)["dim"]
            for context in self.contexts_of(st):
                for seed in self.seeds:
                    cfg = self.base_config(st, mixer, context, seed, dim=dim, **chosen)
                    run_id = f"{_slug(st.label)}--{mixer}--C{context}--s{seed}--{cfg.run_id()[:6]}"
                    out.append(Run(run_id=run_id, label=st.label, config=cfg))
        return out

    def planned_runs(self) -> int:
        """Grid runs once every sweep has finished (a sweep run identical to a grid run counts once)."""
        return sum(len(self.contexts_of(st)) * len(self.seeds) for st, _ in self.cells())

    def skipped(self) -> list[tuple[str, str, str]]:
        """(task label, mixer, reason) of the combinations that :meth:`runs` leaves out."""
        return [(st.label, m, reason) for st in self.tasks for m in self.mixers
                if (reason := self.compatible(st, m))]

    def describe(self) -> dict:
        return {"name": self.name, "mixers": self.mixers, "contexts": self.contexts, "seeds": self.seeds,
                "train": self.train, "mixer_options": self.mixer_options, "lrs": self.lrs,
                "positionals": self.positionals, "reference": self.reference, "task_steps": self.task_steps,
                "tasks": [{"label": t.label, "task": t.task, "params": t.params, "expect": t.expect,
                           "note": t.note, "train": t.train, "max_context": t.max_context,
                           "jump_at": t.jump_at} for t in self.tasks]}


def choose(grid: Grid, sweep_records: list[dict]) -> tuple[dict, dict]:
    """Per cell, the sweep candidate with the best final VALIDATION metric.

    Returns ``(choices, table)``: ``choices[(label, mixer)] = {"lr": ..., "positional": ...}`` for
    the cells whose candidates have all finished, and ``table[(label, mixer)]`` a list of
    ``(candidate, valid metric or None)`` for the report. A diverged candidate (no validation
    metric) is never chosen.
    """
    by_run = {r["study"]["run"]: r for r in sweep_records if "study" in r}
    choices, table = {}, {}
    runs_by_cell: dict = {}
    for run in grid.sweep_runs():
        runs_by_cell.setdefault((run.label, run.config.mixer), []).append(run)
    for cell, runs in runs_by_cell.items():
        rows, higher = [], True
        for run in runs:
            record = by_run.get(run.run_id)
            valid = None
            if record is not None:
                valid = (record.get("valid") or {}).get(record["metric"])
                higher = record["higher_is_better"]
            rows.append(({"lr": run.config.lr, "positional": run.config.positional}, valid))
        table[cell] = rows
        scored = [row for row in rows if row[1] is not None]
        if scored and all(run.run_id in by_run for run in runs):
            choices[cell] = (max if higher else min)(scored, key=lambda row: row[1])[0]
    return choices, table


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def with_out(run: Run, root: str | Path, progress: bool) -> TrainConfig:
    """The run's config writing into ``root/runs/<run_id>``."""
    return replace(run.config, out=str(Path(root) / "runs" / run.run_id), progress=progress)


# -- the shipped grids ----------------------------------------------------------------------
# Sizing the small grid (2-core CPU, one torch thread, dim ~32, depth 2, batch 16): a step costs
# ~10 ms at C=32 and ~70-110 ms at C=512 (CPU time). `longmix study --grid small --dry-run` times
# a few steps of every (task, mixer, context) on the machine at hand and prints the estimate; on
# the 2-core development box (2026-11-30, with mamba and 6000-step MQAR, one other job running)
# it printed: sweep 126 runs ~199 min, grid 390 runs ~259 min, total ~7.6 h of one core,
# ~3.8 h wall with --jobs 2.
# Learnability at this size (single runs, 800 steps, lr 3e-3, learned positions): softmax
# reaches test accuracy 1.0 on passkey-far at C=512 and on distance-100 at C=128 (valid 1.0
# from step 200). MQAR is NOT learned in 800 steps: softmax sits on a plateau near 0.2 (chance
# 0.0625) until ~3000 steps, then learns abruptly; in a 6000-step run its validation accuracy
# reaches 0.9 at step 4350, while a 3000-step run (its own schedule) ends at 0.21
# (benchmarks/results/mqar_steps.md). So MQAR trains 6000 steps
# (`task_steps`), the study's largest cost (`--dry-run`: ~3.1 h of one core for its sweep and grid).
# mamba2 and gated_deltanet joined the grid on 2026-12-04, not yet run: `longmix study --grid small
# --mixers softmax mamba2 gated_deltanet --dry-run` on the development box under a load average of
# ~17 (so slower than the figures above) priced softmax at ~2.5 h, mamba2 ~3.0 h and gated_deltanet
# ~5.3 h of one core (sweep + grid; gated_deltanet sweeps both positional schemes, as every kernel
# mixer): ~8.3 h more for the two.
_COMMON = dict(batch_size=16, dim=32, depth=2, heads=1, warmup=60, eval_every=100, eval_batches=8,
               eval_last=32, train_last=32, checkpoint_every=100, pool="last",
               threads=1)  # models this small run faster on one thread; use --jobs 2 for both cores

SMALL_TASKS = [
    StudyTask("passkey-far", "passkey", {"length": 512, "depth": [0.0, 1.0]}, expect="rises",
              note="a 1-digit key anywhere in 512 tokens of filler; a context C contains it with "
                   "probability ~C/512, so accuracy should rise with C"),
    # The local control has random filler: passkey's fixed filler with the key in the last ~18
    # tokens has only ~150 distinct examples, too few for a disjoint test split of any size.
    StudyTask("near-16", "distance", {"length": 512, "distance": 16}, expect="flat",
              note="a 1-digit key exactly 16 tokens before the end, in random filler: every context "
                   "contains it, so context should matter little (the local control)"),
    StudyTask("distance-100", "distance", {"length": 512, "distance": 100}, expect="jump", jump_at=100,
              note="a 1-digit key exactly 100 tokens before the end, in random filler: invisible at "
                   "C <= 99, visible from C = 100 (the control: accuracy should jump between C=64 and C=128)"),
    StudyTask("mqar", "mqar_all", {"length": 256, "num_pairs": 8, "num_keys": 16, "num_values": 16,
                                   "min_distance": 64}, expect="rises", max_context=256,
              note="multi-query associative recall as in Zoology: 8 key-value pairs (16 keys, 16 values) "
                   "at least 64 tokens before the end, all 8 keys queried in the last 8 tokens, every "
                   "query scored"),
    StudyTask("listops", "listops", {"max_length": 256, "min_length": 64}, expect="rises", max_context=256,
              note="ListOps (LRA) expressions of 64-256 tokens; the first tokens hold the outer operators"),
    StudyTask("text", "text", {}, expect="flat",
              note="bytes of Python source (stdlib), bits per byte on the last 32 positions, trained "
                   "on the same last 32 positions at every context; mostly local, a modest gain from "
                   "longer history expected"),
]

SMALL = Grid(
    name="small",
    tasks=SMALL_TASKS,
    mixers=["softmax", "s4d", "hyena", "local", "mamba", "mamba2", "gated_deltanet"],
    contexts=[32, 64, 128, 256, 512],
    seeds=[0, 1, 2],
    train=dict(steps=800, **_COMMON),
    mixer_options={"local": {"block_size": 16}},
    lrs=[1e-3, 3e-3, 1e-2],
    positionals=["sinusoidal", "learned"],
    reference="softmax",
    task_steps={"mqar": 6000},
)

#: The smoke test of the whole pipeline (sweep, matching, floors, report) in a few minutes:
#: every task of the small grid, two mixers, two contexts, 2 lrs, 2 seeds, a few dozen steps.
#: Its numbers mean nothing; it proves the machinery end to end.
TINY = Grid(
    name="tiny",
    tasks=SMALL_TASKS,
    mixers=["softmax", "s4d"],
    contexts=[32, 128],
    seeds=[0, 1],
    train=dict(steps=30, **{**_COMMON, "warmup": 5, "eval_every": 10, "eval_batches": 2,
                            "checkpoint_every": 30}),
    mixer_options={"local": {"block_size": 16}},
    lrs=[3e-3, 1e-2],
    positionals=["sinusoidal", "learned"],
    reference="softmax",
)

FULL = Grid(
    name="full",
    tasks=[
        StudyTask("passkey-far", "passkey", {"length": 8192, "depth": [0.0, 1.0]}, expect="rises",
                  note="a 1-digit key anywhere in 8192 tokens of filler: visible with probability ~C/8192"),
        StudyTask("near-32", "distance", {"length": 8192, "distance": 32}, expect="flat",
                  note="a 1-digit key exactly 32 tokens before the end: every context sees it (the local control)"),
        StudyTask("distance-1500", "distance", {"length": 8192, "distance": 1500}, expect="jump", jump_at=1500,
                  note="a 1-digit key exactly 1500 tokens before the end: should jump between C=1024 and 2048"),
        StudyTask("mqar", "mqar_all", {"length": 8192, "num_pairs": 32, "min_distance": 2048}, expect="rises",
                  note="Zoology MQAR, 32 pairs at least 2048 tokens before the end, every query scored"),
        StudyTask("listops", "listops", {"max_length": 2048}, expect="rises",
                  note="LRA ListOps: nested MAX/MIN/MED/SM over digits, up to 2048 tokens",
                  max_context=2048),
        StudyTask("pathfinder", "pathfinder", {}, expect="rises",
                  note="LRA Pathfinder 32x32 flattened to 1024 tokens", max_context=1024),
        StudyTask("text", "text", {}, expect="flat", note=SMALL_TASKS[-1].note),
    ],
    mixers=["softmax", "linear", "local", "bigbird", "s4d", "mamba", "longconv", "hyena"],
    contexts=[256, 512, 1024, 2048, 4096, 8192],
    seeds=[0, 1, 2],
    train=dict(steps=3000, batch_size=32, dim=128, depth=4, heads=4, warmup=300,
               eval_every=250, eval_batches=32, eval_last=64, train_last=64, checkpoint_every=250,
               pool="last", device="auto"),
    mixer_options={"local": {"block_size": 64}, "bigbird": {"block_size": 64}},
    lrs=[3e-4, 1e-3, 3e-3],
    positionals=["sinusoidal", "learned"],
    reference="softmax",
)

GRIDS = {"tiny": TINY, "small": SMALL, "full": FULL}


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"--grid must be one of {sorted(GRIDS)}, got {name!r}")
    return GRIDS[name]
