"""generate() over 1, 2 and 3 ranks equals one process, for every causal mixer it supports.

float64: the logits of every generated position equal a single-process full forward over the
prompt and the generated tokens (~1e-10), greedy tokens equal a naive greedy loop's (a full
forward per token), sampled tokens equal one process's with the same seed, and every rank
returns the same tokens. Prompts shorter than P leave ranks without prefill rows.
"""
from __future__ import annotations

import pytest
import torch

from generate_cases import (Case, causal_mixers, generate_worker, make_model, make_prompt,
                            reference_greedy, reference_logits)
from longmix.generate import decode_kind, expected_cache_bytes
from longmix.parallel.launch import run_local

TOL = 1e-10
def decodable() -> list[str]:
    names = causal_mixers()  # every one decodes: softmax, the state mixers, longconv and hyena
    assert {"softmax", "mamba", "longconv", "hyena"} <= set(names)
    return names


def cases_for(world: int) -> list[Case]:
    cases = []
    for i, mixer in enumerate(decodable()):
        for layout in ("contiguous", "zigzag"):
            cases.append(Case(mixer, prompt_len=7, layout=layout))
        cases.append(Case(mixer, prompt_len=2, layout=("zigzag", "contiguous")[i % 2]))  # L < P at P = 3
    # a sliding window: only the last window - 1 keys are kept, evicted as decoding goes on
    cases += [Case("softmax", prompt_len=7, layout=layout, new_tokens=7, options={"window": 3})
              for layout in ("contiguous", "zigzag")]
    cases.append(Case("softmax", prompt_len=1, new_tokens=4, batch=1))
    return cases


def check(case: Case, results: list, world: int) -> list[str]:
    problems = []
    tokens, logits, _, forms = results[0]
    for rank, (t, _, _, _) in enumerate(results):
        if not torch.equal(t, tokens):
            problems.append(f"{case.name} P={world}: rank {rank}'s tokens {t.tolist()} differ from "
                            f"rank 0's {tokens.tolist()}")
    model, prompt = make_model(case), make_prompt(case)
    assert tokens.shape == (case.batch, case.new_tokens)
    err = (logits - reference_logits(model, prompt, tokens)).abs().max().item()
    if not err <= TOL:
        problems.append(f"{case.name} P={world} forms={forms}: logits differ from one forward by {err:.3g}")
    if case.temperature == 0:
        greedy = reference_greedy(model, prompt, case.new_tokens)
        if not torch.equal(tokens, greedy):
            problems.append(f"{case.name} P={world}: greedy {tokens.tolist()} != one process's {greedy.tolist()}")
    for rank, (_, _, nbytes, _) in enumerate(results):
        want = expected_cache_bytes(model, case.prompt_len, case.new_tokens, world, rank,
                                    case.layout, case.batch)
        if nbytes != want:
            problems.append(f"{case.name} P={world}: rank {rank} holds {nbytes} cache bytes, "
                            f"the formula says {want}")
    return problems


@pytest.mark.parametrize("world", [1, 2, 3])
def test_generate_matches_one_process(world):
    cases = cases_for(world)
    results = run_local(generate_worker, world, (cases,), timeout=240, collective_timeout=60)
    problems = [p for i, case in enumerate(cases)
                for p in check(case, [r[i] for r in results], world)]
    assert not problems, "\n".join(problems)
    if world > 1:  # the softmax prefill ran sharded (ring or shuffle), the state mixers by state
        forms = {case.mixer: results[0][i][3] for i, case in enumerate(cases)}
        assert set(forms["mamba"]) == {"state"} and set(forms["softmax"]) <= {"ring", "shuffle"}


def test_sampling_is_the_same_for_every_world_size():
    """The same seed draws the same tokens on 1 and 3 ranks (logits agree to ~1e-15 and the
    generator is seeded identically)."""
    cases = [Case("mamba", prompt_len=6, temperature=1.3, top_p=0.95, new_tokens=8, seed=7),
             Case("softmax", prompt_len=5, layout="zigzag", temperature=0.9, top_k=6, top_p=0.8,
                  new_tokens=8, seed=3)]
    one = run_local(generate_worker, 1, (cases,), timeout=120)[0]
    three = run_local(generate_worker, 3, (cases,), timeout=120, collective_timeout=60)
    for i, case in enumerate(cases):
        assert not check(case, [r[i] for r in three], 3)  # logits exact at the sampled tokens
        assert torch.equal(three[0][i][0], one[i][0]), case.name
        assert len(set(one[i][0].flatten().tolist())) > 1  # it sampled, not a constant


def test_every_causal_mixer_has_a_decode_kind_and_others_are_refused():
    from longmix import mixers

    kinds = {name: decode_kind(make_model(Case(name, prompt_len=3)).blocks[0].mixer)
             for name in causal_mixers()}
    assert kinds["softmax"] == "kv" and kinds["mamba"] == "state" and kinds["hyena"] == "history"
    with pytest.raises(ValueError, match="'softmax' is not causal: it cannot generate"):
        decode_kind(mixers.build("softmax", 8, causal=False))
