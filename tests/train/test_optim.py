"""Weight decay only where it is a prior on a linear map: the whitelist and the mixers' own
declarations."""
import torch
from torch import nn

from longmix.models import build_model
from longmix.train.optim import decayed_parameter_names, param_groups


def names(model):
    return set(decayed_parameter_names(model))


def test_only_linear_and_conv_weights_decay():
    model = build_model(vocab_size=20, mixer="s4d", head="classify", num_classes=10, dim=16, max_len=32,
                        positional="learned")
    decayed = names(model)
    assert decayed and all(n.endswith(".weight") for n in decayed)
    for n, p in model.named_parameters():
        if any(word in n for word in ("norm", "embed", "position", "bias", "log_A_real", "A_imag", "log_dt",
                                      "mixer.C", "mixer.D")):
            assert n not in decayed, n
    assert {"blocks.0.mlp.up.weight", "head.weight"} <= decayed


def test_declared_names_do_not_decay():
    class Declares(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.gate = nn.Linear(4, 4)

        def no_decay_parameter_names(self):
            return ["gate.weight"]

    model = nn.Sequential(Declares(), nn.Linear(4, 2))
    assert names(model) == {"0.proj.weight", "1.weight"}


def test_groups_cover_every_parameter_once_and_train():
    model = build_model(vocab_size=20, mixer="softmax", head="classify", num_classes=10, dim=16, max_len=32)
    decay, rest = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert sorted(decay["names"] + rest["names"]) == sorted(n for n, _ in model.named_parameters())
    opt = torch.optim.AdamW([decay, rest], lr=1e-2)
    before = model.embed.weight.detach().clone()
    model(torch.randint(1, 20, (2, 8))).sum().backward()
    opt.step()
    assert not torch.equal(before, model.embed.weight)


def test_a_mixers_declared_dynamics_do_not_decay():
    from longmix.train.optim import declared_no_decay

    for mixer in ("s4d", "hyena"):
        model = build_model(vocab_size=20, mixer=mixer, head="classify", num_classes=10, dim=16, max_len=32)
        declared = declared_no_decay(model)
        if not declared:  # a mixer that declares nothing relies on the whitelist alone
            continue
        assert not declared & names(model)
        assert declared <= {n for n, _ in model.named_parameters()}
