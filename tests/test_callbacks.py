"""EarlyStopping, alone and inside fit."""

from __future__ import annotations

import math

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim
from tests.helpers import assert_trees_close


def feed(stopper, losses):
    """Call stopper on steps 1, 2, ... with these losses; the step it stopped at, or None."""
    for step, loss in enumerate(losses, start=1):
        if stopper(step, torch.tensor(loss, dtype=torch.float64), params=f"params@{step}"):
            return step
    return None


@pytest.mark.parametrize(
    "patience, min_delta, losses, stop, best_step",
    [
        (2, 0.0, [5.0, 4.0, 4.0, 4.5, 3.0], 4, 2),  # a tie is no improvement
        (3, 0.0, [5.0, 4.0, 4.5, 4.2, 3.9, 4.0], None, 5),  # improved in time
        (1, 0.0, [5.0, 6.0], 2, 1),
        (2, 0.5, [5.0, 4.6, 4.7, 4.0], 3, 1),  # 4.6 beats the best, 5.0, by less than 0.5
        (2, 0.0, [5.0, math.nan, math.nan], 3, 1),  # NaN never improves
    ],
)
def test_early_stopping_waits_patience_evaluations(patience, min_delta, losses, stop, best_step):
    stopper = fnn.EarlyStopping(patience=patience, min_delta=min_delta)
    assert feed(stopper, losses) == stop
    assert stopper.stopped_step == stop
    assert stopper.best_step == best_step and stopper.best_params == f"params@{best_step}"
    assert stopper.best_loss == losses[best_step - 1]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"patience": 0}, ValueError, r"Invalid patience: 0 \(expected an int >= 1\)"),
        ({"patience": 2.0}, TypeError, r"patience must be an int, got float: 2.0"),
        ({"min_delta": -0.1}, ValueError, r"Invalid min_delta: -0.1 \(expected a number >= 0\)"),
        ({"min_delta": math.nan}, ValueError, r"Invalid min_delta: nan"),
        ({"min_delta": "a"}, TypeError, r"min_delta must be a number, got str: 'a'"),
        (
            {"restore_best": 1},
            TypeError,
            r"restore_best must be a bool \(True or False\), got int: 1",
        ),
    ],
)
def test_early_stopping_rejects_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        fnn.EarlyStopping(**kwargs)


NET = fnn.mlp([3, 1], activation="identity")


def rising_problem():
    """A linear model pulled by gradient descent from w0 towards the training optimum moves
    monotonically away from w0 along every eigen-direction, so the loss on targets made by w0
    itself rises at every step: the best evaluation is the first."""
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(12, 3, generator=g, dtype=torch.float64),
        torch.randn(12, 1, generator=g, dtype=torch.float64),
    )
    params = NET.init(0, dtype=torch.float64)
    return params, x, y, (x, NET.apply(params, x))


def test_early_stopping_ends_a_fit_whose_validation_loss_only_rises():
    params, x, y, val = rising_problem()
    stopper = fnn.EarlyStopping(patience=2)
    r = fnn.fit(
        params,
        x,
        y,
        optim.sgd(1e-3),
        model=NET,
        steps=50,
        val=val,
        eval_every=1,
        callbacks=[stopper],
    )
    assert bool((r.val_losses[1:] > r.val_losses[:-1]).all())
    assert (r.steps, r.stop_reason, stopper.stopped_step, stopper.best_step) == (
        3,
        "callback",
        3,
        1,
    )
    assert_trees_close(
        stopper.best_params, fnn.fit(params, x, y, optim.sgd(1e-3), model=NET, steps=1).params, 0.0
    )
    # Without restore_best the result holds the last params, those of the stopping step.
    assert_trees_close(
        r.params, fnn.fit(params, x, y, optim.sgd(1e-3), model=NET, steps=3).params, 0.0
    )


def test_restore_best_returns_the_best_params_and_the_last_opt_state():
    params, x, y, val = rising_problem()
    opt = optim.sgd(1e-3, momentum=0.9)
    stopper = fnn.EarlyStopping(patience=2, restore_best=True)
    r = fnn.fit(params, x, y, opt, model=NET, steps=50, val=val, eval_every=1, callbacks=[stopper])
    assert (r.steps, r.stop_reason, stopper.best_step) == (3, "callback", 1)
    assert_trees_close(r.params, fnn.fit(params, x, y, opt, model=NET, steps=1).params, 0.0)
    assert_trees_close(r.opt_state, fnn.fit(params, x, y, opt, model=NET, steps=3).opt_state, 0.0)


def test_a_reused_early_stopping_starts_each_fit_afresh():
    params, x, y, val = rising_problem()
    stopper = fnn.EarlyStopping(patience=2)
    first = fnn.fit(
        params,
        x,
        y,
        optim.sgd(1e-3),
        model=NET,
        steps=50,
        val=val,
        eval_every=1,
        callbacks=[stopper],
    )
    first_best = stopper.best_loss
    assert first.stop_reason == "callback"
    # On the training data the loss falls at every step, but never to the first fit's best (the
    # loss near w0's own targets): a stopper that remembered it would stop after 2 evaluations.
    second = fnn.fit(
        params,
        x,
        y,
        optim.sgd(1e-3),
        model=NET,
        steps=6,
        val=(x, y),
        eval_every=1,
        callbacks=[stopper],
    )
    assert bool((second.val_losses[1:] < second.val_losses[:-1]).all())
    assert float(second.val_losses.min()) > first_best
    assert (second.steps, second.stop_reason, stopper.stopped_step, stopper.best_step) == (
        6,
        "done",
        None,
        6,
    )


def test_best_params_are_a_copy_that_outlives_the_loops_buffers():
    """best_params stays the params of the best evaluation even if the tensors passed to the
    callback are later written in place (as a loop that reuses its own buffers would)."""
    stopper = fnn.callbacks.EarlyStopping(patience=2)
    params = [{"weight": torch.ones(2, 2), "bias": torch.zeros(2)}]
    stopper(1, torch.tensor(1.0), params)
    params[0]["weight"].add_(5.0)
    assert torch.equal(stopper.best_params[0]["weight"], torch.ones(2, 2))
    assert stopper.best_params[0]["weight"] is not params[0]["weight"]
