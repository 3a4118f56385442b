"""generate() refuses what it cannot run before the prefill, with clear ValueErrors (the same on
every rank), and a rank that dies or leaves during decoding makes the others fail fast."""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from generate_cases import VOCAB, Case, make_model, make_prompt
from longmix.generate import DecodeError, generate
from longmix.models.model import build_model
from longmix.parallel.launch import RankFailure, run_local


@pytest.fixture(scope="module")
def model():
    return make_model(Case("softmax", prompt_len=4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "empty prompt"),
    (dict(input_ids=torch.zeros(0, 3, dtype=torch.long)), "at least one sequence"),
    (dict(input_ids=torch.zeros(3, dtype=torch.long)), r"\(batch, length\) LongTensor"),
    (dict(input_ids=torch.zeros(1, 3)), r"LongTensor, got torch.float32"),
    (dict(input_ids=torch.full((1, 3), VOCAB)), rf"token ids must be in \[0, {VOCAB}\)"),
    (dict(input_ids=torch.full((1, 3), -1)), "token ids must be in"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an int >= 0"),
    (dict(layout="striped"), "layout must be one of"),
    (dict(layout="doc_zigzag"), "generate: layout 'doc_zigzag' places rows by packed documents"),
    (dict(temperature=-1.0), "temperature must be a number >= 0"),
    (dict(top_k=0), "top_k must be None or an int >= 1"),
    (dict(top_p=1.5), r"top_p must be None or a number in \(0, 1\]"),
    (dict(seed=-3), "seed must be an int >= 0"),
])
def test_bad_requests_are_refused(model, kwargs, match):
    args = dict(input_ids=torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(model, **args)


def test_models_that_cannot_generate_are_refused():
    ids = torch.zeros(1, 3, dtype=torch.long)
    bidirectional = build_model(vocab_size=VOCAB, mixer="softmax", head="classify", dim=8)
    with pytest.raises(ValueError, match="bidirectional model reads the future"):
        generate(bidirectional, ids, 2)
    with pytest.raises(ValueError, match="must be a longmix SequenceModel"):
        generate(torch.nn.Linear(3, 3), ids, 2)
    short = build_model(vocab_size=VOCAB, mixer="mamba", head="lm", dim=8, max_len=6)
    with pytest.raises(ValueError, match=r"plus max_new_tokens \(4\) exceeds the model's max_len=6"):
        generate(short, ids, 4)
    assert generate(short, ids, 3).shape == (1, 3)  # exactly max_len fits


def test_zero_and_one_new_tokens(model):
    ids = make_prompt(Case("softmax", prompt_len=4))
    tokens, logits = generate(model, ids, 0, output_logits=True)
    assert tokens.shape == (2, 0) and logits.shape == (2, 0, VOCAB)
    tokens, logits = generate(model, ids, 1, output_logits=True)
    torch.testing.assert_close(logits[:, 0], model(ids)[:, -1], rtol=0, atol=1e-12)


def disagreeing_worker(group, what):
    rank = dist.get_rank(group)
    model, ids = make_model(Case("linear", prompt_len=5)), make_prompt(Case("linear", prompt_len=5))
    if rank == 1:
        if what == "prompt":
            ids = ids.flip(1)
        else:  # this rank alone refuses: the others must not wait for it
            ids = ids + VOCAB
    try:
        generate(model, ids, 3, group=group)
    except ValueError as exc:
        return str(exc)
    return "no error"


@pytest.mark.parametrize("what, match", [("prompt", "every rank must pass the same input_ids"),
                                         ("vocab", r"generate: invalid arguments on rank\(s\) \[1\]: token ids must be in")])
def test_ranks_that_disagree_all_refuse(what, match):
    messages = run_local(disagreeing_worker, 3, (what,), timeout=120, collective_timeout=30)
    assert all(m == messages[0] for m in messages), messages
    assert __import__("re").search(match, messages[0]), messages[0]


def _fail_at_decode_step(model, rank, bad_rank, action, step=3):
    """Make ``bad_rank`` run ``action`` when the model's head runs for the ``step``-th time
    (the head runs once after the prefill, then at the end of each decode step: the 3rd call
    ends step 2, so the collectives of step 3 are the first to miss the rank)."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if rank == bad_rank and len(calls) == step:
            action()
    model.head.register_forward_hook(hook)


def dying_worker(group):
    rank = dist.get_rank(group)
    case = Case("softmax", prompt_len=9)
    model = make_model(case)
    _fail_at_decode_step(model, rank, 1, lambda: os._exit(3))
    return generate(model, make_prompt(case), 8, group=group)


def test_a_rank_killed_during_decode_is_named_quickly():
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        run_local(dying_worker, 3, timeout=120, collective_timeout=20)
    assert "rank 1" in str(info.value)
    assert time.monotonic() - start < 60


class _Left(Exception):
    pass


def _leave():
    dist.destroy_process_group()  # closes this rank's connections, as a crashed peer's close
    raise _Left


def leaving_worker(group):
    """Rank 1 tears its group down mid-decode; the others must raise DecodeError, not hang."""
    rank = dist.get_rank(group)
    case = Case("softmax", prompt_len=9)
    model = make_model(case)
    _fail_at_decode_step(model, rank, 1, _leave)
    start = time.monotonic()
    try:
        generate(model, make_prompt(case), 8, group=group)
    except DecodeError as exc:
        return time.monotonic() - start, str(exc)
    except _Left:
        return None
    return "finished"


def test_peers_of_a_rank_gone_during_decode_raise_decode_error():
    results = run_local(leaving_worker, 3, timeout=120, collective_timeout=20)
    assert results[1] is None
    for rank in (0, 2):
        seconds, message = results[rank]
        assert f"rank {rank} of 3: a collective failed at decode step 3 of 7" in message, message
        assert seconds < 20, f"rank {rank} waited {seconds:.1f}s"
