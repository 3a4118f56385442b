"""State passing over gloo ranks equals the unsharded mixer in float64: forward, input gradients
and parameter gradients (each rank's parameter gradients are its share: their sum over ranks is
the single-process gradient), for every mixer with a fixed-size state, P = 1..4, uneven L and
L < P, both layouts. Also: the bytes on the wire match the prediction and do not grow with L,
bad input gives the same error on every rank, and the all-gather's own backward is exact.

Each launch of ranks costs process start-up, so one launch per P runs every case.
"""
import pytest
import torch
import torch.distributed as dist

import longmix.parallel as ld
from longmix import mixers
from longmix.parallel.forms.collectives import all_gather_tensors
from longmix.parallel.launch import run_local

DIM, BATCH = 4, 2
# Blocks, chunks and conv widths small enough that halos and states cross several (tiny) shards.
MIXERS = {"linear": dict(heads=2, chunk_size=2), "performer": dict(heads=2, chunk_size=2),
          "s4d": dict(d_state=4), "mamba": dict(d_state=3, chunk_size=2, d_conv=3),
          "local": dict(heads=2, block_size=2)}
# P -> sequence lengths: uneven, and shorter than P (empty shards and chunks).
LENGTHS = {1: (5,), 2: (7, 1), 3: (10, 2), 4: (13, 3)}


def make(name):
    options = dict(MIXERS[name])
    torch.manual_seed(0)
    return mixers.build(name, DIM, heads=options.pop("heads", 1), causal=True, **options).double()


def inputs(length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, length, DIM, generator=g, dtype=torch.float64) for _ in range(2)]


def rel_err(a, b):
    return 0.0 if b.numel() == 0 else ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def sharded_vs_single(group, name, length, layout, length_known=False):
    """Errors of state passing against one process, as seen on rank 0 (others return None).
    ``length_known``: pass seq_len, as a caller that already agreed on the shards does."""
    mixer = make(name)
    x, grad_out = inputs(length)
    x_local = ld.shard(x, group, layout).detach().requires_grad_()
    y_local = ld.state_passing_mix(mixer, x_local, group=group, layout=layout,
                                   seq_len=length if length_known else None)
    y_local.backward(ld.shard(grad_out, group, layout))
    y, dx = ld.unshard(y_local.detach(), group, layout), ld.unshard(x_local.grad, group, layout)
    shares = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in mixer.parameters()]
    for share in shares:
        dist.all_reduce(share, group=group)
    if dist.get_rank(group) != 0:
        return None

    reference = make(name)
    xr = x.clone().requires_grad_()
    yr = reference(xr)
    yr.backward(grad_out)
    errors = {"out": rel_err(y, yr.detach()), "dx": rel_err(dx, xr.grad),
              "dparams": max(rel_err(s, p.grad if p.grad is not None else torch.zeros_like(p))
                             for s, p in zip(shares, reference.parameters()))}
    return errors


def run_cases(group, cases):
    return [(case, sharded_vs_single(group, *case)) for case in cases]


@pytest.mark.parametrize("world", sorted(LENGTHS))
def test_state_passing_equals_one_process(world):
    cases = [(name, length, layout) for name in MIXERS for length in LENGTHS[world]
             for layout in ("contiguous", "zigzag")]
    cases += [(name, LENGTHS[world][0], "zigzag", True) for name in ("mamba", "local")]
    results = run_local(run_cases, world, args=(cases,), timeout=240)[0]
    assert len(results) == len(cases)
    bad = [f"{case}: {errors}" for case, errors in results if not max(errors.values()) < 1e-10]
    assert not bad, "\n".join(bad)


def measured_bytes(group, name, length, layout):
    """This rank's bytes: forward, and forward + backward."""
    mixer = make(name)
    x = ld.shard(inputs(length)[0], group, layout).requires_grad_()
    stats = ld.CommStats()
    y = ld.state_passing_mix(mixer, x, group=group, layout=layout, stats=stats)
    forward = (stats.bytes_sent, stats.bytes_received)
    y.sum().backward()
    return forward, (stats.bytes_sent, stats.bytes_received)


