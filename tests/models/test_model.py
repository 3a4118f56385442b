"""The model stack: shapes and gradients for both heads, causality of the LM head, pooling and
positions against independent float64 computations, and clear errors."""
import math

import pytest
import torch

from longmix import mixers
from longmix.models import FAMILY_DEFAULT, ModelConfig, build_model, resolve, sinusoidal_table

pytestmark = pytest.mark.usefixtures("toy_registry")

VOCAB, B, L = 11, 3, 17
# Real mixers are added when their families have landed; the toys always run.
REAL = [n for n in ("softmax", "s4d", "hyena", "local") if n in mixers.available()][:2]
CAUSAL_MIXERS = ["toy_attention"] + REAL


def tokens(seed=0, length=L, pad=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (B, length), generator=g)
    x[:, :pad] = 0  # left padding, as tasks produce it
    return x


def make(mixer, head="classify", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, mixer=mixer, head=head, num_classes=5, dim=8, depth=2,
                      heads=2, max_len=32, **kw)
    return build_model(cfg)


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
@pytest.mark.parametrize("head", ["classify", "lm"])
def test_forward_backward_shapes_and_gradients(mixer, head):
    model = make(mixer, head)
    out = model(tokens(pad=4))
    assert out.shape == ((B, 5) if head == "classify" else (B, L, VOCAB))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # Position-0 learned tables etc. may legitimately get zero grads; every block must learn.
    assert not [n for n in no_grad if n.startswith(("blocks", "embed", "head"))], no_grad


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_lm_head_is_causal(mixer):
    model = make(mixer, "lm").double().eval()
    x = tokens()
    with torch.no_grad():
        before = model(x)
        for t in (0, 8, 15):
            x2 = x.clone()
            x2[:, t + 1:] = (x2[:, t + 1:] % (VOCAB - 1)) + 1  # change every future token
            after = model(x2)
            assert torch.allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-12, rtol=0)
            assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])


def test_mean_pool_matches_float64_reference_and_ignores_pad_features():
    model = make("toy_attention").double().eval()
    x = tokens(pad=5)
    with torch.no_grad():
        h = model.features(x)  # (B, L, dim)
        expected = torch.stack([h[b, 5:].mean(0) for b in range(B)]) @ model.head.weight.T + model.head.bias
        assert torch.allclose(model(x), expected, atol=1e-12, rtol=0)


def test_last_pool_reads_the_last_position():
    model = make("toy_attention", causal=True).double().eval()
    assert model.pool == "last"
    x = tokens()
    with torch.no_grad():
        expected = model.head(model.features(x)[:, -1])
        assert torch.allclose(model(x), expected, atol=1e-12, rtol=0)


def test_sinusoidal_table_matches_the_formula():
    length, dim = 9, 6
    table = sinusoidal_table(length, dim)
    for t in range(length):
        for i in range(0, dim, 2):
            angle = t / 10000 ** (i / dim)
            assert math.isclose(table[t, i].item(), math.sin(angle), abs_tol=1e-12)
            assert math.isclose(table[t, i + 1].item(), math.cos(angle), abs_tol=1e-12)


def test_positional_defaults_follow_the_family_table():
    assert set(FAMILY_DEFAULT) == set(mixers.FAMILIES)
    for family in ("attention", "kernel", "sparse", "lowrank"):
        assert resolve("auto", family) == "sinusoidal"
    for family in ("fourier", "convolution", "ssm", "mlp"):
        assert resolve("auto", family) == "none"
    assert resolve("learned", "ssm") == "learned"
    with pytest.raises(ValueError, match="positional must be one of"):
        resolve("rotary", "attention")


@pytest.mark.parametrize("positional,order_matters", [("none", False), ("auto", True), ("learned", True)])
def test_attention_sees_order_only_through_positions(positional, order_matters):
    # Non-causal attention is permutation-equivariant, so with mean pooling and no positions the
    # prediction cannot depend on token order; with positions it must.
    model = make("toy_attention", positional=positional).double().eval()
    x = tokens()
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        same = torch.allclose(model(x), model(x[:, perm]), atol=1e-10, rtol=0)
    assert same != order_matters


