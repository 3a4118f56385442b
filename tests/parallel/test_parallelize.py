"""``longmix.parallel.forms.parallelize`` vs one process in float64: every form of every mixer, whole models,
bytes against the planner's prediction, and bad input failing the same way on every rank.

One launch per world size runs all its cases (start-up costs about a second per launch). Each case
compares the sharded forward, input gradient and every parameter gradient (summed over ranks, as
the trainer's all-reduce does) with the unsharded module, so every collective's backward is
checked, not trusted.
"""
from __future__ import annotations

import pytest
import torch

import longmix.parallel as ld
from helpers import error_message, reference_attention, rel_err, summed_grads
from longmix import mixers
from longmix.parallel.launch import run_local
from longmix.parallel.forms.model_plan import plan_model
from longmix.mixers.base import Taxonomy, TokenMixer
from longmix.models.model import build_model

DIM, HEADS, BATCH = 8, 4, 2
TOL = 1e-10
BYTES_SLACK = 1.1

# name -> (options, causal modes to run)
MIXERS = {
    "softmax": ({}, (True, False)),
    "softmax_window": ({"window": 3}, (True, False)),
    "linear": ({}, (True,)),
    "performer": ({"features": 8}, (False,)),
    "local": ({"block_size": 2}, (True,)),
    "bigbird": ({"block_size": 2}, (False,)),
    "linformer": ({"max_len": 16, "proj_len": 4}, (False,)),
    "nystrom": ({"landmarks": 3}, (False,)),
    "fnet": ({}, (False,)),
    "mlpmixer": ({"max_len": 16, "hidden": 8}, (False,)),
    "longconv": ({"filter_hidden": 8}, (True, False)),
    "hyena": ({"filter_hidden": 8, "short_kernel": 3}, (True, False)),
    "s4d": ({"d_state": 4}, (True, False)),
    "mamba": ({"d_state": 4, "d_conv": 3}, (True, False)),
    "mamba_norm": ({"d_state": 4, "d_conv": 3, "bcdt_norm": True}, (True, False)),  # Jamba's
    "mamba2": ({"d_state": 4, "d_conv": 3, "groups": 2, "chunk_size": 2}, (True, False)),
    "gated_deltanet": ({"d_conv": 3, "chunk_size": 2}, (True, False)),
    "gated_deltanet_gva": ({"d_conv": 3, "key_heads": 2, "chunk_size": 2}, (True,)),  # 2 value heads per key
}


def make_mixer(key: str, causal: bool) -> TokenMixer:
    options, _ = MIXERS[key]
    torch.manual_seed(0)
    name = key if key in mixers.available() else key.rsplit("_", 1)[0]  # "softmax_window": a variant
    return mixers.build(name, DIM, heads=HEADS, causal=causal, **options).double()


