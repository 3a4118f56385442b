"""Packed documents (``cu_seqlens``) in every parallel form vs the documents run one by one on one
process, in float64: forward, input gradients and parameter gradients summed over ranks, P in
{1, 2, 3, 4}, both sequence layouts, and the ``doc_zigzag`` layout (every document zigzagged over
the ranks, so a rank holds scattered pieces of each) for one mixer of each form and a few more. Document splits put boundaries inside shards, exactly on shard edges,
documents shorter and longer than a shard, and one token long. Bad ``cu_seqlens`` (also different
on different ranks) raise the same clear error on every rank, and the group stays usable.

One launch per world size runs all its cases (process start-up costs seconds per launch).
"""
from __future__ import annotations

import pytest
import torch

import longmix.parallel as ld
from helpers import error_message, rel_err, summed_grads
from longmix import mixers
from longmix.models.model import build_model
from longmix.parallel.forms.model_plan import plan_model
from longmix.parallel.launch import run_local
from longmix.parallel.layout import all_segments

DIM, HEADS = 8, 4
SEQ_LEN = 13
TOL = 1e-10

# name -> (options, causal modes); every registered mixer that can mix packed documents
MIXERS = {
    "softmax": ({}, (True, False)),
    "softmax_window": ({"window": 3}, (True, False)),
    "linear": ({"chunk_size": 4}, (True,)),
    "performer": ({"features": 8}, (True, False)),
    "local": ({"block_size": 2}, (True,)),
    "bigbird": ({"block_size": 2}, (False,)),
    "nystrom": ({"landmarks": 3}, (False,)),
    "fnet": ({}, (False,)),
    "longconv": ({"filter_hidden": 8}, (True, False)),
    "hyena": ({"filter_hidden": 8, "short_kernel": 3}, (True, False)),
    "s4d": ({"d_state": 4}, (True, False)),
    # bidirectional mamba has no packed form: no state form, and its shuffle's short-conv halo
    # is not cut at boundaries (test_bad_cu_seqlens... checks the planner says so)
    "mamba": ({"d_state": 4, "d_conv": 3, "chunk_size": 3}, (True,)),
}


def make_mixer(key: str, causal: bool):
    options, _ = MIXERS[key]
    torch.manual_seed(0)
    return mixers.build(key.split("_")[0], DIM, heads=HEADS, causal=causal, max_len=64,
                        **options).double()


def splits(world: int, layout: str) -> dict[str, list[int]]:
    """Document lengths of SEQ_LEN rows: boundaries inside and on the edges of shards.
    ``doc_zigzag`` cuts inside documents only: its "edges" are the whole-sequence zigzag's, and
    documents of 2P tokens put every piece edge on a row (shorter ones leave pieces empty)."""
    if layout == "doc_zigzag":
        full, rest = divmod(SEQ_LEN, 2 * world)
        return {**splits(world, "zigzag"),
                "2P-token documents": [2 * world] * full + ([rest] if rest else [])}
    edges = sorted({s for member in all_segments(SEQ_LEN, world, layout) for s, _ in member} | {SEQ_LEN})
    return {
        "mixed": [1, 2, 7, 3],            # one token, shorter and longer than a shard
        # starts inside a middle shard, the document then spans shards (P = 2 zigzag, P = 4):
        # the state passed on must restart there
        "across shards": [5, 6, 2],
        "on shard edges": [b - a for a, b in zip(edges, edges[1:])],
        "one document": [SEQ_LEN],
        "single tokens": [1, 1, 1, SEQ_LEN - 4, 1],
    }


