"""Every torch.optim.lr_scheduler class against its schedule, stepped the torch way, 300 steps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as lrs
from torch.optim.swa_utils import SWALR

from functional_nn.optim import schedules as s
from tests.helpers import assert_trees_close

STEPS = 300
LR = 0.1
TOL = 1e-12


def _tri(mode, **kw):
    return lambda o: lrs.CyclicLR(
        o, 0.01, 0.1, step_size_up=20, step_size_down=30, mode=mode, cycle_momentum=False, **kw
    )


def _ours_tri(mode, **kw):
    return s.cyclic(0.01, 0.1, step_size_up=20, step_size_down=30, mode=mode, **kw)


def _one_cycle(**kw):
    return lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, cycle_momentum=False, **kw)


# (id, torch scheduler factory on an SGD with lr=LR, our schedule)
ROWS = [
    ("LambdaLR", lambda o: lrs.LambdaLR(o, lambda e: 0.98**e), s.lambda_lr(LR, lambda t: 0.98**t)),
    (
        "LambdaLR-branch",
        lambda o: lrs.LambdaLR(o, lambda e: 1.0 if e < 50 else 0.5 / (1 + e)),
        s.lambda_lr(LR, lambda t: torch.where(t < 50, 1.0, 0.5 / (1 + t))),
    ),
    (
        "MultiplicativeLR",
        lambda o: lrs.MultiplicativeLR(o, lambda e: 1 - 1 / (e + 10)),
        s.multiplicative(LR, lambda e: 1 - 1 / (e + 10)),
    ),
    ("StepLR", lambda o: lrs.StepLR(o, 30, 0.5), s.step_decay(LR, 30, 0.5)),
    (
        "MultiStepLR",
        lambda o: lrs.MultiStepLR(o, [30, 80, 80, 200], 0.3),
        s.multistep_decay(LR, [30, 80, 80, 200], 0.3),
    ),
    ("ConstantLR", lambda o: lrs.ConstantLR(o, 0.25, 40), s.constant_factor(LR, 0.25, 40)),
    ("LinearLR", lambda o: lrs.LinearLR(o, 0.1, 0.9, 100), s.linear(0.1 * LR, 0.9 * LR, 100)),
    ("ExponentialLR", lambda o: lrs.ExponentialLR(o, 0.99), s.exponential_decay(LR, 0.99)),
    *[
        (
            f"PolynomialLR-{p}",
            lambda o, p=p: lrs.PolynomialLR(o, 200, p),
            s.polynomial_decay(LR, 200, p),
        )
        for p in (1.0, 2.5, 0.5)
    ],
    (
        "CosineAnnealingLR-past-T_max",
        lambda o: lrs.CosineAnnealingLR(o, 70, 1e-3),
        s.cosine_decay(LR, 70, 1e-3, periodic=True),
    ),
    (
        "CosineAnnealingLR-eta0",
        lambda o: lrs.CosineAnnealingLR(o, 45),
        s.cosine_decay(LR, 45, periodic=True),
    ),
    (
        "ChainedScheduler",
        lambda o: lrs.ChainedScheduler([lrs.ConstantLR(o, 0.1, 20), lrs.ExponentialLR(o, 0.99)]),
        s.chained([s.constant_factor(LR, 0.1, 20), s.exponential_decay(LR, 0.99)], LR),
    ),
    (
        "ChainedScheduler-3",
        lambda o: lrs.ChainedScheduler(
            [lrs.LinearLR(o, 0.2, 1.0, 50), lrs.StepLR(o, 60, 0.5), lrs.PolynomialLR(o, 280, 2.0)]
        ),
        s.chained(
            [
                s.linear(0.2 * LR, LR, 50),
                s.step_decay(LR, 60, 0.5),
                s.polynomial_decay(LR, 280, 2.0),
            ],
            LR,
        ),
    ),
    (
        "SequentialLR",
        lambda o: lrs.SequentialLR(
            o, [lrs.LinearLR(o, 0.1, total_iters=20), lrs.ExponentialLR(o, 0.98)], [20]
        ),
        s.join([s.linear(0.1 * LR, LR, 20), s.exponential_decay(LR, 0.98)], [20]),
    ),
    ("CyclicLR-triangular", _tri("triangular"), _ours_tri("triangular")),
    ("CyclicLR-triangular2", _tri("triangular2"), _ours_tri("triangular2")),
    ("CyclicLR-exp_range", _tri("exp_range", gamma=0.995), _ours_tri("exp_range", gamma=0.995)),
    (
        "CyclicLR-scale_fn",
        lambda o: lrs.CyclicLR(
            o,
            0.01,
            0.1,
            25,
            scale_fn=lambda x: 1 / (1 + x),
            scale_mode="iterations",
            cycle_momentum=False,
        ),
        s.cyclic(0.01, 0.1, 25, scale_fn=lambda x: 1 / (1 + x), scale_mode="iterations"),
    ),
    ("OneCycleLR-cos", _one_cycle(), s.one_cycle(0.1, STEPS)),
    (
        "OneCycleLR-linear",
        _one_cycle(anneal_strategy="linear", pct_start=0.25, div_factor=10.0),
        s.one_cycle(0.1, STEPS, anneal_strategy="linear", pct_start=0.25, div_factor=10.0),
    ),
    (
        "OneCycleLR-three_phase",
        _one_cycle(three_phase=True, final_div_factor=100.0),
        s.one_cycle(0.1, STEPS, three_phase=True, final_div_factor=100.0),
    ),
    (
        "CosineAnnealingWarmRestarts",
        lambda o: lrs.CosineAnnealingWarmRestarts(o, 10),
        s.cosine_warm_restarts(LR, 10),
    ),
    (
        "CosineAnnealingWarmRestarts-T_mult2",
        lambda o: lrs.CosineAnnealingWarmRestarts(o, 7, 2, 1e-3),
        s.cosine_warm_restarts(LR, 7, 2, 1e-3),
    ),
    (
        "CosineAnnealingWarmRestarts-T_mult3",
        lambda o: lrs.CosineAnnealingWarmRestarts(o, 5, 3),
        s.cosine_warm_restarts(LR, 5, 3),
    ),
    ("SWALR-cos", lambda o: SWALR(o, 0.02, 30), s.swa_lr(LR, 0.02, 30)),
    ("SWALR-linear", lambda o: SWALR(o, 0.02, 45, "linear"), s.swa_lr(LR, 0.02, 45, "linear")),
    ("SWALR-0", lambda o: SWALR(o, 0.02, 0), s.swa_lr(LR, 0.02, 0)),
]


def torch_rates(make):
    """The lr of each of STEPS + 1 updates of an SGD, scheduler.step() after each."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no grads here
        scheduler = make(opt)
        rates = []
        for _ in range(STEPS + 1):
            rates.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            if len(rates) < STEPS + 1 or not isinstance(scheduler, lrs.OneCycleLR):
                scheduler.step()
    return np.array(rates)