def check_mixer(group, key: str, causal: bool, form: str, seq_len: int, layout: str) -> list[str]:
    """One mixer in one form: forward, dx, parameter grads and bytes. Returns problems found."""
    rank = torch.distributed.get_rank(group)
    world = torch.distributed.get_world_size(group)
    name = f"{key} causal={causal} {form} L={seq_len} {layout} P={world}"
    mixer = make_mixer(key, causal)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, seq_len, DIM, generator=g, dtype=torch.float64)
    dy = torch.randn(BATCH, seq_len, DIM, generator=g, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    ref = mixer(x_ref)
    ref.backward(dy)
    ref_grads = [p.grad.clone() for p in mixer.parameters()]
    mixer.zero_grad()

    stats = ld.CommStats()
    pmixer = ld.parallelize(mixer, group, layout, forms=form, stats=stats)
    x_local = ld.shard(x, group, layout).requires_grad_()
    y = pmixer(x_local)
    forward_sent = stats.bytes_sent
    y.backward(ld.shard(dy, group, layout))
    total_sent = stats.bytes_sent

    problems = []
    errors = {"out": rel_err(ld.unshard(y.detach(), group, layout), ref.detach()),
              "dx": rel_err(ld.unshard(x_local.grad, group, layout), x_ref.grad)}
    for (pname, _), got, want in zip(mixer.named_parameters(), summed_grads(mixer, group), ref_grads):
        errors[f"d{pname}"] = rel_err(got, want)
    worst = max(errors, key=errors.get)
    if not errors[worst] <= TOL:
        problems.append(f"{name}: {worst} error {errors[worst]:.2e} (all: {errors})")
    plan = plan_model(mixer, seq_len, world, BATCH, dtype=torch.float64, layout=layout, forms=form)
    cost = plan.layers[0].cost()
    checks = []
    if cost.forward_bytes is not None:
        checks.append(("forward", forward_sent, cost.forward_bytes[rank]))
    if cost.backward_bytes is not None:
        checks.append(("forward+backward", total_sent,
                       cost.forward_bytes[rank] + cost.backward_bytes[rank]))
    if form != "state":
        assert len(checks) == 2, f"{name}: the plan predicts no bytes"
    for what, got, want in checks:
        if not (want / BYTES_SLACK <= got <= want * BYTES_SLACK):
            problems.append(f"{name}: rank {rank} sent {got} bytes in the {what} pass, "
                            f"predicted {want}")
    if world > 1 and total_sent == 0 and seq_len > world:
        problems.append(f"{name}: rank {rank} sent nothing: the form did not run")
    return problems


def mixer_cases(world: int, seq_len: int, layouts) -> list[tuple]:
    cases = []
    for i, (key, (_, modes)) in enumerate(MIXERS.items()):
        for causal in modes:
            mixer = make_mixer(key, causal)
            for form in mixer.parallel_forms:
                option = plan_model(mixer, None, world, forms=None).layers[0]
                if next(o for o in option.options if o.form == form).feasible:
                    cases.append((key, causal, form, seq_len, layouts[i % len(layouts)]))
    return cases


def mixers_worker(group, cases) -> list[str]:
    return [p for case in cases for p in check_mixer(group, *case)]


@pytest.mark.parametrize("world, seq_len, layouts", [
    (3, 11, ("zigzag", "contiguous")),  # uneven rows and groups (4 heads over 3 ranks)
    (4, 3, ("contiguous", "zigzag")),  # L < P: some ranks hold no rows
    (2, 7, ("zigzag",)),
    (1, 5, ("contiguous",)),
])
def test_every_form_of_every_mixer_matches_one_process(world, seq_len, layouts):
    cases = mixer_cases(world, seq_len, layouts)
    assert {c[0] for c in cases} == set(MIXERS), "a mixer has no feasible form"
    assert any(c[2] == "ring" for c in cases)
    results = run_local(mixers_worker, world, (cases,), timeout=240, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- whole models
MODELS = [
    # (head, mixer, options, pool, layout, forms)
    ("lm", "softmax", {}, "auto", "zigzag", ["ring", "shuffle"]),
    ("lm", "mamba", {"d_state": 4, "d_conv": 3}, "auto", "contiguous", None),
    ("classify", "hyena", {"filter_hidden": 8}, "mean", "zigzag", None),
    ("classify", "s4d", {"d_state": 4}, "last", "contiguous", None),
    ("classify", "softmax", {}, "last", "zigzag", "ring"),
]


def models_worker(group, seq_len: int) -> list[str]:
    problems = []
    for head, mixer, options, pool, layout, forms in MODELS:
        torch.manual_seed(0)
        model = build_model(vocab_size=11, mixer=mixer, head=head, dim=DIM, depth=2, heads=HEADS,
                            pool=pool, positional="sinusoidal", mixer_options=options).double()
        g = torch.Generator().manual_seed(2)
        tokens = torch.randint(1, 11, (BATCH, seq_len), generator=g)
        tokens[0, :3] = 0  # left padding: mean pooling must skip it on whichever rank holds it
        ref = model(tokens)
        dlogits = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        ref.backward(dlogits)
        ref_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        stats = ld.CommStats()
        pmodel = ld.parallelize(model, group, layout, forms=forms, stats=stats)
        out = pmodel(ld.shard(tokens, group, layout))
        plan = plan_model(model, seq_len, torch.distributed.get_world_size(group), BATCH,
                          dtype=torch.float64, layout=layout, forms=pmodel.forms)
        predicted = plan.forward_bytes()[torch.distributed.get_rank(group)]
        if not predicted / BYTES_SLACK <= stats.bytes_sent <= predicted * BYTES_SLACK:
            problems.append(f"{head} {mixer}: sent {stats.bytes_sent} bytes, predicted {predicted}")
        if head == "lm":
            out.backward(ld.shard(dlogits, group, layout))
            out = ld.unshard(out.detach(), group, layout)
        else:
            out.backward(dlogits)  # every rank backpropagates the same loss of the logits
        errors = {"logits": rel_err(out.detach(), ref.detach())}
        for (pname, _), got, want in zip(model.named_parameters(), summed_grads(model, group),
                                         ref_grads):
            errors[f"d{pname}"] = rel_err(got, want)
        worst = max(errors, key=errors.get)
        if not errors[worst] <= TOL:
            problems.append(f"{head} {mixer} {pool} {layout} forms={pmodel.forms}: {worst} error "
                            f"{errors[worst]:.2e}")
    return problems


def test_sharded_models_match_one_process():
    results = run_local(models_worker, 3, (10,), timeout=180, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


LM_LOSS_MODELS = [("mamba", {"d_state": 4, "d_conv": 3}, "shuffle", "contiguous"),
                  ("mamba", {"d_state": 4, "d_conv": 3}, "state", "contiguous"),
                  ("softmax", {}, "ring", "zigzag")]


def lm_loss_worker(group, seq_len: int) -> list[str]:
    """The chunked lm loss of each rank's shard, summed over the ranks, against one process's
    plain head and cross entropy; so are the parameter gradients (some targets not scored)."""
    problems = []
    for mixer, options, form, layout in LM_LOSS_MODELS:
        torch.manual_seed(0)
        model = build_model(vocab_size=11, mixer=mixer, head="lm", dim=DIM, depth=2, heads=HEADS,
                            mixer_options=options).double()
        g = torch.Generator().manual_seed(3)
        tokens = torch.randint(0, 11, (BATCH, seq_len + 1), generator=g)
        x, target = tokens[:, :-1], tokens[:, 1:].clone()
        target[0, 1::3] = -100
        logits = model(x)
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), target.reshape(-1),
                                                ignore_index=-100, reduction="sum")
        ref.backward()
        ref_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        pmodel = ld.parallelize(model, group, layout, forms=form)
        local = pmodel.lm_loss_sum(ld.shard(x, group, layout), ld.shard(target, group, layout))
        local.backward()
        total = local.detach().clone()
        torch.distributed.all_reduce(total, group=group)
        errors = {"loss": rel_err(total, ref.detach())}
        for (pname, _), got, want in zip(model.named_parameters(), summed_grads(model, group),
                                         ref_grads):
            errors[f"d{pname}"] = rel_err(got, want)
        worst = max(errors, key=errors.get)
        if not errors[worst] <= TOL:
            problems.append(f"lm loss {mixer} {form} {layout}: {worst} error {errors[worst]:.2e}")
    return problems


def test_sharded_lm_loss_matches_one_process():
    results = run_local(lm_loss_worker, 3, (10,), timeout=180, collective_timeout=60)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- errors
class NoFormMixer(TokenMixer):
    """A mixer without hooks: no sequence-parallel form."""

    taxonomy = Taxonomy("attention", learned=False, input_dependent=False, causal=False,
                        time="O(L)", memory="O(L)")

    def _forward(self, x):
        return x.cumsum(1)


def errors_worker(group) -> dict:
    rank = torch.distributed.get_rank(group)
    mixer = make_mixer("s4d", False)
    g = torch.Generator().manual_seed(3)  # the same full tensors on every rank
    x = torch.randn(BATCH, 9, DIM, generator=g, dtype=torch.float64)
    pmixer = ld.parallelize(mixer, group)
    wrong_rows = x[:, :4] if rank == 1 else ld.shard(x, group)
    wrong_dim = x[:, :3, :4] if rank == 2 else ld.shard(x, group)
    narrow = mixers.build("fnet", 2)
    model = build_model(vocab_size=5, mixer="softmax", dim=DIM, depth=2, heads=2)
    messages = {
        "no form": error_message(lambda: ld.parallelize(NoFormMixer(DIM), group)),
        "rows disagree": error_message(lambda: pmixer(wrong_rows)),
        "dim on one rank": error_message(lambda: pmixer(wrong_dim)),
        "too few channels": error_message(lambda: ld.parallelize(narrow, group, forms="shuffle")),
        "too few heads": error_message(lambda: ld.parallelize(model, group, forms="shuffle")),
        "unknown form": error_message(lambda: ld.parallelize(mixer, group, forms="gather")),
    }
    # the group is still in step: a good call completes and is exact
    y = ld.unshard(pmixer(ld.shard(x, group)).detach(), group)
    messages["good call error"] = rel_err(y, mixer(x).detach())
    # longmix.parallel.attention's ring with a window (a halo exchange), zigzag
    q, k, v = torch.randn(3, BATCH, 10, 2, 4, generator=g, dtype=torch.float64)
    out = ld.attention(*(ld.shard(t, group, "zigzag") for t in (q, k, v)), causal=True,
                       strategy="ring", window=3, layout="zigzag", group=group)
    messages["ring window error"] = rel_err(ld.unshard(out, group, "zigzag"),
                                            reference_attention(q, k, v, causal=True, window=3))
    return messages


def test_bad_input_raises_the_same_clear_error_on_every_rank():
    results = run_local(errors_worker, 3, timeout=120, collective_timeout=30)
    for key in results[0]:
        assert all(r[key] == results[0][key] for r in results), (key, [r[key] for r in results])
    got = results[0]
    assert "NoFormMixer" in got["no form"] and "no shuffle form" in got["no form"]
    assert "shard lengths" in got["rows disagree"] and "[4, 3, 3]" in got["rows disagree"]
    assert "rank(s) [2]" in got["dim on one rank"] and "(batch, local_len, 8)" in got["dim on one rank"]
    assert "fnet" in got["too few channels"] and "2 channels" in got["too few channels"]
    assert "state" in got["too few channels"]
    assert "blocks.0.mixer" in got["too few heads"] and "2 heads" in got["too few heads"]
    assert "unknown form 'gather'" in got["unknown form"]
    assert got["good call error"] < TOL
    assert got["ring window error"] < TOL


# ----------------------------------------------------------------------------- planning
def test_plan_picks_a_feasible_form_per_layer_and_predicts_bytes():
    model = build_model(vocab_size=5, mixer="softmax", dim=DIM, depth=2, heads=2, head="lm")
    plan = plan_model(model, 64, 4, batch=2)
    assert plan.forms == ["ring", "ring"]  # 2 heads cannot feed 4 ranks a head each
    assert "2 heads" in plan.layers[0].cost("shuffle").reason
    assert all(n > 0 for n in plan.forward_bytes())
    # more ranks per group than ranks: the shuffle moves (P-1)/P of the activations and wins at
    # this length; the ring sends every K/V block around
    plan = plan_model(build_model(vocab_size=5, mixer="softmax", dim=DIM, heads=4, head="lm"),
                      64, 2, batch=2)
    assert plan.forms == ["shuffle", "shuffle"]
    forced = plan_model(model, 64, 2, forms=["shuffle", "ring"])
    assert forced.forms == ["shuffle", "ring"]
    with pytest.raises(ValueError, match="one form per mixer layer"):
        plan_model(model, 64, 2, forms=["ring"])
