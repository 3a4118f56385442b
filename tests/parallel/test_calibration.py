"""calibrate_timing: each form of each distinct mixer timed on the group's ranks, the same rates on
every rank, the model and the caller's random stream untouched, and the plan picks by them."""
import pytest
import torch

import longmix.parallel as ld
from longmix.models.model import ModelConfig, SequenceModel
from longmix.parallel.forms.calibration import calibrate_timing
from longmix.parallel.launch import run_local


def _model():
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(vocab_size=11, mixer="mamba", head="lm", dim=8, depth=2, heads=2))


def _calibrate_on_ranks(group):
    model = _model()
    rng = torch.random.get_rng_state()
    timing = calibrate_timing(model, group, [32, 64], repeats=1)
    untouched = (torch.equal(rng, torch.random.get_rng_state())
                 and all(p.grad is None for p in model.parameters()))
    planned = ld.parallelize(model, group, seq_len=64, timing=timing).forms
    by_time = ld.plan_model(model, 64, 2, timing=timing)
    seconds = {o.form: o.step_seconds for o in by_time.layers[0].options if o.feasible}
    return timing.rates, untouched, planned, by_time.forms, seconds


def test_two_ranks_time_every_form_of_each_mixer_once_and_agree():
    got = run_local(_calibrate_on_ranks, 2, timeout=180)
    rates, untouched, planned, forms, seconds = got[0]
    assert got[1][0] == rates  # the slowest rank's times: the same fit, so the same plan
    assert set(rates) == {("mamba", "shuffle", 2), ("mamba", "state", 2)}  # one mixer, timed once
    assert all(rate > 0 and fixed >= 0 for fixed, rate in rates.values())
    assert untouched and got[1][1]
    assert planned == forms == got[1][2]
    assert set(seconds) == {"shuffle", "state"} and all(s > 0 for s in seconds.values())
    assert forms == [min(seconds, key=seconds.get)] * 2  # the plan chose by time, not bytes


def _one_form_only(group):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(vocab_size=11, mixer="hyena", head="lm", dim=8, depth=1, heads=2))
    forms = [o.form for o in ld.plan_model(model, 64, 2).layers[0].options if o.feasible]
    return forms, calibrate_timing(model, group, [64], repeats=1).rates


def test_a_mixer_with_one_feasible_form_is_not_timed():
    forms, rates = run_local(_one_form_only, 2, timeout=120)[0]
    assert forms == ["shuffle"] and rates == {}


def test_one_process_times_the_mixer_itself():
    mixer = _model().blocks[0].mixer
    timing = calibrate_timing(mixer, None, [16], repeats=1)
    assert {form for _, form, world in timing.rates if world == 1} >= {"shuffle"}


@pytest.mark.parametrize("kwargs,match", [({"lengths": []}, "lengths must name"),
                                          ({"lengths": [0]}, "lengths"),
                                          ({"lengths": [16], "repeats": 0}, "repeats"),
                                          ({"lengths": [16], "layout": "spiral"}, "layout")])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibrate_timing(_model(), None, **kwargs)