def bytes_by_length(group):
    return {(name, layout, length): measured_bytes(group, name, length, layout)
            for name in MIXERS for layout in ("contiguous", "zigzag") for length in (2, 9, 64)}


def test_bytes_match_prediction_and_do_not_grow_with_length():
    world = 3
    by_rank = run_local(bytes_by_length, world, timeout=240)
    for (name, layout, length), (forward, total) in by_rank[0].items():
        predicted = ld.state_passing_bytes(make(name), BATCH, world, layout)
        assert predicted > 0
        for rank_result in by_rank:
            assert rank_result[(name, layout, length)][0] == (predicted, predicted), (name, layout, length)
            backward = ld.state_passing_backward_bytes(make(name), BATCH, world, layout)
            assert rank_result[(name, layout, length)][1] == (predicted + backward,) * 2


def bad_calls(group):
    """The message each bad call raises on this rank."""
    rank = dist.get_rank(group)
    x = inputs(6)[0]
    calls = {
        "shards disagree with the layout": lambda: ld.state_passing_mix(
            make("linear"), ld.shard(x, group)[:, :1] if rank == 1 else ld.shard(x, group), group=group),
        "batch disagrees": lambda: ld.state_passing_mix(
            make("linear"), ld.shard(x, group)[:1] if rank == 2 else ld.shard(x, group), group=group),
        "wrong dim on one rank": lambda: ld.state_passing_mix(
            make("linear"), ld.shard(x, group)[..., :3] if rank == 0 else ld.shard(x, group), group=group),
        "no state form": lambda: ld.state_passing_mix(
            mixers.build("softmax", DIM, causal=True).double(), ld.shard(x, group), group=group),
        "not causal": lambda: ld.state_passing_mix(
            mixers.build("linear", DIM).double(), ld.shard(x, group), group=group),
    }
    out = {}
    for label, call in calls.items():
        try:
            call()
            out[label] = "no error"
        except ValueError as exc:
            out[label] = str(exc)
    return out


def test_bad_input_raises_the_same_error_on_every_rank():
    by_rank = run_local(bad_calls, 3, timeout=120)
    expected = {"shards disagree with the layout": "local lengths [2, 1, 2] do not match",
                "batch disagrees": "shards disagree on batch",
                "wrong dim on one rank": "rank(s) [0]: x_local must be a float tensor",
                "no state form": "its state grows with the sequence",
                "not causal": "it is not causal"}
    for label, fragment in expected.items():
        messages = {result[label] for result in by_rank}
        assert len(messages) == 1, (label, messages)
        assert fragment in messages.pop(), label


def gather_and_weight(group):
    """d/dx_r of sum_q w_q . f(all_gather(x))_q: each rank's gradient must sum every rank's use."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    x = torch.arange(3, dtype=torch.float64).add(10 * rank).requires_grad_()
    n = torch.tensor(rank, dtype=torch.int64)  # integer tensors ride along, without gradients
    gathered = all_gather_tensors([x, n], group)
    loss = sum((rank + 1) * (q + 1) * gathered[q][0].square().sum() for q in range(world))
    loss.backward()
    return x.grad, [int(g[1]) for g in gathered]


def test_all_gather_backward_sums_every_ranks_gradient_at_the_owner():
    world = 3
    results = run_local(gather_and_weight, world, timeout=60)
    for rank, (grad, ranks) in enumerate(results):
        x = torch.arange(3, dtype=torch.float64) + 10 * rank
        weight = sum((r + 1) for r in range(world)) * (rank + 1)  # sum over users r of (r+1)(owner+1)
        assert torch.allclose(grad, 2 * weight * x, rtol=1e-12, atol=0)
        assert ranks == list(range(world))
