"""Study grids: which (task x mixer x context x seed) runs to train, and how.

A grid is data: a list of :class:`StudyTask` (a registry task plus parameters, under a label),
mixer names, context lengths, seeds and shared training settings. :meth:`Grid.runs` expands it
into :class:`Run` s, each a :class:`~longmix.train.TrainConfig` with its own directory.

Two grids ship:

* ``small``: sized for a 2-core laptop CPU, the whole grid in about half an hour
  (3 tasks x 4 mixers x 5 contexts (32..512) x 2 seeds = 120 runs of a few seconds to ~1.5 min).
* ``full``: more tasks (MQAR, ListOps, Pathfinder), more mixers, contexts up to 8192 and bigger
  models; meant for a GPU or a many-core machine.

Classification runs read the prediction from the LAST position (``pool="last"``), where the
question is. Mean pooling would itself mix every position with every other, so a model could
answer passkey without any long-range token mixing; reading one position makes the mixer carry
the information there, which is what the study measures.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import mixers, tasks
from ..train import TrainConfig


@dataclass(frozen=True)
class StudyTask:
    """A task of the study: registry ``task`` with ``params``, reported under ``label``.

    ``expect``: what the study's hypothesis says context should do here, "rises" (the answer
    depends on distant tokens) or "flat" (local information suffices).
    """

    label: str
    task: str
    params: dict = field(default_factory=dict)
    expect: str = "rises"
    note: str = ""
    train: dict = field(default_factory=dict)  # per-task TrainConfig overrides
    max_context: int | None = None  # skip longer contexts (all padding beyond the examples' length)


@dataclass(frozen=True)
class Run:
    """One run of a study: its id (also its directory name under ``runs/``), label and config."""

    run_id: str
    label: str
    config: TrainConfig


@dataclass
class Grid:
    name: str
    tasks: list[StudyTask]
    mixers: list[str]
    contexts: list[int]
    seeds: list[int]
    train: dict = field(default_factory=dict)  # TrainConfig overrides shared by every run
    mixer_options: dict = field(default_factory=dict)  # mixer name -> constructor options
    mixer_train: dict = field(default_factory=dict)  # mixer name -> TrainConfig overrides (e.g. lr)

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
        if contexts:
            bad = [c for c in contexts if not isinstance(c, int) or c < 1]
            if bad:
                raise ValueError(f"--contexts must be positive ints, got {bad}")
            grid.contexts = sorted(set(contexts))
        if seeds is not None:
            if not isinstance(seeds, int) or seeds < 1:
                raise ValueError(f"--seeds must be a positive int, got {seeds!r}")
            grid.seeds = list(range(seeds))
        return grid

    def compatible(self, study_task: StudyTask, mixer: str) -> str | None:
        """None if ``mixer`` can run ``study_task``; otherwise the reason it is skipped."""
        kind = tasks.get_class(study_task.task).kind
        if kind == "lm" and not mixers.get_class(mixer).taxonomy.causal:
            return f"{mixer} cannot run causally, which language modeling needs"
        return None

    def runs(self) -> list[Run]:
        """Every run of the grid, tasks outermost, then mixers, contexts and seeds (so an
        interrupted study has finished whole tasks first)."""
        out = []
        for st in self.tasks:
            for mixer in self.mixers:
                if self.compatible(st, mixer):
                    continue
                for context in self.contexts:
                    if st.max_context is not None and context > st.max_context:
                        continue
                    for seed in self.seeds:
                        cfg = TrainConfig(task=st.task, mixer=mixer, context=context, seed=seed,
                                          task_params=dict(st.params),
                                          mixer_options=dict(self.mixer_options.get(mixer, {})),
                                          **{**self.train, **st.train, **self.mixer_train.get(mixer, {})})
                        run_id = f"{_slug(st.label)}--{mixer}--C{context}--s{seed}--{cfg.run_id()[:6]}"
                        out.append(Run(run_id=run_id, label=st.label, config=cfg))
        return out

    def skipped(self) -> list[tuple[str, str, str]]:
        """(task label, mixer, reason) of the combinations that :meth:`runs` leaves out."""
        return [(st.label, m, reason) for st in self.tasks for m in self.mixers
                if (reason := self.compatible(st, m))]

    def describe(self) -> dict:
        return {"name": self.name, "mixers": self.mixers, "contexts": self.contexts, "seeds": self.seeds,
                "train": self.train, "mixer_options": self.mixer_options, "mixer_train": self.mixer_train,
                "tasks": [{"label": t.label, "task": t.task, "params": t.params, "expect": t.expect,
                           "note": t.note, "train": t.train, "max_context": t.max_context}
                          for t in self.tasks]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def with_out(run: Run, root: str | Path, progress: bool) -> TrainConfig:
    """The run's config writing into ``root/runs/<run_id>``."""
    return replace(run.config, out=str(Path(root) / "runs" / run.run_id), progress=progress)


