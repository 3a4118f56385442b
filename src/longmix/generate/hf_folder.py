"""A transformers ``save_pretrained`` directory as a generator: its causal LM, and the tokenizer
saved next to it where there is one. Loaded from the directory only (``local_files_only``):
nothing downloads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: files any transformers tokenizer saves (``save_pretrained``); without one, only token ids
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class HFModelDir:
    model: object
    tokenizer: object | None
    folder: str
    model_class: str = ""

    @property
    def has_text_encoding(self) -> bool:
        return self.tokenizer is not None

    @property
    def layers(self) -> int:
        """Token-mixing layers (the prefill's progress counts them)."""
        from ..hf import plan_hf
        return len(plan_hf(self.model))

    def encode(self, text: str) -> list[int]:
        """The saved tokenizer's ids of ``text`` (no special tokens added); ValueError without one."""
        if self.tokenizer is None:
            raise ValueError(f"--hf-model {self.folder!r} has no tokenizer saved with it (none of "
                             f"{', '.join(TOKENIZER_FILES)}); give token ids (--prompt-ids) instead of text")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def describe(self) -> dict:
        return {"hf_model": self.folder, "model_class": self.model_class}


def load_hf_model(folder: str) -> HFModelDir:
    """The causal LM saved in ``folder`` (and its tokenizer, if saved); ValueError naming the
    folder when it holds no transformers model, or one without an lm head."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"--hf-model {folder!r} has no config.json: expected a directory written by "
                         f"transformers' save_pretrained")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ValueError("--hf-model needs the optional extra: pip install 'longmix[hf]'") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--hf-model {folder!r}: transformers could not load a causal LM from it "
                         f"({err})") from err
    tokenizer = None
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return HFModelDir(model=model.eval(), tokenizer=tokenizer, folder=folder,
                      model_class=type(model).__name__)
