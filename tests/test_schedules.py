"""Learning-rate schedules: the official inverse-square-root formula, cosine and constant, driven through LambdaLR."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from adapt.training.schedules import ScheduleConfig, build_scheduler, lr_factor
from sam3_model.errors import ConfigError

T = 1000


def test_inverse_sqrt_reference_values():
    c = ScheduleConfig()  # warmup 20, timescale 20, cooldown 20
    assert lr_factor(c, 0, T) == 0.0  # the first update uses lr 0, as the official code
    assert lr_factor(c, 10, T) == pytest.approx(0.5)
    assert lr_factor(c, 20, T) == pytest.approx(1.0)
    assert lr_factor(c, 21, T) == pytest.approx(math.sqrt(20 / 21))
    assert lr_factor(c, 80, T) == pytest.approx(0.5)
    assert lr_factor(c, 500, T) == pytest.approx(math.sqrt(20 / 500))


def test_inverse_sqrt_cooldown_ramps_to_zero():
    c = ScheduleConfig()
    assert lr_factor(c, T - 21, T) == pytest.approx(math.sqrt(20 / (T - 21)))  # before the cooldown
    for k in range(21):  # the last 20 steps: (T - s)/20 of the decayed value
        s = T - 20 + k
        assert lr_factor(c, s, T) == pytest.approx((20 - k) / 20 * math.sqrt(20 / s)), s
    assert lr_factor(c, T - 1, T) == pytest.approx(0.05 * math.sqrt(20 / (T - 1)))
    assert lr_factor(c, T, T) == 0.0
    assert lr_factor(c, T + 5, T) == 0.0  # never negative


def test_zero_warmup_and_cooldown():
    c = ScheduleConfig(warmup_steps=0, cooldown_steps=0, timescale=10)
    assert lr_factor(c, 0, T) == 1.0
    assert lr_factor(c, 30, T) == pytest.approx(1 / math.sqrt(40 / 10))
    assert lr_factor(c, T - 1, T) == pytest.approx(1 / math.sqrt((T - 1 + 10) / 10))
    assert lr_factor(ScheduleConfig(name="constant", warmup_steps=0), 0, T) == 1.0
    assert lr_factor(ScheduleConfig(name="cosine", warmup_steps=0), 0, T) == pytest.approx(1.0)


def test_cosine_endpoints():
    c = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(c, 0, 110) == 0.0
    assert lr_factor(c, 5, 110) == pytest.approx(0.5)
    assert lr_factor(c, 10, 110) == pytest.approx(1.0)
    assert lr_factor(c, 60, 110) == pytest.approx(0.55)  # halfway: (1 + 0.1)/2
    assert lr_factor(c, 110, 110) == pytest.approx(0.1)
    assert lr_factor(c, 109, 110) > 0.1
    values = [lr_factor(c, s, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone after warmup


def test_constant():
    c = ScheduleConfig(name="constant", warmup_steps=4)
    assert [lr_factor(c, s, 100) for s in (0, 1, 2, 4, 50, 99)] == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]


def test_lambda_lr_drives_adamw():
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [w1], "lr": 1e-3}, {"params": [w2], "lr": 2e-5}])
    total = 60
    config = ScheduleConfig()
    scheduler = build_scheduler(opt, config, total)
    seen = []
    for step in range(total):
        seen.append([g["lr"] for g in opt.param_groups])  # the lr this optimizer step uses
        (w1.sum() + w2.sum()).backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
    for step, (lr1, lr2) in enumerate(seen):
        factor = lr_factor(config, step, total)
        assert lr1 == pytest.approx(1e-3 * factor) and lr2 == pytest.approx(2e-5 * factor), step
    assert seen[0] == [0.0, 0.0] and seen[20] == pytest.approx([1e-3, 2e-5])
    assert seen[-1][0] == pytest.approx(1e-3 * 0.05 * math.sqrt(20 / 59))


@pytest.mark.parametrize("kwargs", [{"name": "linear"}, {"warmup_steps": -1}, {"cooldown_steps": -2},
                                    {"timescale": 0}, {"min_lr_ratio": 1.5}])
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        ScheduleConfig(**kwargs)


def test_total_steps_must_be_positive():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))])
    with pytest.raises(ConfigError, match="total_steps"):
        build_scheduler(opt, ScheduleConfig(), 0)
