"""A task as next-token prediction, the only thing a causal language model predicts.

A causal LM (a Hugging Face ``*ForCausalLM``) has no classification head: it scores the next
token at every position. ``lm`` tasks already are that. A ``classify`` task becomes it by giving
each class its own *answer token*, appended after the task's vocabulary (class ``c`` is token
``task.vocab_size + c``), as the target of the last position, which has read the whole sequence.
Nothing else is scored. The metric stays the task's (accuracy: the answer token is the argmax
over the whole vocabulary at the last position), so its chance floor stays ``1 / num_classes``
for a model that has learnt to answer with some answer token.
"""
from __future__ import annotations

import torch


class NextTokenTask:
    """``task`` (a classify task) as an ``lm`` task for a causal LM: ``batch`` returns the same
    ``x`` and targets ``y`` (B, L) that are ``pad_id`` (not scored) except at the last position,
    the answer token ``task.vocab_size + label``."""

    kind = "lm"

    def __init__(self, task):
        if task.kind != "classify":
            raise ValueError(f"NextTokenTask wraps a classify task; {task.name!r} is {task.kind!r}")
        self.task = task
        self.name, self.pad_id, self.metric = task.name, task.pad_id, task.metric
        self.answer0 = task.vocab_size  # the first answer token
        self.vocab_size = task.vocab_size + task.num_classes

    def batch(self, split: str, index: int, batch_size: int, context: int):
        x, labels = self.task.batch(split, index, batch_size, context)
        y = torch.full_like(x, self.pad_id)
        y[:, -1] = self.answer0 + labels
        return x, y

    def describe(self) -> dict:
        return {**self.task.describe(), "as_next_token": {
            "answer_tokens": [self.answer0, self.vocab_size],
            "scored": "the last position's next token (class c is token answer_tokens[0] + c)"}}


def as_next_token(task):
    """``task`` itself if it is an ``lm`` task, else its :class:`NextTokenTask`."""
    return task if task.kind == "lm" else NextTokenTask(task)
