"""Training one model on one task: config, schedule, crash-safe checkpoints, results files.

    >>> from longmix.train import TrainConfig, train
    >>> record = train(TrainConfig(task="passkey", mixer="softmax", context=256, out="runs/pk"))
    >>> record["test"]["accuracy"]

Rerunning the same config resumes from ``out/checkpoint.pt`` (or returns the finished record).
``TrainConfig(..., procs=2)`` splits every sequence over two local ranks, with the same result.
"""
from .checkpoint import CheckpointError, load as load_checkpoint, save_atomic
from .config import TrainConfig, parse_pairs, parse_value
from .errors import TrainingDiverged
from .loop import evaluate, evaluate_checkpoint, metric_name, model_config, train
from .schedule import build_scheduler, warmup_cosine
from . import results

__all__ = ["CheckpointError", "load_checkpoint", "save_atomic", "TrainConfig", "parse_pairs",
           "parse_value", "TrainingDiverged", "evaluate", "evaluate_checkpoint", "metric_name",
           "model_config", "train", "build_scheduler", "warmup_cosine", "results"]
