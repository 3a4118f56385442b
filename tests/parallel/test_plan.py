"""The planner: feasibility, the cost model's communication volumes, and choices in clear regimes."""
import math

import pytest
import torch

import longmix.parallel as ld
from longmix.parallel.launch import run_local

BASE = dict(seq_len=8192, head_dim=64, dtype=torch.float32)


def test_volumes_match_theory():
    """Shuffle ~4*L*H*d/P*(P-1)/P elements per rank, ring 2*L*kv_heads*d*(P-1)/P."""
    L, d, p, h = 8192, 64, 4, 8
    for kv in (8, 4):
        plan = ld.plan(**BASE, heads=h, kv_heads=kv, world_size=p)
        shuffle = (2 * L * h * d / p + 2 * L * kv * d / p) * (p - 1) / p * 4
        ring = 2 * L * kv * d * (p - 1) / p * 4
        assert plan.option("shuffle").bytes_per_rank == pytest.approx(shuffle, rel=1e-6)
        assert plan.option("ring").bytes_per_rank == pytest.approx(ring, rel=1e-6)
    # kv_heads < P: each K/V head goes whole to P/kv_heads ranks
    plan = ld.plan(**BASE, heads=8, kv_heads=1, world_size=4)
    expected = (2 * L * 8 * d / 4 * 3 / 4 + 2 * L / 4 * d * 3) * 4
    assert plan.option("shuffle").bytes_per_rank == pytest.approx(expected, rel=1e-6)
    assert "sent to 4 ranks" in plan.option("shuffle").note


def test_infeasible_strategies_are_excluded_with_reason():
    plan = ld.plan(**BASE, heads=6, kv_heads=6, world_size=4)
    assert plan.strategy != "shuffle"
    assert not plan.option("shuffle").feasible
    assert "heads=6 must be divisible by 4" in plan.reason
    plan = ld.plan(**BASE, heads=4, kv_heads=4, world_size=3)
    hybrid = plan.option("hybrid")  # 3 has no divisor 1 < u < 3: the degenerate grid u = 1
    assert hybrid.degenerate and hybrid.hybrid_size == 1 and "no divisor" in hybrid.note


def test_window_plans_shuffle_and_a_halo_ring():
    """With a window the ring sends only a halo of window-1 rows of K/V per side (left only when
    causal): a middle rank of the contiguous layout sends both sides, whatever L."""
    w, row = 128, 2 * 8 * BASE["head_dim"] * 4  # K and V, 8 kv heads, fp32
    for causal, sides in ((False, 2), (True, 1)):
        plan = ld.plan(**BASE, heads=8, kv_heads=8, world_size=4, window=w, causal=causal)
        ring = plan.option("ring")
        assert ring.feasible and ring.bytes_per_rank == sides * (w - 1) * row
        assert ring.bytes_per_rank < plan.option("shuffle").bytes_per_rank
        assert not plan.option("hybrid").feasible and "window" in plan.option("hybrid").note
    plan = ld.plan(**BASE, heads=6, kv_heads=6, world_size=4, window=w)  # heads rule out shuffle
    assert plan.strategy == "ring" and not plan.option("shuffle").feasible


def window_ring_worker(group, layout, causal, window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 64, 2, 8) for _ in range(3))
    local = [ld.shard(t, group, layout) for t in (q, k, v)]
    stats = ld.CommStats()
    ld.attention(*local, causal=causal, group=group, strategy="ring", layout=layout,
                 window=window, stats=stats)
    return stats.bytes_sent


@pytest.mark.parametrize("layout, causal", [("zigzag", True), ("contiguous", False)])
def test_window_ring_bytes_predicted_are_the_bytes_sent(layout, causal):
    sent = run_local(window_ring_worker, 2, (layout, causal, 5), timeout=60)
    plan = ld.plan(seq_len=64, heads=2, kv_heads=2, head_dim=8, world_size=2, window=5,
                   causal=causal, layout=layout, dtype=torch.float32)
    assert plan.option("ring").bytes_per_rank == max(sent) > 0