def cu(lengths) -> torch.Tensor:
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def check_mixer(group, key, causal, form, layout, split, lengths) -> list[str]:
    world = torch.distributed.get_world_size(group)
    name = f"{key} causal={causal} {form} {layout} P={world} docs={lengths} ({split})"
    mixer = make_mixer(key, causal)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, SEQ_LEN, DIM, generator=g, dtype=torch.float64)
    dy = torch.randn(1, SEQ_LEN, DIM, generator=g, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    ref = torch.cat([mixer(piece) for piece in x_ref.split(lengths, 1)], 1)  # the definition
    ref.backward(dy)
    ref_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in mixer.parameters()]
    mixer.zero_grad()

    stats = ld.CommStats()
    pmixer = ld.parallelize(mixer, group, layout, forms=form, packed=True, stats=stats)
    docs = cu(lengths)  # sequence layouts ignore it in shard/unshard; doc_zigzag places rows by it
    x_local = ld.shard(x, group, layout, cu_seqlens=docs).requires_grad_()
    y = pmixer(x_local, cu_seqlens=docs)
    forward_sent = stats.bytes_sent
    y.backward(ld.shard(dy, group, layout, cu_seqlens=docs))
    total_sent = stats.bytes_sent
    errors = {"out": rel_err(ld.unshard(y.detach(), group, layout, cu_seqlens=docs), ref.detach()),
              "dx": rel_err(ld.unshard(x_local.grad, group, layout, cu_seqlens=docs), x_ref.grad)}
    for (pname, _), got, want in zip(mixer.named_parameters(), summed_grads(mixer, group), ref_grads):
        errors[f"d{pname}"] = rel_err(got, want)
    worst = max(errors, key=errors.get)
    problems = [] if errors[worst] <= TOL else [f"{name}: {worst} error {errors[worst]:.2e}"]
    # the bytes are the planner's prediction (documents change no message in a sequence layout;
    # doc_zigzag's rows per rank and state summaries follow them)
    cost = plan_model(mixer, SEQ_LEN, world, 1, dtype=torch.float64, layout=layout, forms=form,
                      packed=True, cu_seqlens=docs).layers[0].cost()
    rank = torch.distributed.get_rank(group)
    for what, got, want in (("forward", forward_sent, cost.forward_bytes),
                            ("forward+backward", total_sent, None if cost.forward_bytes is None else
                             [f + b for f, b in zip(cost.forward_bytes, cost.backward_bytes)])):
        if want is not None and not want[rank] / 1.1 <= got <= want[rank] * 1.1:
            problems.append(f"{name}: rank {rank} sent {got} bytes in the {what} pass, predicted {want[rank]}")
    return problems


def cases(world: int) -> list[tuple]:
    out = []
    for i, (key, (_, modes)) in enumerate(MIXERS.items()):
        for causal in modes:
            mixer = make_mixer(key, causal)
            options = plan_model(mixer, None, world, packed=True).layers[0].options
            for form in [o.form for o in options if o.feasible]:
                for j, layout in enumerate(("contiguous", "zigzag")):
                    for split, lengths in splits(world, layout).items():
                        if world == 1 and split not in ("mixed", "across shards") or \
                                (i + j) % 2 and split == "one document":
                            continue
                        out.append((key, causal, form, layout, split, lengths))
    return out


