"""Packed documents (``cu_seqlens``): every mixer's output on a packed sequence equals each
document run alone, concatenated (the definition), in float64, forward and input gradients.
Mixers come from the registry, so a new mixer is covered automatically."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from longmix import mixers
from longmix.models import ModelConfig, build_model
from longmix.ops.documents import check_cu_seqlens, cuts_within, document_positions

DIM, HEADS = 8, 2
SPLITS = {"many": [3, 1, 5, 2, 6, 1, 2], "one": [13], "single-token": [1, 11, 1], "two": [7, 6]}
OPTIONS = {"local": dict(block_size=4), "mamba": dict(chunk_size=3), "linear": dict(chunk_size=4),
           "performer": dict(chunk_size=4)}
VARIANTS = [(name, causal) for name in mixers.available()
            for causal in ((False, True) if mixers.get_class(name).taxonomy.causal else (False,))]
REFUSED = {name for name in mixers.available() if mixers.get_class(name).requires_max_len}


def make(name, causal, seed=0):
    torch.manual_seed(seed)
    return mixers.build(name, DIM, heads=HEADS, causal=causal, max_len=32,
                        **OPTIONS.get(name, {})).double()


def cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def assert_close(a, b, tol=1e-10):
    assert a.shape == b.shape
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()
    assert err < tol, f"relative error {err:.3g} >= {tol:g}"


@pytest.mark.parametrize("name,causal", VARIANTS, ids=[f"{n}-{'causal' if c else 'bi'}" for n, c in VARIANTS])
@pytest.mark.parametrize("split", list(SPLITS))
def test_packed_equals_documents_alone(name, causal, split):
    mixer = make(name, causal)
    lengths = SPLITS[split]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, sum(lengths), DIM, generator=g, dtype=torch.float64, requires_grad=True)
    if name in REFUSED:
        with pytest.raises(ValueError, match=rf"{type(mixer).__name__}: cu_seqlens .*not supported.*sequence length"):
            mixer(x, cu_seqlens=cu(lengths))
        return
    packed = mixer(x, cu_seqlens=cu(lengths))
    alone = torch.cat([mixer(piece) for piece in x.split(lengths, 1)], 1)
    assert_close(packed, alone)
    w = torch.randn(packed.shape, generator=g, dtype=torch.float64)
    (gp,) = torch.autograd.grad((packed * w).sum(), x)
    (ga,) = torch.autograd.grad((alone * w).sum(), x)
    assert_close(gp, ga)
    if len(lengths) > 1:  # the packing matters: mixing across the boundaries differs
        assert (mixer(x) - packed).abs().max() > 1e-6


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([0, 3, 2, 13]), "strictly increasing"),
    (torch.tensor([0, 3, 3, 13]), "strictly increasing"),
    (torch.tensor([1, 5, 13]), "start at 0"),
    (torch.tensor([0, 5, 12]), "end at the packed length 13"),
    (torch.tensor([0.0, 13.0]), "dtype torch.float32"),
    (torch.tensor([[0, 13]]), "1-D"),
    (torch.tensor([0]), "at least 2"),
])
def test_bad_cu_seqlens(bad, match):
    mixer = make("linear", True)
    x = torch.randn(1, 13, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"LinearAttention: cu_seqlens .*{match}"):
        mixer(x, cu_seqlens=bad)


def test_packed_needs_batch_one_and_a_tensor():
    mixer = make("s4d", True)
    with pytest.raises(ValueError, match="batch 1, got batch 2"):
        mixer(torch.randn(2, 6, DIM, dtype=torch.float64), cu_seqlens=cu([2, 4]))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D int32/int64 tensor.*got list"):
        mixer(torch.randn(1, 6, DIM, dtype=torch.float64), cu_seqlens=[0, 2, 6])


def test_document_helpers():
    bounds = check_cu_seqlens(cu([3, 1, 5]), 9)
    assert bounds == (0, 3, 4, 9)
    assert cuts_within(bounds, 0, 9) == [3, 4]
    assert cuts_within(bounds, 3, 4) == []
    assert cuts_within(bounds, 2, 5) == [3, 4]
    assert document_positions(bounds, torch.arange(9)).tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4]
    assert document_positions(bounds, torch.tensor([8, 3])).tolist() == [4, 0]


@pytest.mark.parametrize("mixer_name", ["softmax", "mamba", "hyena"])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_model_packed_equals_documents_alone(mixer_name, positional):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=11, mixer=mixer_name, head="lm", dim=DIM, depth=2,
                                    heads=HEADS, max_len=32, positional=positional)).double()
    lengths = [4, 1, 6, 3]
    tokens = torch.randint(0, 11, (1, sum(lengths)))
    packed = model(tokens, cu_seqlens=cu(lengths))
    alone = torch.cat([model(piece) for piece in tokens.split(lengths, 1)], 1)
    assert_close(packed, alone)
    weights = torch.randn(packed.shape, dtype=torch.float64)
    gp = torch.autograd.grad((packed * weights).sum(), list(model.parameters()), allow_unused=True)
    ga = torch.autograd.grad((alone * weights).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(gp, ga):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


def test_model_packed_refuses_classify_head():
    model = build_model(ModelConfig(vocab_size=11, mixer="softmax", head="classify", dim=DIM))
    with pytest.raises(ValueError, match="cu_seqlens .*lm head"):
        model(torch.randint(0, 11, (1, 6)), cu_seqlens=cu([2, 4]))


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=6),
       name=st.sampled_from(["softmax", "mamba", "hyena", "local"]))
def test_random_splits(lengths, name):
    """Property: any split into documents equals the documents run alone."""
    mixer = make(name, True)
    x = torch.randn(1, sum(lengths), DIM, dtype=torch.float64)
    assert_close(mixer(x, cu_seqlens=cu(lengths)),
                 torch.cat([mixer(piece) for piece in x.split(lengths, 1)], 1))