def test_single_process():
    plan = ld.plan(**BASE, heads=8, kv_heads=8, world_size=1)
    assert plan.bytes_per_rank == 0
    assert "single process" in plan.reason


def test_choice_is_the_cheapest_feasible_option():
    for kwargs in (dict(heads=8, kv_heads=8, world_size=8, bandwidth_bytes_per_s=1e6),
                   dict(heads=32, kv_heads=1, world_size=8, bandwidth_bytes_per_s=1e6),
                   dict(heads=8, kv_heads=2, world_size=4, causal=True, layout="zigzag")):
        plan = ld.plan(**BASE, **kwargs)
        feasible = [o for o in plan.options if o.feasible]
        assert plan.predicted_time_s == min(o.predicted_time_s for o in feasible)
        assert plan.reason.startswith(plan.strategy)
        assert plan.strategy in plan.describe()


def test_regimes():
    """Bandwidth-bound: multi-head attention shuffles (less volume for P > 2); with one K/V
    head the ring moves 1/heads of the data and wins."""
    slow = dict(world_size=8, bandwidth_bytes_per_s=1e6)
    assert ld.plan(**BASE, heads=8, kv_heads=8, **slow).strategy == "shuffle"
    assert ld.plan(**BASE, heads=32, kv_heads=1, **slow).strategy == "ring"


def test_contiguous_causal_ring_is_imbalanced():
    common = dict(**BASE, heads=8, kv_heads=8, world_size=4, causal=True, flops_per_s=1e9)
    contiguous = ld.plan(**common, layout="contiguous").option("ring")
    zigzag = ld.plan(**common, layout="zigzag").option("ring")
    assert contiguous.compute_s / zigzag.compute_s == pytest.approx(7 / 4, rel=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=8"):
        ld.plan(**BASE, heads=8, kv_heads=3, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        ld.plan(**BASE, heads=8, world_size=0)
    with pytest.raises(ValueError, match="layout"):
        ld.plan(**BASE, heads=8, world_size=2, layout="striped")
    for rate in ("bandwidth_bytes_per_s", "flops_per_s", "latency_s"):
        with pytest.raises(ValueError, match=rate):
            ld.plan(**BASE, heads=8, world_size=2, **{rate: -1.0})
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s"):  # 0 was silently the default
        ld.plan(**BASE, heads=8, world_size=2, bandwidth_bytes_per_s=0)
    assert ld.plan(**BASE, heads=8, world_size=2, latency_s=0).predicted_time_s > 0


def rates_worker(group):
    rates = ld.measure_rates(group, bytes_per_peer=1 << 16, matmul_size=128, repeats=2)
    plan = ld.plan(**BASE, heads=4, kv_heads=4, world_size=2,
                   bandwidth_bytes_per_s=rates.bandwidth_bytes_per_s,
                   flops_per_s=rates.flops_per_s, latency_s=rates.latency_s)
    return rates, plan.strategy


def test_measured_rates_agree_across_ranks():
    (rates0, plan0), (rates1, plan1) = run_local(rates_worker, 2, timeout=60)
    assert rates0 == rates1 and plan0 == plan1
    for value in (rates0.bandwidth_bytes_per_s, rates0.flops_per_s, rates0.latency_s):
        assert math.isfinite(value) and value > 0
    # a measurement, not the floor of a noisy difference (which once read 1e15 B/s): gloo over
    # loopback moves far less than a terabyte per second
    assert rates0.bandwidth_bytes_per_s < 1e12


@pytest.mark.parametrize("world, heads, u", [(2, 2, 2), (2, 1, 1), (3, 3, 3), (3, 2, 1)])
def test_hybrid_without_a_proper_divisor_falls_back_to_the_degenerate_grid(world, heads, u):
    """P = 2 or 3: hybrid by name runs as u = P (the shuffle) where the heads split, else u = 1
    (the ring); auto never picks the degenerate copy of another strategy."""
    p = ld.plan(seq_len=4096, heads=heads, head_dim=16, world_size=world, causal=True,
                layout="zigzag")
    option = p.option("hybrid")
    assert option.feasible and option.degenerate and option.hybrid_size == u
    assert p.strategy in ("shuffle", "ring")