def test_unknown_mixer_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown mixer name 'nope'.*toy_attention"):
        make("nope")


def test_lm_head_refuses_a_mixer_that_cannot_be_causal():
    with pytest.raises(ValueError, match="'toy_global'.*cannot run causally.*toy_attention"):
        make("toy_global", "lm")
    with pytest.raises(ValueError, match="lm head needs causal=True"):
        make("toy_attention", "lm", causal=False)


def test_length_limits_are_clear_errors():
    model = make("toy_lowrank")
    model(tokens(length=32))  # max_len itself is fine
    with pytest.raises(ValueError, match="context 33 exceeds max_len=32"):
        model(tokens(length=33))
    with pytest.raises(ValueError, match="max_len is required"):
        build_model(ModelConfig(vocab_size=VOCAB, mixer="toy_lowrank", dim=8))


def test_bad_config_values_name_the_argument():
    with pytest.raises(ValueError, match="head must be one of"):
        make("toy_attention", "regress")
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        build_model(ModelConfig(vocab_size=VOCAB, mixer="toy_attention", depth=0))
    with pytest.raises(ValueError, match=r"tokens must be a \(batch, length\) LongTensor"):
        make("toy_attention")(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"mixer_options must not set \['causal', 'heads'\]"):
        make("toy_attention", mixer_options={"heads": 4, "causal": True})


def test_sinusoidal_positions_are_the_same_after_a_longer_input_was_seen():
    from longmix.models.positional import Positional

    pos = Positional("sinusoidal", 6)
    short = torch.zeros(1, 5, 6, dtype=torch.float64)
    pos(torch.zeros(1, 40, 6, dtype=torch.float64))  # fills the cache with 40 rows
    assert torch.equal(pos(short)[0], sinusoidal_table(5, 6))
    assert torch.equal(pos(short.float())[0], sinusoidal_table(5, 6).float())
    assert "_sinusoid" not in pos.state_dict()


def test_sinusoidal_positions_of_a_shard_are_its_rows_without_a_table():
    """A shard far into a long sequence (sequence parallelism, a decode step) gets the table's
    rows at its positions, bit for bit, without a table up to them (O(L) memory on every rank)."""
    from longmix.models.positional import Positional

    pos = Positional("sinusoidal", 6)
    positions = torch.tensor([1_000_003, 7, 500_000])
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    out = pos(x, positions)
    assert pos._sinusoid.shape[0] == 0  # no table was built
    assert torch.equal(out, x + sinusoidal_table(1_000_004, 6)[positions])
    pos(torch.zeros(1, 40, 6, dtype=torch.float64))  # a cached table serves positions inside it
    inside = torch.tensor([39, 0, 12])
    assert torch.equal(pos(x, inside), x + sinusoidal_table(40, 6)[inside])


# ----------------------------------------------------------------------------- lm loss
def _plain_lm_loss(model, x, target, **kw):
    logits = model(x, **kw)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1),
                                             ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("length,packed,checkpoint", [(17, False, False), (1, False, False),
                                                      (12, True, False), (9, False, True)])
def test_lm_loss_sum_is_the_plain_head_and_cross_entropy(length, packed, checkpoint):
    model = make(CAUSAL_MIXERS[-1], head="lm").double()
    x = tokens(seed=1, length=length)
    target = tokens(seed=2, length=length)
    target[0, : length // 2] = -100  # positions not scored
    kw = {"checkpoint_activations": checkpoint}
    if packed:
        x, target = x[:1], target[:1]
        kw["cu_seqlens"] = torch.tensor([0, 5, 12])
    ref = _plain_lm_loss(model, x, target, **kw)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    got = model.lm_loss_sum(x, target, **kw)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for (name, _), g, r in zip(model.named_parameters(), got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=name)


def test_lm_loss_sum_needs_the_lm_head():
    model = make("toy_attention")
    with pytest.raises(ValueError, match="needs the lm head"):
        model.lm_loss_sum(tokens(), tokens())
