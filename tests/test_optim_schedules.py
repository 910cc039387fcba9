"""Schedules three ways: functional_nn, the oracle's closed forms, torch.optim.lr_scheduler."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as lrs
from torch.func import vmap

import oracle.optim
from functional_nn.optim import schedules
from tests.helpers import assert_trees_close

STEPS = 400


def _warmup_cosine(opt):
    warmup = lrs.LinearLR(opt, start_factor=0.01, total_iters=30)
    return lrs.SequentialLR(
        opt, [warmup, lrs.CosineAnnealingLR(opt, T_max=270, eta_min=1e-4)], [30]
    )


def _join(opt):
    parts = [
        lrs.ConstantLR(opt, factor=0.2, total_iters=50),
        lrs.ExponentialLR(opt, 0.98),
        lrs.StepLR(opt, 20, 0.5),
    ]
    return lrs.SequentialLR(opt, parts, [50, 150])


# (name, kwargs, base lr of the torch optimizer, torch scheduler factory, steps compared)
CASES = [
    ("constant", dict(value=0.05), 0.05, lambda o: lrs.ConstantLR(o, factor=1.0), STEPS),
    (
        "step_decay",
        dict(init_value=0.05, step_size=40, gamma=0.5),
        0.05,
        lambda o: lrs.StepLR(o, 40, 0.5),
        STEPS,
    ),
    (
        "exponential_decay",
        dict(init_value=0.05, gamma=0.99),
        0.05,
        lambda o: lrs.ExponentialLR(o, 0.99),
        STEPS,
    ),
    (
        "cosine_decay",
        dict(init_value=0.05, decay_steps=300, end_value=1e-3),
        0.05,
        lambda o: lrs.CosineAnnealingLR(o, 300, 1e-3),
        301,
    ),
    (
        "linear",
        dict(init_value=0.005, end_value=0.05, transition_steps=50),
        0.05,
        lambda o: lrs.LinearLR(o, 0.1, 1.0, 50),
        STEPS,
    ),
    (
        "linear",
        dict(init_value=0.05, end_value=0.01, transition_steps=100),
        0.05,
        lambda o: lrs.LinearLR(o, 1.0, 0.2, 100),
        STEPS,
    ),
    (
        "warmup_cosine_decay",
        dict(init_value=1e-4, peak_value=1e-2, warmup_steps=30, decay_steps=300, end_value=1e-4),
        1e-2,
        _warmup_cosine,
        301,
    ),
    ("join", "three", 0.05, _join, STEPS),
]


def build(module, name, kwargs):
    if kwargs == "three":
        parts = [
            module.constant(0.01),
            module.exponential_decay(0.05, 0.98),
            module.step_decay(0.05, 20, 0.5),
        ]
        return module.join(parts, [50, 150])
    return getattr(module, name)(**kwargs)


def torch_rates(make, base_lr, steps):
    """The lr torch.optim uses at each of `steps` updates, with scheduler.step() after each."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no grads here
        scheduler = make(opt)
        rates = []
        for _ in range(steps):
            rates.append(opt.param_groups[0]["lr"])
            scheduler.step()
    return np.array(rates)


@pytest.mark.parametrize("name, kwargs, base_lr, make, steps", CASES, ids=[c[0] for c in CASES])
def test_schedule_equals_torch_scheduler_and_oracle(name, kwargs, base_lr, make, steps, device):
    schedule = build(schedules, name, kwargs)
    counts = torch.arange(steps, device=device)
    ours = vmap(schedule)(counts)  # the counts an optimizer's state holds, batched
    assert ours.dtype == torch.float64 and ours.device == counts.device
    reference = np.array([build(oracle.optim, name, kwargs)(t) for t in range(steps)])
    # torch's recursive updates and our closed forms differ by rounding only.
    assert_trees_close(
        ours, torch_rates(make, base_lr, steps), 1e-14, "vs torch.optim.lr_scheduler"
    )
    assert_trees_close(ours, reference, 1e-15, "vs oracle")
    assert float(schedule(7)) == float(ours[7])  # a plain int count too
    assert np.ptp(reference) > 0 or name == "constant"


def test_cosine_decay_holds_its_end_value_after_decay_steps():
    schedule = schedules.cosine_decay(0.05, decay_steps=100, end_value=1e-3)
    assert [float(schedule(t)) for t in (100, 101, 250)] == [1e-3, 1e-3, 1e-3]


def test_join_restarts_the_next_schedule_at_its_boundary():
    schedule = schedules.join(
        [schedules.constant(1.0), schedules.exponential_decay(0.5, 0.5)], [10]
    )
    assert [float(schedule(t)) for t in (9, 10, 11, 12)] == [1.0, 0.5, 0.25, 0.125]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: schedules.constant(-1.0),
            ValueError,
            r"Invalid value: -1.0 \(expected a finite number >= 0\)",
        ),
        (lambda: schedules.constant("0.1"), TypeError, "value must be a number, got str"),
        (
            lambda: schedules.step_decay(0.1, step_size=0),
            ValueError,
            r"Invalid step_size: 0 \(expected an int >= 1\)",
        ),
        (
            lambda: schedules.step_decay(0.1, step_size=2.5),
            TypeError,
            "step_size must be an int, got float",
        ),
        (lambda: schedules.exponential_decay(0.1, gamma=-0.5), ValueError, "Invalid gamma: -0.5"),
        (
            lambda: schedules.exponential_decay(float("nan"), 0.9),
            ValueError,
            "Invalid init_value: nan",
        ),
        (lambda: schedules.cosine_decay(0.1, decay_steps=0), ValueError, "Invalid decay_steps: 0"),
        (
            lambda: schedules.linear(0.0, 0.1, transition_steps=-3),
            ValueError,
            "Invalid transition_steps: -3",
        ),
        (
            lambda: schedules.warmup_cosine_decay(0.0, 0.1, 100, 100),
            ValueError,
            r"Invalid decay_steps: 100 \(expected an int >= 101\)",
        ),
        (
            lambda: schedules.warmup_cosine_decay(0.0, 0.1, -1, 100),
            ValueError,
            "Invalid warmup_steps: -1",
        ),
        (
            lambda: schedules.join([schedules.constant(0.1)], [5]),
            ValueError,
            "n >= 1 schedules and n - 1 boundaries, got 1 schedules and 1 boundaries",
        ),
        (
            lambda: schedules.join([schedules.constant(0.1), 0.2], [5]),
            TypeError,
            r"schedules\[1\] must be a schedule",
        ),
        (
            lambda: schedules.join([schedules.constant(0.1)] * 3, [5, 5]),
            ValueError,
            r"Invalid boundaries\[1\]: 5 \(expected an int >= 6\)",
        ),
    ],
)
def test_bad_schedule_arguments_are_rejected_when_built(make, error, match):
    with pytest.raises(error, match=match):
        make()
