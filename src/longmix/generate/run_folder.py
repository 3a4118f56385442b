"""A finished ``longmix train`` run as a generator: its model with the trained weights, and the
task's text encoding where the task has one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import tasks
from ..models import SequenceModel
from ..train import checkpoint
from ..train.config import TrainConfig
from ..train.loop import CHECKPOINT, load_weights, model_config

#: Tasks whose tokens are bytes shifted by one (``longmix.tasks.text``: token = byte + 1, 0 = pad).
BYTE_TASKS = ("text",)


@dataclass
class TrainedRun:
    model: SequenceModel
    config: TrainConfig
    run_id: str
    folder: str = ""

    @property
    def has_text_encoding(self) -> bool:
        return self.config.task in BYTE_TASKS

    def encode(self, text: str) -> list[int]:
        """The task's tokens of ``text`` (UTF-8 bytes + 1); ValueError where the task has no text
        encoding (its prompts are token ids: ``--prompt-ids``)."""
        if not self.has_text_encoding:
            raise ValueError(f"task {self.config.task!r} has no text encoding; give token ids "
                             f"(--prompt-ids) instead of text")
        return [b + 1 for b in text.encode("utf-8")]

    @property
    def layers(self) -> int:
        """Blocks of the model (the prefill's progress counts them)."""
        return len(self.model.blocks)

    def describe(self) -> dict:
        return {"run": str(self.folder), "run_id": self.run_id, "mixer": self.config.mixer}

    def decode(self, tokens: list[int]) -> str:
        """Text of byte tokens (pad 0 skipped; invalid UTF-8 shown as U+FFFD)."""
        return bytes(t - 1 for t in tokens if 0 < t <= 256).decode("utf-8", errors="replace")


def load_source(run: str | None = None, hf_model: str | None = None):
    """What ``longmix generate`` continues from: a finished run (:func:`load_run`) or a
    transformers directory (``hf_folder.load_hf_model``)."""
    if hf_model is not None:
        from .hf_folder import load_hf_model
        return load_hf_model(hf_model)
    return load_run(run)


def load_run(folder: str) -> TrainedRun:
    """The model of the finished run in ``folder``; ValueError (naming the folder and what is
    wrong) for a folder without a checkpoint, an unfinished run, or a classifier."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"--run {folder!r} has no {CHECKPOINT}: expected the folder of a finished "
                         f"`longmix train` run")
    state = checkpoint.load(path)
    identity = state["identity"]
    try:
        cfg = TrainConfig(**identity)
    except TypeError as err:
        raise ValueError(f"--run {folder!r}: its checkpoint's configuration is not one this version "
                         f"reads ({err})") from err
    if cfg.hf_model is not None:
        raise ValueError(f"--run {folder!r} trained a Hugging Face model (--hf-model "
                         f"{cfg.hf_model!r}); generate runs longmix models only")
    if state["step"] != cfg.steps:
        raise ValueError(f"--run {folder!r} stopped at step {state['step']} of {cfg.steps}; finish "
                         f"it first (rerun its train command)")
    task = tasks.build(cfg.task, seed=cfg.seed, **cfg.task_params)
    if task.kind != "lm":
        raise ValueError(f"--run {folder!r} trained a classifier on task {cfg.task!r}; only language "
                         f"models (an lm task, e.g. text) generate")
    model = SequenceModel(model_config(cfg, task))
    load_weights(model, state["model"], f"--run {folder!r}")
    return TrainedRun(model=model.eval(), config=cfg, run_id=state.get("run_id", cfg.run_id()),
                      folder=folder)
