"""Shared by the generate tests: tiny float64 models every rank builds identically, and the
single-process references (a full forward, a naive greedy loop) that know nothing of caches."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longmix import mixers
from longmix.models.model import build_model

VOCAB = 13


def causal_mixers() -> list[str]:
    """Every registered mixer that can run causally (the ones an lm can use)."""
    return [n for n in mixers.available() if mixers.get_class(n).taxonomy.causal]


#: the options that make each causal mixer's tiny model exercise its state (small blocks, a window)
OPTIONS = {"local": {"block_size": 2}}


@dataclass(frozen=True)
class Case:
    mixer: str
    prompt_len: int
    layout: str = "contiguous"
    new_tokens: int = 5
    options: dict = field(default_factory=dict)
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    batch: int = 2
    seed: int = 0

    @property
    def name(self) -> str:
        extra = f" {self.options}" if self.options else ""
        sample = f" T={self.temperature} k={self.top_k} p={self.top_p}" if self.temperature else ""
        return f"{self.mixer}{extra} L={self.prompt_len} {self.layout}{sample}"


def make_model(case: Case):
    torch.manual_seed(case.seed)
    options = {**OPTIONS.get(case.mixer, {}), **case.options}
    model = build_model(vocab_size=VOCAB, mixer=case.mixer, head="lm", dim=8, depth=2, heads=2,
                        mixer_options=options)
    return model.double().eval()


def make_prompt(case: Case) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + case.seed)
    return torch.randint(0, VOCAB, (case.batch, case.prompt_len), generator=g)


@torch.no_grad()
def reference_logits(model, prompt, tokens) -> torch.Tensor:
    """Logits of each new position from one forward over prompt + new tokens: (B, N, vocab)."""
    full = torch.cat([prompt, tokens], 1)
    n = tokens.shape[1]
    return model(full)[:, prompt.shape[1] - 1: prompt.shape[1] - 1 + n]


@torch.no_grad()
def reference_greedy(model, prompt, n) -> torch.Tensor:
    """Greedy tokens by a full forward per token, no cache."""
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[:, prompt.shape[1]:]


def generate_worker(group, cases: list[Case]) -> list[tuple]:
    """Rank function: (tokens, logits, cache bytes) of every case on this rank."""
    from longmix.generate import GenerationStats, generate

    out = []
    for case in cases:
        model, prompt = make_model(case), make_prompt(case)
        stats = GenerationStats()
        tokens, logits = generate(model, prompt, case.new_tokens, group=group, layout=case.layout,
                                  temperature=case.temperature, top_k=case.top_k, top_p=case.top_p,
                                  seed=case.seed, output_logits=True, stats=stats)
        out.append((tokens, logits, stats.cache_bytes, stats.forms))
    return out
