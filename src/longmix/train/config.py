"""The configuration of one training run, and the identity that ties a checkpoint to it."""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

#: Fields that do not change what is trained or measured: a run may be resumed with other values.
NON_IDENTITY = ("out", "eval_every", "checkpoint_every", "device", "threads", "progress")


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
    positional: str = "auto"
    pool: str = "auto"
    task_params: dict = field(default_factory=dict)
    mixer_options: dict = field(default_factory=dict)
    # -- not part of the identity -----------------------------------------------------------
    out: str = "runs/train"
    eval_every: int = 100
    checkpoint_every: int = 50
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("context", "steps", "batch_size", "dim", "depth", "heads", "eval_batches",
                     "eval_last", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.warmup is not None and not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            raise ValueError(f"warmup must be an int in [0, steps={self.steps}] or None, got {self.warmup!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")
        self.task_params = dict(self.task_params)
        self.mixer_options = dict(self.mixer_options)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.steps // 10)

    def identity(self) -> dict:
        """The fields that define the run's result; a checkpoint must match them to be resumed."""
        d = asdict(self)
        for name in NON_IDENTITY:
            d.pop(name)
        return json.loads(json.dumps(d, sort_keys=True))  # canonical: plain JSON types only

    def run_id(self) -> str:
        """A short stable hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)


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
