"""The planner by time: the model's arithmetic, and plan_model choosing by predicted time."""
import math

import pytest

from longmix import mixers
from longmix.parallel import plan_model
from longmix.parallel.forms.cost import FormCost
from longmix.parallel.forms.timing import MESSAGES, StepTiming, contention, growth, wire_seconds


@pytest.mark.parametrize("cost,expected", [("O(L)", 1024.0), ("O(L k)", 1024.0),
                                           ("O(L log L)", 1024.0 * 10), ("O(L^2)", 1024.0**2)])
def test_growth_follows_the_taxonomys_cost(cost, expected):
    assert growth(cost, 1024) == expected


def test_contention_charges_ranks_that_share_cores():
    assert contention(2, 1, 2) == 1.0 and contention(4, 1, 2) == 2.0 and contention(1, 1, 8) == 1.0


def test_wire_time_is_the_busiest_ranks_bytes_over_bandwidth_plus_latencies():
    cost = FormCost("shuffle", True, forward_bytes=(100, 300), backward_bytes=(100, 100))
    assert wire_seconds(cost, 2, 100.0, 0.5) == pytest.approx(400 / 100 + MESSAGES["shuffle"](2) * 0.5)
    assert wire_seconds(FormCost("state", True), 2, 100.0, 0.5) is None


def test_one_calibration_point_is_reproduced_and_scales_with_work():
    timing = StepTiming(bandwidth_bytes_per_s=1e9, latency_s=1e-4, cores=2, threads=1)
    cost = FormCost("state", True, forward_bytes=(1000, 1000), backward_bytes=(1000, 1000))
    assert timing.calibrate("mamba", [(cost, "O(L)", 4096, 2, 0.5)])[0] == 0.0
    assert timing.predict("mamba", cost, "O(L)", 4096, 2) == pytest.approx(0.5)
    wire = wire_seconds(cost, 2, 1e9, 1e-4)
    assert timing.predict("mamba", cost, "O(L)", 8192, 2) == pytest.approx(2 * (0.5 - wire) + wire)
    # four ranks on two cores: a quarter of 8192 tokens each (the calibration's 2048), at half speed
    assert timing.predict("mamba", cost, "O(L)", 8192, 4) == pytest.approx(2 * (0.5 - wire) + wire)
    assert timing.predict("s4d", cost, "O(L)", 8192, 2) is None  # not calibrated


def test_two_calibration_points_fit_a_fixed_cost_and_a_rate():
    timing = StepTiming(bandwidth_bytes_per_s=float("inf"), latency_s=0.0, cores=2, threads=1)
    cost = FormCost("shuffle", True, forward_bytes=(0, 0), backward_bytes=(0, 0))
    fixed, rate = timing.calibrate("s4d", [(cost, "O(L)", 4096, 2, 0.3), (cost, "O(L)", 8192, 2, 0.5)])
    assert fixed == pytest.approx(0.1) and rate == pytest.approx(0.2 / 2048)
    assert timing.predict("s4d", cost, "O(L)", 65536, 2) == pytest.approx(0.1 + 0.2 / 2048 * 32768)
    # noise that would make the fixed cost negative: the line goes through the origin instead
    fixed, _ = timing.calibrate("s4d", [(cost, "O(L)", 4096, 2, 0.1), (cost, "O(L)", 8192, 2, 0.5)])
    assert fixed == 0.0
    with pytest.raises(ValueError, match="one form"):
        timing.calibrate("s4d", [(cost, "O(L)", 4096, 2, 0.3),
                                 (FormCost("state", True, forward_bytes=(0, 0), backward_bytes=(0, 0)),
                                  "O(L)", 4096, 2, 0.3)])
    with pytest.raises(ValueError, match="one world size"):
        timing.calibrate("s4d", [(cost, "O(L)", 4096, 2, 0.3), (cost, "O(L)", 8192, 4, 0.5)])


def test_each_world_size_predicts_from_its_own_fit_else_from_the_nearest():
    timing = StepTiming(bandwidth_bytes_per_s=float("inf"), latency_s=0.0, cores=2, threads=1)
    cost = FormCost("shuffle", True, forward_bytes=(0, 0), backward_bytes=(0, 0))
    timing.calibrate("gdn", [(cost, "O(L)", 4096, 2, 0.3), (cost, "O(L)", 8192, 2, 0.5)])  # fixed 0.1
    # at P = 4 the same steps cost what P = 2's did: no second fixed cost (as measured, 2 cores)
    timing.calibrate("gdn", [(cost, "O(L)", 4096, 4, 0.2), (cost, "O(L)", 8192, 4, 0.4)])
    assert timing.predict("gdn", cost, "O(L)", 16384, 2) == pytest.approx(0.1 + 0.2 / 2048 * 8192)
    assert timing.predict("gdn", cost, "O(L)", 16384, 4) == pytest.approx(0.8)
    assert timing.calibrated_world("gdn", "shuffle", 8) == 4
    assert timing.calibrated_world("gdn", "shuffle", 3) == 4  # log-nearest, the larger on a tie
    assert timing.calibrated_world("gdn", "shuffle", 1) == 2
    assert timing.calibrated_world("gdn", "state", 2) is None
    # P = 8, not calibrated, from P = 4's fit (fixed 0, rate 0.1 / 1024): half the work per rank,
    # at a quarter of the speed (8 ranks on 2 cores)
    assert timing.predict("gdn", cost, "O(L)", 16384, 8) == pytest.approx(0.1 / 1024 * (16384 / 8) * 4)


def _mamba():
    return mixers.build("mamba", 16, heads=4, causal=True)


def _timing(shuffle_rate, state_rate):
    timing = StepTiming(bandwidth_bytes_per_s=1e9, latency_s=0.0, cores=4)
    timing.rates = {("mamba", "shuffle", 2): (0.0, shuffle_rate), ("mamba", "state", 2): (0.0, state_rate)}
    return timing


def test_plan_picks_the_form_predicted_fastest_even_when_it_sends_more_bytes():
    mixer = _mamba()
    by_bytes = plan_model(mixer, 4096, 2)
    assert by_bytes.forms == ["state"]  # the fewest bytes
    costs = {o.form: o for o in by_bytes.layers[0].options}
    assert max(costs["shuffle"].forward_bytes) > max(costs["state"].forward_bytes)
    fast_shuffle = plan_model(mixer, 4096, 2, timing=_timing(1e-6, 1e-5))
    assert fast_shuffle.forms == ["shuffle"]
    chosen = fast_shuffle.layers[0].cost()
    assert chosen.step_seconds == pytest.approx(min(o.step_seconds for o in fast_shuffle.layers[0].options
                                                   if o.feasible))
    assert plan_model(mixer, 4096, 2, timing=_timing(1e-5, 1e-6)).forms == ["state"]


def test_plan_falls_back_to_bytes_when_a_feasible_form_is_not_calibrated():
    timing = _timing(1e-6, 1e-5)
    del timing.rates[("mamba", "state", 2)]
    plan = plan_model(_mamba(), 4096, 2, timing=timing)
    assert plan.forms == ["state"]
    assert {o.form: o.step_seconds is None for o in plan.layers[0].options}["state"]


def test_a_time_prediction_is_finite_and_positive_for_every_feasible_form():
    plan = plan_model(_mamba(), 4096, 2, timing=_timing(1e-6, 1e-6))
    assert all(o.step_seconds > 0 and math.isfinite(o.step_seconds)
               for o in plan.layers[0].options if o.feasible)
