"""`longmix train --pack`: documents packed into --context tokens with their cu_seqlens.

A packed step is, in float64, the documents run one by one (loss and gradients); two ranks train
exactly like one process; combinations that cannot pack are refused naming the option."""
import itertools
import json

import pytest
import torch

from longmix import tasks
from longmix.cli import main
from longmix.models import ModelConfig, SequenceModel
from longmix.parallel.forms.parallelize import parallelize
from longmix.parallel.launch import run_local
from longmix.train import TrainConfig, train
from longmix.train.loss import loss_sum, scored_targets
from longmix.train.packed_step import packed_step
from longmix.train import packing
from longmix.train.packing import pack, packed_batch
from longmix.train.ranks import Ranks
from test_procs import as_ranks, assert_close, in_float64, outcome

pytestmark = pytest.mark.usefixtures("toy_registry")


def docs(*lengths):
    """Documents whose tokens say which document and position they are (1-based, never pad)."""
    return [(torch.arange(n) + 10 * (i + 1), torch.arange(n) + 10 * (i + 1) + 1) for i, n in enumerate(lengths)]


def test_pack_lays_documents_end_to_end_and_pads_only_the_room_left(monkeypatch):
    batch = pack(iter(docs(3, 1, 4, 6, 2, 5)), rows=2, context=8, pad_id=0)
    # row 0: 3 + 1 + 4 = 8 exactly; row 1: 6, then 2 fits exactly; the 5 is not drawn
    assert [c.tolist() for c in batch.cu_seqlens] == [[0, 3, 4, 8], [0, 6, 8]]
    assert batch.drawn == (0, 1, 2, 3, 4) and batch.tokens == 16 and batch.padding_fraction == 0.0
    assert batch.x[0].tolist() == [10, 11, 12, 20, 30, 31, 32, 33]
    assert batch.y[1].tolist() == [41, 42, 43, 44, 45, 46, 51, 52]
    # look-ahead: the 4 does not fit after the 5, is held back, and opens the next row
    batch = pack(iter(docs(5, 4, 1, 2)), rows=2, context=6, pad_id=0)
    assert [c.tolist() for c in batch.cu_seqlens] == [[0, 5, 6], [0, 4, 6]]
    assert batch.drawn == (0, 2, 1, 3) and batch.padding_fraction == 0.0
    # with one document held back at most, the room left is one unscored pad segment
    monkeypatch.setattr(packing, "LOOK_AHEAD", 1)
    batch = pack(iter(docs(5, 4, 1, 2)), rows=2, context=6, pad_id=0)
    assert [c.tolist() for c in batch.cu_seqlens] == [[0, 5, 6], [0, 4, 5, 6]]
    assert batch.drawn == (0, 1, 2) and batch.tokens == 10
    assert batch.x[0, 5] == 0 and batch.y[0, 5] == 0 and batch.x[1, 5] == 0
    assert batch.padding_fraction == pytest.approx(2 / 12)


def test_a_document_longer_than_the_context_is_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"--pack: task 'toy' has documents of up to 7 tokens, more "
                                         r"than --context 6.*--context >= 7"):
        pack(iter(docs(2, 7)), rows=1, context=6, pad_id=0, task_name="toy")


MIXERS = ["softmax", "mamba", "hyena", "linear", "toy_attention"]


def float64_model(task, mixer):
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(vocab_size=task.vocab_size, mixer=mixer, head="lm", dim=8,
                                     depth=2, heads=2 if mixer == "softmax" else 1, max_len=16,
                                     positional="learned")).double()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_by_one(model, task, batch, index):
    """(mean loss, gradients) of the batch's documents, taken straight from the task's stream
    and each run alone (batch 1, no cu_seqlens): the reference of a packed step."""
    model.zero_grad()
    stream = list(itertools.islice(task.documents("train", index), max(batch.drawn) + 1))
    documents = [stream[i] for i in batch.drawn]
    assert min(len(x) for x, _ in documents) == 1  # the edge: a one-token document
    total, scored = 0.0, 0
    for x, y in documents:
        s, n = loss_sum(model(x[None]), scored_targets(y[None], "lm", task.pad_id), "lm")
        total, scored = total + s, scored + n
    (total / scored).backward()
    return total.item() / scored, grads(model)