def mixers_worker(group, cases) -> list[str]:
    return [p for case in cases for p in check_mixer(group, *case)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_packed_form_matches_documents_alone(world):
    todo = cases(world)
    forms = {(c[0], c[2]) for c in todo}
    assert {k for k, _ in forms} == set(MIXERS), "a mixer has no packed form"
    if world > 1:  # every form is covered by some mixer
        assert {f for _, f in forms} == {"shuffle", "state", "ring"}
    if world == 1:  # one process runs the mixer itself: every form, bidirectional mamba too
        assert plan_model(make_mixer("mamba", False), None, 1, packed=True, forms="shuffle").forms == ["shuffle"]
    results = run_local(mixers_worker, world, (todo,), timeout=540, collective_timeout=120)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- doc_zigzag
#: (mixer, causal, forms: None for every packed form it admits) run on the doc_zigzag layout:
#: softmax in the shuffle and the ring (causal: the ring's triangles of scattered pieces), mamba
#: in the state form (two stages), linear and s4d in the state form, s4d in the shuffle too (these
#: two on fewer splits: the forms' document handling is the same code as mamba's and softmax's)
DOC_ZIGZAG_MIXERS = (("softmax", True, None), ("softmax", False, ("ring",)), ("mamba", True, None),
                     ("linear", True, ("state",)), ("s4d", True, None))


def doc_zigzag_cases(world: int) -> list[tuple]:
    out = []
    for key, causal, only in DOC_ZIGZAG_MIXERS:
        options = plan_model(make_mixer(key, causal), None, world, packed=True).layers[0].options
        for form in [o.form for o in options if o.feasible and (only is None or o.form in only)]:
            for split, lengths in splits(world, "doc_zigzag").items():
                few = ("mixed",) if world == 1 else ("mixed", "on shard edges", "2P-token documents")
                if split in few or (world > 1 and key in ("softmax", "mamba")):
                    out.append((key, causal, form, "doc_zigzag", split, lengths))
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_doc_zigzag_forms_match_documents_alone(world):
    todo = doc_zigzag_cases(world)
    if world > 1:
        assert {c[2] for c in todo} == {"shuffle", "state", "ring"}
    results = run_local(mixers_worker, world, (todo,), timeout=300, collective_timeout=120)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- whole models
def models_worker(group) -> list[str]:
    problems = []
    for mixer, options, layout, forms in [("softmax", {}, "zigzag", "ring"),
                                          ("mamba", {"d_state": 4, "d_conv": 3}, "contiguous", None),
                                          ("hyena", {"filter_hidden": 8}, "zigzag", None),
                                          # positions restart at every document, also where a
                                          # rank holds scattered pieces of it
                                          ("softmax", {}, "doc_zigzag", "ring"),
                                          ("mamba", {"d_state": 4, "d_conv": 3}, "doc_zigzag", None)]:
        torch.manual_seed(0)
        model = build_model(vocab_size=11, mixer=mixer, head="lm", dim=DIM, depth=2, heads=HEADS,
                            max_len=32, mixer_options=options).double()
        lengths = [3, 1, 6, 4]
        tokens = torch.randint(0, 11, (1, sum(lengths)), generator=torch.Generator().manual_seed(2))
        dlogits = torch.randn(1, sum(lengths), 11, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(3))
        ref = torch.cat([model(piece) for piece in tokens.split(lengths, 1)], 1)
        ref.backward(dlogits)
        ref_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        model.zero_grad()
        pmodel = ld.parallelize(model, group, layout, forms=forms, packed=True)
        docs = cu(lengths)
        logits = pmodel(ld.shard(tokens, group, layout, cu_seqlens=docs), cu_seqlens=docs)
        logits.backward(ld.shard(dlogits, group, layout, cu_seqlens=docs))
        errors = {"logits": rel_err(ld.unshard(logits.detach(), group, layout, cu_seqlens=docs),
                                    ref.detach())}
        for (pname, _), got, want in zip(model.named_parameters(), summed_grads(model, group), ref_grads):
            errors[f"d{pname}"] = rel_err(got, want)
        worst = max(errors, key=errors.get)
        if errors[worst] > TOL:
            problems.append(f"model {mixer} {pmodel.forms}: {worst} error {errors[worst]:.2e}")
    return problems


def test_packed_models_match_documents_alone():
    results = run_local(models_worker, 3, timeout=240, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- errors
def errors_worker(group) -> dict:
    rank = torch.distributed.get_rank(group)
    mixer = make_mixer("mamba", True)
    x = torch.randn(1, 9, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x_local = ld.shard(x, group)
    pmixer = ld.parallelize(mixer, group, packed=True)
    doc_mixer = ld.parallelize(mixer, group, "doc_zigzag", packed=True)
    good = cu([4, 5])
    messages = {
        "not increasing on rank 1": error_message(lambda: pmixer(x_local, cu_seqlens=cu([4, 5]) if rank != 1
                                                            else torch.tensor([0, 5, 4, 9]))),
        "different per rank": error_message(lambda: pmixer(x_local, cu_seqlens=cu([4, 5]) if rank != 2
                                                      else cu([3, 6]))),
        "given on rank 0 only": error_message(lambda: pmixer(x_local, cu_seqlens=good if rank == 0 else None)),
        "wrong end": error_message(lambda: pmixer(x_local, cu_seqlens=cu([4, 6]))),
        "float dtype": error_message(lambda: pmixer(x_local, cu_seqlens=good.double())),
        "batch 2": error_message(lambda: pmixer(torch.cat([x_local, x_local]), cu_seqlens=good)),
        "shuffle form refused": error_message(lambda: ld.parallelize(mixer, group, forms="shuffle",
                                                                packed=True)),
        "linformer refused": error_message(lambda: ld.parallelize(
            mixers.build("linformer", DIM, heads=HEADS, max_len=16), group, packed=True)),
        "bidirectional mamba": error_message(lambda: ld.parallelize(make_mixer("mamba", False), group,
                                                               packed=True)),
        "ring window refused": error_message(lambda: ld.parallelize(make_mixer("softmax_window", True),
                                                               group, forms="ring", packed=True)),
        "unplanned shuffle": error_message(lambda: ld.parallelize(mixer, group, forms="shuffle")(
            x_local, cu_seqlens=good)),
        # doc_zigzag places rows by the documents: without them, or with rows of another layout
        "doc_zigzag forward without cu_seqlens": error_message(lambda: doc_mixer(
            ld.shard(x, group, "doc_zigzag", cu_seqlens=good))),
        "doc_zigzag rows of another layout": error_message(lambda: doc_mixer(x_local, cu_seqlens=good)),
        "doc_zigzag shard without cu_seqlens": error_message(lambda: ld.shard(x, group, "doc_zigzag")),
        "doc_zigzag unshard without cu_seqlens": error_message(lambda: ld.unshard(x_local, group,
                                                                                  "doc_zigzag")),
        "doc_zigzag unshard, different per rank": error_message(lambda: ld.unshard(
            ld.shard(x, group, "doc_zigzag", cu_seqlens=good), group, "doc_zigzag",
            cu_seqlens=good if rank != 1 else cu([3, 6]))),
        "doc_zigzag without packed=True": error_message(lambda: ld.parallelize(mixer, group,
                                                                               "doc_zigzag")),
        "doc_zigzag planned by seq_len": error_message(lambda: ld.parallelize(
            mixer, group, "doc_zigzag", packed=True, seq_len=9)),
    }
    # the group is still in step: a good call completes and is exact
    y = ld.unshard(pmixer(x_local, cu_seqlens=good).detach(), group)
    messages["good call error"] = rel_err(y, torch.cat([mixer(x[:, :4]), mixer(x[:, 4:])], 1).detach())
    return messages


def test_bad_cu_seqlens_raise_the_same_clear_error_on_every_rank():
    results = run_local(errors_worker, 3, timeout=120, collective_timeout=30)
    for key in results[0]:
        assert all(r[key] == results[0][key] for r in results), (key, [r[key] for r in results])
    got = results[0]
    assert "cu_seqlens must be strictly increasing" in got["not increasing on rank 1"]
    assert "rank(s) [1]" in got["not increasing on rank 1"]
    assert "same global tensor on every rank" in got["different per rank"]
    assert "[0, 1] vs [2]" in got["different per rank"]
    assert "given on every rank or on none" in got["given on rank 0 only"]
    assert "must end at the packed length 9, got 10" in got["wrong end"]
    assert "cu_seqlens" in got["float dtype"] and "torch.float64" in got["float dtype"]
    assert "batch 1, got batch 2" in got["batch 2"]
    assert "shuffle" in got["shuffle form refused"] and "short convolution" in got["shuffle form refused"]
    assert "sequence length" in got["linformer refused"] and "packed" in got["linformer refused"]
    assert "window" in got["ring window refused"]
    assert "no exact sequence-parallel form" in got["bidirectional mamba"]
    assert "short convolution" in got["bidirectional mamba"]
    assert "packed=True" in got["unplanned shuffle"] and "Mamba" in got["unplanned shuffle"]
    assert got["good call error"] < TOL
    for key in ("doc_zigzag forward without cu_seqlens", "doc_zigzag shard without cu_seqlens",
                "doc_zigzag unshard without cu_seqlens"):
        assert "layout 'doc_zigzag' places rows by packed documents and needs cu_seqlens" in got[key], key
    assert got["doc_zigzag forward without cu_seqlens"].startswith("parallelize:")
    assert "[3, 3, 3]" in got["doc_zigzag rows of another layout"]
    assert "'doc_zigzag' layout" in got["doc_zigzag rows of another layout"]
    assert "cu_seqlens=..." in got["doc_zigzag rows of another layout"]
    assert "the same on every rank (ranks passed different ones)" in got["doc_zigzag unshard, different per rank"]
    assert "pass packed=True" in got["doc_zigzag without packed=True"]
    assert "plan_model(..., packed=True, cu_seqlens=...)" in got["doc_zigzag planned by seq_len"]


# ----------------------------------------------------------------------------- the attention op
def attention_worker(group, layouts=("contiguous", "zigzag")) -> list[str]:
    """``longmix.parallel.attention(..., cu_seqlens=...)`` vs the materialized reference per
    document: forward and the gradients of q, k, v."""
    from helpers import reference_attention

    world = torch.distributed.get_world_size(group)
    problems = []
    g = torch.Generator().manual_seed(5)
    for strategy in ("shuffle", "ring", "auto"):
        for causal in (True, False):
            for window in (None, 3):
                if window is not None and strategy == "ring":
                    continue
                for layout in layouts:
                    for lengths in splits(world, layout).values():
                        q, k, v, dout = torch.randn(4, 1, SEQ_LEN, 12, 2, generator=g, dtype=torch.float64)
                        ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
                        ref = torch.cat([reference_attention(*(t[:, a:b] for t in ref_in), causal=causal,
                                                             window=window)
                                         for a, b in zip(cu(lengths)[:-1].tolist(), cu(lengths)[1:].tolist())], 1)
                        ref.backward(dout)
                        docs = cu(lengths)
                        local = [ld.shard(t, group, layout, cu_seqlens=docs).requires_grad_()
                                 for t in (q, k, v)]
                        out = ld.attention(*local, causal=causal, group=group, strategy=strategy,
                                           layout=layout, window=window, cu_seqlens=docs)
                        out.backward(ld.shard(dout, group, layout, cu_seqlens=docs))
                        errors = {"out": rel_err(ld.unshard(out.detach(), group, layout, cu_seqlens=docs),
                                                 ref.detach())}
                        for name, t, r in zip("qkv", local, ref_in):
                            errors[f"d{name}"] = rel_err(ld.unshard(t.grad, group, layout, cu_seqlens=docs),
                                                         r.grad)
                        worst = max(errors, key=errors.get)
                        if errors[worst] > TOL:
                            problems.append(f"attention {strategy} causal={causal} window={window} "
                                            f"{layout} P={world} docs={lengths}: {worst} {errors[worst]:.2e}")
    return problems


@pytest.mark.parametrize("world", [1, 3, 4])
def test_packed_attention_op_matches_documents_alone(world):
    results = run_local(attention_worker, world, timeout=300, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("world", [2, 4])
def test_doc_zigzag_attention_op_matches_documents_alone(world):
    results = run_local(attention_worker, world, (("doc_zigzag",),), timeout=300,
                        collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


def attention_errors_worker(group) -> dict:
    q = torch.randn(1, 3, 4, 2, dtype=torch.float64)  # 9 rows over 3 ranks
    good = cu([4, 5])
    return {
        "hybrid": error_message(lambda: ld.attention(q, q, q, group=group, strategy="hybrid", hybrid_size=1,
                                                cu_seqlens=good)),
        "ring window": error_message(lambda: ld.attention(q, q, q, group=group, strategy="ring", window=2,
                                                     cu_seqlens=good)),
        "wrong end": error_message(lambda: ld.attention(q, q, q, group=group, cu_seqlens=cu([4, 4]))),
        "different per rank": error_message(lambda: ld.attention(
            q, q, q, group=group, cu_seqlens=cu([4, 5]) if torch.distributed.get_rank(group) else cu([5, 4]))),
        "doc_zigzag without cu_seqlens": error_message(lambda: ld.attention(q, q, q, group=group,
                                                                            layout="doc_zigzag")),
        "doc_zigzag, rows of another layout": error_message(lambda: ld.attention(
            q, q, q, group=group, layout="doc_zigzag", cu_seqlens=good)),
    }


def test_packed_attention_op_errors_are_the_same_on_every_rank():
    results = run_local(attention_errors_worker, 3, timeout=120, collective_timeout=30)
    for key in results[0]:
        assert all(r[key] == results[0][key] for r in results), (key, [r[key] for r in results])
    got = results[0]
    assert "'shuffle' and 'ring', got strategy='hybrid'" in got["hybrid"]
    assert "window=2 needs strategy='shuffle'" in got["ring window"]
    assert "must end at the packed length 9, got 8" in got["wrong end"]
    assert "same global tensor on every rank" in got["different per rank"]
    assert "layout 'doc_zigzag' places rows by packed documents and needs cu_seqlens" in \
        got["doc_zigzag without cu_seqlens"]
    assert "expected [2, 3, 4]" in got["doc_zigzag, rows of another layout"]


# ----------------------------------------------------------------------------- the ring's plan
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "doc_zigzag"])
@pytest.mark.parametrize("causal", [True, False])
def test_ring_plan_computes_only_pairs_inside_documents(world, layout, causal):
    """The blocks the ring computes with documents cover exactly the query-key pairs inside
    documents (causal: the per-document triangles), none that a boundary masks."""
    from longmix.parallel.attn.ring import _block_plan, _cut_at_documents

    for lengths in list(splits(world, layout).values()) + [[2] * 6 + [1]]:
        bounds = tuple(cu(lengths).tolist())
        segs = [_cut_at_documents(member, bounds)
                for member in all_segments(SEQ_LEN, world, layout, cu_seqlens=bounds)]
        pairs = set()
        for me in range(world):
            for j in range(world):
                for q_ids, k_ids, diagonal in _block_plan(segs[me], segs[j], causal, bounds):
                    for qi in q_ids:
                        for ki in k_ids:
                            (qs, qn), (ks, kn) = segs[me][qi], segs[j][ki]
                            block = {(t, s) for t in range(qs, qs + qn) for s in range(ks, ks + kn)
                                     if not diagonal or s <= t}
                            assert not block & pairs, "a pair computed twice"
                            pairs |= block
        doc = [i for i, n in enumerate(lengths) for _ in range(n)]
        expected = {(t, s) for t in range(SEQ_LEN) for s in range(SEQ_LEN)
                    if doc[t] == doc[s] and (s <= t or not causal)}
        assert pairs == expected, lengths
