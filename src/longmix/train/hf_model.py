"""A Hugging Face causal LM as the model of a training run (``longmix train --hf-model DIR``).

``DIR`` is a local folder written by ``save_pretrained``: its ``config.json``, and its weights if
it has any (safetensors or ``pytorch_model*.bin``). Without weights the model is initialised from
the config by transformers' own initialisation, after the run's seed. Nothing downloads: the
config and weights are read with ``local_files_only=True``.

The model is built in torch's default dtype (float32, or float64 in the exactness tests), like a
longmix model. It is trained on the task as next-token prediction (:mod:`.next_token`). On one
process it runs as transformers runs it; on P ranks through :func:`longmix.hf.parallelize`, which
shares its parameters, so checkpoints, the optimizer and the gradient sum over ranks all work
on the HF model itself. The train loop scores the logits (:class:`CausalLMLogits`) with the same
global-mean loss as for a longmix model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: Files whose presence means ``DIR`` holds weights (else: initialise from the config).
WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")


@dataclass(frozen=True)
class HFModelSpec:
    """What ``--hf-model DIR`` holds: its config, the causal LM class it builds, whether it has
    weights. Checked without building the model (:func:`inspect_folder`)."""

    path: str
    config: object  # a transformers PretrainedConfig
    model_class: str
    has_weights: bool

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)


def _refuse(path: str, reason: str) -> ValueError:
    return ValueError(f"--hf-model {path!r}: {reason}")


def _transformers(path: str):
    try:
        import transformers
    except ImportError as err:
        raise _refuse(path, "needs the optional extra: pip install 'longmix[hf]' "
                            "(transformers >= 5.0)") from err
    return transformers


def inspect_folder(path: str) -> HFModelSpec:
    """The spec of the causal LM in folder ``path``; ValueError naming ``--hf-model`` when the
    folder is missing, has no config.json, its config does not load, or it is not a causal LM."""
    folder = Path(path)
    if not folder.is_dir():
        raise _refuse(path, "not a directory; expected a folder written by save_pretrained "
                            "(config.json, optionally weights)")
    if not (folder / "config.json").is_file():
        raise _refuse(path, "has no config.json; expected a folder written by save_pretrained")
    transformers = _transformers(path)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise _refuse(path, f"its config.json does not load ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from err
    try:  # the class transformers would build, on the meta device: no memory, no weights
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise _refuse(path, f"its config ({type(config).__name__}) is not a causal LM that "
                            f"AutoModelForCausalLM builds ({str(err).splitlines()[0]})") from err
    has_weights = any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)
    return HFModelSpec(str(path), config, type(model).__name__, has_weights)


def check_vocabulary(spec: HFModelSpec, task) -> None:
    """ValueError unless every token of ``task`` (a next-token task: :func:`as_next_token`) is
    one of the model's ``vocab_size`` tokens."""
    if task.vocab_size > spec.vocab_size:
        extra = ""
        if hasattr(task, "answer0"):  # a classify task: its answer tokens come after its own
            extra = (f" ({task.answer0} task tokens + {task.vocab_size - task.answer0} answer "
                     f"tokens, one per class)")
        raise _refuse(spec.path, f"the model's vocab_size is {spec.vocab_size}, but task "
                                 f"{task.name!r} needs {task.vocab_size} tokens{extra}; use a model "
                                 f"with vocab_size >= {task.vocab_size}")


def build(spec: HFModelSpec, device: torch.device) -> nn.Module:
    """The causal LM of ``spec`` in torch's default dtype on ``device``, in training mode: its
    saved weights, or (none saved) transformers' initialisation from the config, drawn from
    torch's global generator (seeded by the caller)."""
    transformers = _transformers(spec.path)
    dtype = torch.get_default_dtype()
    auto = transformers.AutoModelForCausalLM
    if spec.has_weights:
        model = auto.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
    else:
        model = auto.from_config(spec.config, dtype=dtype)
    return model.to(device).train()


class CausalLMLogits(nn.Module):
    """Token ids (B, L) -> the causal LM's logits (B, L, V): the model the train loop scores.

    ``lm`` is a transformers model (one process) or its :class:`longmix.hf.ParallelHFModel`
    (this rank's shard of the ids in, of the logits out)."""

    def __init__(self, lm: nn.Module, parallel: bool):
        super().__init__()
        self.lm, self.parallel = lm, parallel
        self.param_dtype = next(lm.parameters()).dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel:  # takes no cache: positions come from the layout
            logits = self.lm(input_ids).logits
        else:
            logits = self.lm(input_ids=input_ids, use_cache=False).logits
        # Some models (Mamba) cast their logits to float32; the loss is then computed in the
        # model's own precision (float64 in the exactness tests), as longmix.hf's loss does.
        return logits.to(torch.promote_types(logits.dtype, self.param_dtype))


def runner(model: nn.Module, seq_group, seq_world: int, layout: str,
           checkpoint_activations: bool = False) -> CausalLMLogits:
    """``model`` as the train loop calls it: on one process as transformers runs it; over
    ``seq_world`` > 1 ranks, :func:`longmix.hf.parallelize` (sharing its parameters).
    ``checkpoint_activations`` (``--checkpoint-activations``): every decoder layer recomputed in
    backward, with longmix's options (:mod:`longmix.hf.checkpointing`); on one process by
    transformers' own checkpointing of ``model`` (the run's model, built for it), on P ranks in
    the parallel copy."""
    if seq_world == 1:
        from longmix.hf.checkpointing import checkpoint_layers

        checkpoint_layers(model, checkpoint_activations, "--checkpoint-activations with --hf-model")
        return CausalLMLogits(model, parallel=False)
    from longmix.hf import parallelize

    return CausalLMLogits(parallelize(model, group=seq_group, layout=layout,
                                      checkpoint_activations=checkpoint_activations), parallel=True)


def describe(spec: HFModelSpec, model: nn.Module, run: CausalLMLogits) -> dict:
    """What a run's record says about its HF model: class, full config, where its weights came
    from, and (on several ranks) the layers longmix.hf planned."""
    info = {"path": spec.path, "class": type(model).__name__,
            "config": json.loads(model.config.to_json_string(use_diff=False)),
            "weights": "saved" if spec.has_weights else "initialised from the config (the run's seed)",
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if run.parallel:
        info["layers"] = [{"name": p.name, "kind": p.kind, "window": p.window} for p in run.lm.layers]
    return info