def assert_same_step(got, want):
    (loss, g), (ref_loss, ref) = got, want
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert g.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(g[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("mixer", MIXERS)
def test_a_packed_step_is_the_documents_run_one_by_one_in_float64(mixer):
    task = tasks.build("toy_docs", seed=1, length=12)
    model = float64_model(task, mixer)
    batch = packed_batch(task, "train", 3, rows=2, context=16)
    assert any(len(c) > 3 for c in batch.cu_seqlens) and batch.tokens < batch.x.numel()
    loss = packed_step(model, batch, task.pad_id, Ranks.single(), torch.device("cpu"))
    assert_same_step((loss, grads(model)), one_by_one(model, task, batch, 3))


STEP_CASES = [("softmax", "zigzag", "ring"), ("mamba", "contiguous", "state")]


def packed_step_as_rank(group, cases):
    """Each case's packed step on this rank (context 15: shards of unequal length), gradients
    summed over the ranks as the trainer does."""
    import toys

    toys.register_toys()
    out = []
    for mixer, layout, form in cases:
        task = tasks.build("toy_docs", seed=1, length=12)
        model = float64_model(task, mixer)
        ranks = Ranks.of(group, layout)
        runner = parallelize(model, group, layout=layout, forms=form, packed=True)
        batch = packed_batch(task, "train", 5, rows=2, context=15)
        loss = packed_step(runner, batch, task.pad_id, ranks, torch.device("cpu"))
        ranks.sum_gradients(model)
        out.append((loss, grads(model)))
    return out


def test_a_packed_step_on_two_ranks_is_the_documents_run_one_by_one_in_float64():
    got = run_local(packed_step_as_rank, 2, args=(STEP_CASES,), timeout=240)
    task = tasks.build("toy_docs", seed=1, length=12)
    batch = packed_batch(task, "train", 5, rows=2, context=15)
    for i, (mixer, _, _) in enumerate(STEP_CASES):
        want = one_by_one(float64_model(task, mixer), task, batch, 5)
        for rank in got:
            assert_same_step(rank[i], want)


# -- the run: two ranks equal one process ---------------------------------------------------
CASES = {  # context 15: shards of unequal length, on the ring (softmax) and state passing (mamba)
    "softmax-ring-zigzag": dict(mixer="softmax", heads=2, layout="zigzag", context=15, form="ring"),
    "mamba-state": dict(mixer="mamba", layout="contiguous", context=15),
    "softmax-data-parallel": dict(mixer="softmax", heads=2, context=16, seq_parallel=1),
}
COMMON = dict(task="toy_docs", task_params={"length": 12}, steps=3, batch_size=2, dim=8, depth=2,
              eval_every=3, eval_batches=2, checkpoint_every=2, progress=False, threads=1,
              lr=3e-3, pack=True)


def config(out, name, **kw):
    return TrainConfig(**{**COMMON, **CASES[name], "out": str(out), **kw})


def test_two_ranks_train_packed_exactly_like_one_process_and_refuse_alike(tmp_path):
    names = list(CASES)
    one = [in_float64(config(tmp_path / f"p1-{n}", n)) for n in names]
    # and, in the same launch, a mixer that cannot pack: every rank raises the refusal
    sized = TrainConfig(**{**COMMON, "mixer": "toy_causal_lowrank", "context": 16,
                           "out": str(tmp_path / "p2-sized")})
    got = run_local(as_ranks, 2, args=([config(tmp_path / f"p2-{n}", n) for n in names] + [sized],),
                    timeout=240)
    for rank in got:
        kind, message = rank[len(names)]
        assert kind == "ValueError" and "--pack: mixer 'toy_causal_lowrank' cannot run packed" in message
    for i, name in enumerate(names):
        (rec1, w1), (rec2, w2) = one[i], got[0][i]
        assert got[1][i][0] == rec2  # every rank returns rank 0's record
        assert rec1["packed"] is rec2["packed"] is True and rec2["world_size"] == 2
        assert rec1["packing"]["documents"] > 3 * 2 and 0 <= rec1["packing"]["padding_fraction"] < 0.5
        if name == "mamba-state":
            assert rec2["forms"] == ["state", "state"]
        for key in ("history", "test", "valid", "steps", "tokens_seen", "run_id", "packing"):
            assert_close(rec2[key], rec1[key], f"{name}: {key}")
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-9, atol=1e-10, msg=f"{name}: {k}")


# -- what cannot pack is refused, naming the option ----------------------------------------
def test_combinations_that_cannot_pack_are_refused_naming_the_option(tmp_path):
    refused = {  # config -> what the message must say
        "sized by length": (dict(mixer="toy_causal_lowrank", context=16),
                            "--pack: mixer 'toy_causal_lowrank' cannot run packed documents: its "
                            "weights are sized by the sequence length"),
        # the registered mixers sized by length (mlpmixer, linformer) cannot drive an lm head at all
        "mlpmixer": (dict(mixer="mlpmixer", context=16), "mixer 'mlpmixer' (mlp) cannot run causally"),
        "too long": (dict(mixer="softmax", context=8),
                     "--pack: task 'toy_docs' has documents of up to 12 tokens, more than --context 8"),
        "classify": (dict(mixer="softmax", context=16, task="passkey", task_params={"length": 16}),
                     "--pack needs a language-modelling task"),
    }
    for name, (kw, message) in refused.items():
        kind, got = outcome(TrainConfig(**{**COMMON, **kw, "out": str(tmp_path / name)}))
        assert kind == "ValueError" and message in got, (name, got)
    with pytest.raises(ValueError, match="train_last=4 does not apply with pack=True"):
        TrainConfig(**{**COMMON, "mixer": "softmax", "context": 16, "train_last": 4})


def test_cli_pack_flag_trains_packed_and_refuses_with_exit_2(tmp_path, capsys):
    base = ["train", "--task", "toy_docs", "--task-param", "length=12", "--mixer", "softmax",
            "--steps", "2", "--batch-size", "2", "--dim", "8", "--eval-batches", "1", "--quiet",
            "--threads", "1", "--pack"]
    assert main(base + ["--context", "16", "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["packed"] is True
    assert main(base + ["--context", "8", "--out", str(tmp_path / "b")]) == 2
    assert "--pack: task 'toy_docs' has documents of up to 12 tokens, more than --context 8" in \
        capsys.readouterr().err


def test_an_interrupted_packed_run_resumes_to_the_uninterrupted_record(tmp_path, monkeypatch):
    clean = train(config(tmp_path / "clean", "mamba-state", steps=4, procs=1))
    from longmix.train import loop

    calls = []

    def stop_at_the_third_step(*args):
        calls.append(1)
        if len(calls) == 3:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return packed_step(*args)

    monkeypatch.setattr(loop, "packed_step", stop_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "cut", "mamba-state", steps=4, procs=1))
    monkeypatch.setattr(loop, "packed_step", packed_step)
    resumed = train(config(tmp_path / "cut", "mamba-state", steps=4, procs=1))
    assert resumed["sessions"] == 2 and clean["sessions"] == 1
    for key in ("history", "test", "valid", "packing", "tokens_seen"):
        assert_close(resumed[key], clean[key], key)
