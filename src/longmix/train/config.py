"""The configuration of one training run, and the identity that ties a checkpoint to it."""
from __future__ import annotations

import ast
import hashlib
import json
import numbers
from dataclasses import asdict, dataclass, field

from ..checks import check_int, check_optional_int
from ..parallel.layout import check_layout
from ..vocabulary import FORMS

#: Fields left out of the identity while they hold these defaults, so that the run ids of runs
#: made before the fields existed stay the same.
OPTIONAL_IDENTITY = {"causal": None, "init_from": None}

#: Fields that do not change what is trained or measured: a run may be resumed with other values.
NON_IDENTITY = ("out", "eval_every", "checkpoint_every", "device", "threads", "progress", "procs", "layout",
                "form", "seq_parallel", "checkpoint_activations", "return_freed_memory")


@dataclass
class TrainConfig:
    """One run: a task, a mixer, a context length, and how to train.

    ``context`` is the number of most recent tokens the model sees. Batches are indexed by step,
    so ``step`` is also the data position, and a resumed run sees exactly the batches it would
    have seen uninterrupted.
    """

    task: str
    mixer: str
    context: int
    steps: int = 500
    batch_size: int = 32
    dim: int = 64
    depth: int = 2
    heads: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int | None = None  # None: 10% of steps
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    eval_batches: int = 8
    eval_last: int = 32  # lm head: score only the last eval_last positions (same for every context)
    # lm head: train on the last train_last positions only (None: all), so that every context
    # trains on the same number of targets and a longer context only adds history
    train_last: int | None = None
    positional: str = "auto"
    pool: str = "auto"
    causal: bool | None = None  # None: causal for the lm head only; True: also for classification
    # a finished run's folder whose weights start this run (a curriculum: short contexts first);
    # the optimizer and schedule start afresh
    init_from: str | None = None
    task_params: dict = field(default_factory=dict)
    mixer_options: dict = field(default_factory=dict)
    # -- not part of the identity -----------------------------------------------------------
    out: str = "runs/train"
    eval_every: int = 100
    checkpoint_every: int = 50
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    procs: int = 1  # ranks of the run; the result equals one process's
    seq_parallel: int | None = None  # ranks splitting each sequence (None: all); the rest split the batch
    layout: str = "contiguous"  # how the sequence is split over the ranks (see longmix.parallel)
    form: str | None = None  # the parallel form of every mixer layer on P ranks (None: planned)
    # recompute each block's activations in backward (exact; less memory per token, more compute)
    checkpoint_activations: bool = False
    # fix glibc's mmap threshold (longmix.machine.return_freed_memory): freed large tensors leave
    # the resident set (memory per token divides by P), for a page fault per new large block
    return_freed_memory: bool = False

    def __post_init__(self):
        for name in ("context", "steps", "batch_size", "dim", "depth", "heads", "eval_batches",
                     "eval_last", "eval_every", "checkpoint_every", "procs"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, low=0)
        check_optional_int("train_last", self.train_last)
        check_optional_int("warmup", self.warmup, low=0, high=self.steps)
        check_optional_int("threads", self.threads)
        for name, ok, expected in (("lr", lambda v: v > 0, "> 0"),
                                   ("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
                                   ("grad_clip", lambda v: v > 0, "> 0"),
                                   ("weight_decay", lambda v: v >= 0, ">= 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
                raise ValueError(f"{name} must be a number {expected}, got {value!r}")
        check_layout(self.layout)
        if self.causal is not None and not isinstance(self.causal, bool):
            raise ValueError(f"causal must be None (by head), True or False, got {self.causal!r}")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise ValueError(f"init_from must be None or the path of a finished run's folder, "
                             f"got {self.init_from!r}")
        check_optional_int("seq_parallel", self.seq_parallel)
        if self.seq_parallel is not None and self.procs > 1:
            check_mesh(self.procs, self.seq_parallel, self.batch_size)
        for name in ("checkpoint_activations", "return_freed_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.form is not None and self.form not in FORMS:
            raise ValueError(f"form must be None (planned per layer) or one of {FORMS}, got {self.form!r}")
        self.task_params = dict(self.task_params)
        self.mixer_options = dict(self.mixer_options)

    @property
    def data_parallel(self) -> int:
        """Rows of the data x seq grid on ``procs`` ranks: parts of each batch."""
        return self.procs // (self.seq_parallel or self.procs)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.steps // 10)

    def identity(self) -> dict:
        """The fields that define the run's result; a checkpoint must match them to be resumed."""
        d = asdict(self)
        for name in NON_IDENTITY:
            d.pop(name)
        for name, default in OPTIONAL_IDENTITY.items():
            if d[name] == default:
                d.pop(name)
        return json.loads(json.dumps(d, sort_keys=True))  # canonical: plain JSON types only

    def run_id(self) -> str:
        """A short stable hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def identity_diff(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two :meth:`TrainConfig.identity` dicts."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint has {saved.get(k, '<missing>')!r}, this run has {current.get(k, '<missing>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, '[1,2]' -> [1, 2], anything else -> the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def parse_pairs(pairs: list[str] | None, option: str) -> dict:
    """['k=v', ...] -> {k: parse_value(v)}; ``option`` names the flag in errors."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects key=value, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def check_mesh(world: int, seq_parallel: int, batch_size: int) -> None:
    """A data x seq grid of ``world`` ranks: ``seq_parallel`` divides ``world``, and the number
    of rows (data parts) divides ``batch_size``, so every row reads a whole part of each batch."""
    if world % seq_parallel:
        raise ValueError(f"seq_parallel={seq_parallel} must divide the number of ranks ({world}): "
                         f"the ranks form a data x seq grid")
    data = world // seq_parallel
    if batch_size % data:
        raise ValueError(f"batch_size={batch_size} must be divisible by the data-parallel size "
                         f"{data} (= {world} ranks / seq_parallel {seq_parallel})")
