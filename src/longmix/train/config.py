"""The configuration of one training run, and the identity that ties a checkpoint to it."""
from __future__ import annotations

import ast
import hashlib
import json
import numbers
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..checks import check_int, check_optional_int
from ..parallel.layout import check_sequence_layout
from ..vocabulary import FORMS, PLANS

#: Fields left out of the identity while they hold these defaults, so that the run ids of runs
#: made before the fields existed stay the same.
OPTIONAL_IDENTITY = {"causal": None, "init_from": None, "pack": False, "hf_model": None}

#: Fields that do not change what is trained or measured: a run may be resumed with other values.
NON_IDENTITY = ("out", "eval_every", "checkpoint_every", "device", "threads", "progress", "procs", "layout",
                "form", "plan", "seq_parallel", "checkpoint_activations", "return_freed_memory")

#: Options of a longmix model that an HF model (``hf_model``) takes from its own config instead.
HF_NOT_APPLICABLE = ("dim", "depth", "heads", "positional", "pool", "causal", "mixer_options",
                     "form", "plan")


@dataclass
class TrainConfig:
    """One run: a task, a mixer (or a Hugging Face model), a context length, and how to train.

    ``hf_model``: the folder of a transformers causal LM (``save_pretrained``) to train instead
    of a longmix ``SequenceModel``; ``mixer`` is then None and the model's config sets its sizes.

    ``context`` is the number of most recent tokens the model sees. Batches are indexed by step,
    so ``step`` is also the data position, and a resumed run sees exactly the batches it would
    have seen uninterrupted.
    """

    task: str
    mixer: str | None
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
    # train on the task's documents packed into sequences of ``context`` tokens with their
    # cu_seqlens, batch 1 each (``batch_size`` sequences a step; see longmix.train.packing)
    pack: bool = False
    # the folder of a transformers causal LM (config.json, optionally weights) trained instead of
    # a longmix model (see longmix.train.hf_model)
    hf_model: str | None = None
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
    # with form None: plan each layer by the bytes it sends, or by its step time measured on the
    # run's ranks at its context (longmix.parallel.forms.calibration), a few steps per form
    plan: str = "bytes"
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
        check_sequence_layout(self.layout, "TrainConfig")
        if self.causal is not None and not isinstance(self.causal, bool):
            raise ValueError(f"causal must be None (by head), True or False, got {self.causal!r}")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise ValueError(f"init_from must be None or the path of a finished run's folder, "
                             f"got {self.init_from!r}")
        check_optional_int("seq_parallel", self.seq_parallel)
        if self.seq_parallel is not None and self.procs > 1:
            check_mesh(self.procs, self.seq_parallel, self.batch_size)
        if not isinstance(self.pack, bool):
            raise ValueError(f"pack must be True or False, got {self.pack!r}")
        if self.pack and self.train_last is not None:
            raise ValueError(f"train_last={self.train_last} does not apply with pack=True: a packed "
                             f"step scores every target of every document")
        for name in ("checkpoint_activations", "return_freed_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.form is not None and self.form not in FORMS:
            raise ValueError(f"form must be None (planned per layer) or one of {FORMS}, got {self.form!r}")
        if self.plan not in PLANS:
            raise ValueError(f"plan must be one of {PLANS}, got {self.plan!r}")
        if self.plan != "bytes" and self.form is not None:
            raise ValueError(f"--plan {self.plan} chooses each layer's form and --form {self.form} "
                             f"fixes every layer's: give one of them")
        if self.plan != "bytes" and self.pack:
            raise ValueError(f"--plan {self.plan} cannot be combined with --pack: its steps are "
                             f"timed on unpacked sequences, not on packed documents")
        self.task_params = dict(self.task_params)
        self.mixer_options = dict(self.mixer_options)
        self._check_model_choice()

    def _check_model_choice(self) -> None:
        """A mixer or an HF model, not both; the longmix architecture options do not apply to an
        HF model (its config sets them), so giving one with it is an error, not silently ignored."""
        if self.hf_model is None:
            if not (isinstance(self.mixer, str) and self.mixer):
                raise ValueError(f"mixer must be a mixer name (or give hf_model), got {self.mixer!r}")
            return
        if not (isinstance(self.hf_model, str) and self.hf_model):
            raise ValueError(f"hf_model must be None or the path of a save_pretrained folder, "
                             f"got {self.hf_model!r}")
        if self.mixer is not None:
            raise ValueError(f"give --mixer or --hf-model, not both (got mixer {self.mixer!r} and "
                             f"hf_model {self.hf_model!r})")
        if self.pack:
            raise ValueError(f"--pack cannot be combined with --hf-model {self.hf_model!r}: "
                             f"longmix.hf runs no packed documents (cu_seqlens) yet")
        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                    for f in fields(self)}
        given = [name for name in HF_NOT_APPLICABLE if getattr(self, name) != defaults[name]]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags} cannot be combined with --hf-model {self.hf_model!r}: the "
                             f"model's config sets its architecture and longmix.hf plans its "
                             f"parallel forms")

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
        if self.hf_model is not None:  # held at their defaults, and meaningless for an HF model
            for name in HF_NOT_APPLICABLE:
                d.pop(name, None)
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
