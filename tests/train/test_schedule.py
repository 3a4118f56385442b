"""Warmup + cosine schedule: its shape against the closed form, and its use through LambdaLR."""
import math

import pytest
import torch

from longmix.train import build_scheduler, warmup_cosine

TOTAL, WARMUP, FLOOR = 100, 10, 0.1


def closed_form(step):
    if step < WARMUP:
        return (step + 1) / WARMUP
    t = (step - WARMUP) / (TOTAL - WARMUP)
    return FLOOR + (1 - FLOOR) * (1 + math.cos(math.pi * t)) / 2


def test_shape():
    values = [warmup_cosine(s, TOTAL, WARMUP, FLOOR) for s in range(TOTAL + 5)]
    assert all(math.isclose(v, closed_form(min(s, TOTAL)), rel_tol=1e-12) for s, v in enumerate(values))
    warm, decay = values[:WARMUP], values[WARMUP:TOTAL + 1]
    assert all(a < b for a, b in zip(warm, warm[1:]))  # rises linearly to the peak ...
    assert values[WARMUP - 1] == values[WARMUP] == 1.0
    assert all(a > b for a, b in zip(decay, decay[1:]))  # ... then decays monotonically
    assert math.isclose(values[WARMUP + (TOTAL - WARMUP) // 2], (1 + FLOOR) / 2, rel_tol=1e-12)
    assert math.isclose(values[TOTAL], FLOOR) and values[-1] == values[TOTAL]


def test_no_warmup_and_degenerate_cases():
    assert warmup_cosine(0, 10, 0) == 1.0
    assert warmup_cosine(4, 5, 5) == 1.0  # all warmup: ends at the peak
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(0, 10, 11)


def test_lambda_lr_follows_it_and_resumes_from_its_state():
    def opt():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)

    o1 = opt()
    s1 = build_scheduler(o1, TOTAL, WARMUP, FLOOR)
    for step in range(40):
        assert math.isclose(o1.param_groups[0]["lr"], 0.5 * closed_form(step), rel_tol=1e-12)
        o1.step()
        s1.step()
    o2 = opt()
    s2 = build_scheduler(o2, TOTAL, WARMUP, FLOOR)
    s2.load_state_dict(s1.state_dict())
    o2.param_groups[0]["lr"] = o1.param_groups[0]["lr"]  # the optimizer's own state_dict carries lr
    o2.step()
    s2.step()
    assert math.isclose(o2.param_groups[0]["lr"], 0.5 * closed_form(41), rel_tol=1e-12)