# -- the two shipped grids ------------------------------------------------------------------
# Sizing the small grid (2-core CPU, one torch thread, dim 32, depth 2, batch 16): a step costs
# ~5-10 ms at C=32-64 and ~50-70 ms at C=512, whatever the mixer, so 600 steps over the five
# contexts cost ~1 min per (task, mixer, seed) and the 120 runs about half an hour.
# Learnability was checked on single runs of passkey with the key anywhere in 512 tokens:
# softmax (lr 3e-3) reaches ~0.8 accuracy by step 600 (it is at chance until ~step 300; 300
# steps are not enough), hyena needs lr 1e-2 to get there (~0.75), s4d stays at chance on the
# far key even with lr 1e-2 but learns the near key (0.94 at lr 1e-2, 0.28 at 3e-3).
# Hence per-mixer learning rates: each family gets the one it trains with.
SMALL = Grid(
    name="small",
    tasks=[
        StudyTask("passkey-far", "passkey", {"length": 512, "depth": [0.0, 1.0]}, expect="rises",
                  note="a 1-digit key anywhere in 512 tokens of filler; a context C contains it with "
                       "probability ~C/512, so accuracy should rise with C"),
        StudyTask("passkey-near", "passkey", {"length": 512, "depth": [0.97, 1.0]}, expect="flat",
                  note="the same task with the key in the last ~18 tokens: every context contains it, "
                       "so context should matter little (a local control)"),
        StudyTask("text", "text", {}, expect="flat",
                  note="bytes of Python source (stdlib), bits per byte on the last 32 positions; "
                       "mostly local, with a modest gain from longer history expected"),
    ],
    mixers=["softmax", "s4d", "hyena", "local"],
    contexts=[32, 64, 128, 256, 512],
    seeds=[0, 1],
    train=dict(steps=600, batch_size=16, dim=32, depth=2, heads=1, lr=3e-3, warmup=60,
               eval_every=200, eval_batches=8, eval_last=32, checkpoint_every=100, pool="last",
               threads=1),  # models this small run faster on one thread; use --jobs 2 for both cores
    mixer_options={"local": {"block_size": 16}},
    mixer_train={"s4d": {"lr": 1e-2}, "hyena": {"lr": 1e-2}},
)

FULL = Grid(
    name="full",
    tasks=[
        StudyTask("passkey-far", "passkey", {"length": 8192, "depth": [0.0, 1.0]}, expect="rises",
                  note="a 1-digit key anywhere in 8192 tokens of filler: visible with probability ~C/8192"),
        StudyTask("passkey-near", "passkey", {"length": 8192, "depth": [0.996, 1.0]}, expect="flat",
                  note="the key in the last ~32 tokens: every context sees it (a local control)"),
        StudyTask("mqar", "mqar", {"length": 8192, "num_pairs": 32, "min_distance": 2048}, expect="rises",
                  note="associative recall; the queried pair lies >= 2048 tokens from the end"),
        StudyTask("listops", "listops", {"max_length": 2048}, expect="rises",
                  note="LRA ListOps: nested MAX/MIN/MED/SM over digits, up to 2048 tokens",
                  max_context=2048),
        StudyTask("pathfinder", "pathfinder", {}, expect="rises",
                  note="LRA Pathfinder 32x32 flattened to 1024 tokens", max_context=1024),
        StudyTask("text", "text", {}, expect="flat", note=SMALL.tasks[2].note, train={"lr": 1e-3}),
    ],
    mixers=["softmax", "linear", "local", "bigbird", "s4d", "mamba", "longconv", "hyena"],
    contexts=[256, 512, 1024, 2048, 4096, 8192],
    seeds=[0, 1],
    train=dict(steps=3000, batch_size=32, dim=128, depth=4, heads=4, lr=1e-3, warmup=300,
               eval_every=500, eval_batches=32, eval_last=64, checkpoint_every=250, pool="last",
               device="auto"),
    mixer_options={"local": {"block_size": 64}, "bigbird": {"block_size": 64}},
    # Untested at this scale: the small grid's finding (SSM/conv layers want a larger lr) scaled down.
    mixer_train={m: {"lr": 3e-3} for m in ("s4d", "mamba", "longconv", "hyena")},
)

GRIDS = {"small": SMALL, "full": FULL}


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"--grid must be one of {sorted(GRIDS)}, got {name!r}")
    return GRIDS[name]