@pytest.mark.parametrize("name, make, schedule", ROWS, ids=[r[0] for r in ROWS])
def test_schedule_equals_torch(name, make, schedule):
    expected = torch_rates(make)
    ours = torch.stack([schedule(torch.tensor(t)) for t in range(STEPS + 1)])
    assert ours.dtype == torch.float64
    err = assert_trees_close(ours, expected, TOL, name)
    print(f"{name}: {err:.2e}")
    assert np.ptp(expected) > 0 or name == "SWALR-0"  # the row's schedule moves


def test_periodic_cosine_rises_after_t_max_and_default_holds():
    rising, held = s.cosine_decay(1.0, 10, periodic=True), s.cosine_decay(1.0, 10)
    assert float(rising(20)) == pytest.approx(1.0) and float(rising(15)) == pytest.approx(0.5)
    assert float(held(20)) == 0.0


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: s.cyclic(0.1, 1.0, mode="sine"), ValueError),
        (lambda: s.cyclic(0.1, 1.0, step_size_up=0), ValueError),
        (lambda: s.one_cycle(0.1, 100, anneal_strategy="exp"), ValueError),
        (lambda: s.one_cycle(0.1, 0), ValueError),
        (lambda: s.cosine_warm_restarts(0.1, 0), ValueError),
        (lambda: s.cosine_warm_restarts(0.1, 10, 1.5), TypeError),
        (lambda: s.polynomial_decay(0.1, 10, -1.0), ValueError),
        (lambda: s.multistep_decay(0.1, [10, -1]), ValueError),
        (lambda: s.lambda_lr(0.1, 0.5), TypeError),
        (lambda: s.chained([], 0.1), ValueError),
        (lambda: s.swa_lr(0.1, 0.01, anneal_strategy="exp"), ValueError),
        (lambda: s.constant_factor(0.1, factor=2.0), ValueError),
    ],
)
def test_bad_arguments(make, error):
    with pytest.raises(error):
        make()


def test_schedules_trace_under_vmap():
    counts = torch.arange(40)
    for schedule in (
        s.one_cycle(0.1, 40, three_phase=True),
        s.cosine_warm_restarts(0.1, 3, 2),
        s.cyclic(0.1, 1, 5),
    ):
        batched = torch.vmap(schedule)(counts)
        assert torch.allclose(batched, torch.stack([schedule(c) for c in counts]), rtol=0, atol=0)
    assert math.isclose(float(s.swa_lr(1.0, 0.0, 10)(5)), 0.5)
